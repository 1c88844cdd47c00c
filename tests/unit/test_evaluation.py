import pytest

from rlhf_ray.core import evaluation


def test_pairwise_by_subset_and_sections():
    subsets = ["alpacaeval-easy", "alpacaeval-easy", "mt-bench-hard", "donotanswer", "my-set"]
    res = evaluation.pairwise_by_subset(subsets, [1, 0, 2, 1, 1], [0, 1, 1, 1, 0])
    assert res["subsets"] == {"alpacaeval-easy": 0.5, "donotanswer": 0.5, "mt-bench-hard": 1.0, "my-set": 1.0}
    assert res["sections"] == {"chat": 0.5, "chat_hard": 1.0, "other": 1.0, "safety": 0.5}
    assert res["overall"] == pytest.approx(3.5 / 5)  # ties count half


def test_best_of_n_protocol_by_hand():
    rewards = [[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]]
    gold = [[1.0, 2.0, 1.5], [1.0, 1.8, 1.2]]
    res = evaluation.best_of_n_protocol(rewards, gold, [1, 2, 3])
    assert res[1] == {"rm_pick": 1.0, "random": 1.0, "oracle": 1.0}
    assert res[2]["rm_pick"] == pytest.approx((2.0 + 1.0) / 2) and res[2]["oracle"] == pytest.approx(1.9)
    assert res[3]["random"] == pytest.approx((4.5 / 3 + 4.0 / 3) / 2)
    with pytest.raises(ValueError):
        evaluation.best_of_n_protocol(rewards, gold, [4])


def test_auc_by_hand():
    assert evaluation.auc([0.9, 0.1, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
