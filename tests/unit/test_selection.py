import numpy as np
import pytest

from rlhf_ray.core import selection

# The seed's worked example (RLHF book ch. 9): 5 prompts × 4 completions.
R = [[.7, .3, .5, .2], [.4, .8, .6, .5], [.9, .3, .4, .7], [.2, .5, .8, .6], [.5, .4, .3, .6]]


def test_worked_example_top_per_prompt():
    picks = selection.top_per_prompt(R)
    assert [c + 1 for _, c in picks] == [1, 2, 1, 3, 4]


def test_worked_example_top_k_overall():
    picks = selection.top_k_overall(R, 5)
    assert picks == [(2, 0), (1, 1), (3, 2), (0, 0), (2, 3)]  # .9 .8 .8 .7 .7, ties by lower index
    assert [p for p, _ in picks].count(2) == 2 and 4 not in [p for p, _ in picks]


def test_top_k_with_all_cells_keeps_everything():
    rng = np.random.default_rng(0)
    r = rng.random((6, 5))
    assert sorted(selection.top_k_overall(r, 30)) == [(i, j) for i in range(6) for j in range(5)]


def test_top_per_prompt_one_per_non_empty_prompt_and_nan_never_picked():
    r = np.array([[np.nan, np.nan], [0.1, np.nan], [np.nan, 0.3]])
    assert selection.top_per_prompt(r) == [(1, 0), (2, 1)]
    assert (0, 0) not in selection.top_k_overall(r, 6)


def test_random_baselines_match_shape_and_are_reproducible():
    a = selection.random_per_prompt(R, seed=3)
    assert a == selection.random_per_prompt(R, seed=3) and [p for p, _ in a] == [0, 1, 2, 3, 4]
    b = selection.random_k_overall(R, 5, seed=3)
    assert b == selection.random_k_overall(R, 5, seed=3) and len(set(b)) == 5
    assert any(selection.random_k_overall(R, 5, seed=s) != b for s in range(4, 10))


def test_best_worst_pairs_and_best_of_n():
    assert selection.best_worst_pairs(R)[0] == (0, 0, 3)
    assert selection.best_worst_pairs([[0.5, 0.5]]) == []
    assert selection.best_of_n([0.1, 0.9, 0.9]) == 1
    with pytest.raises(ValueError):
        selection.best_of_n([])


def test_dedup_mask_keeps_first_copy():
    mask = selection.dedup_mask([["a", "b", "a "], ["x"]])
    assert mask.tolist() == [[True, True, False], [True, False, False]]


def test_reward_matrix_from_rows_in_any_order():
    ids, r = selection.reward_matrix(["b", "a", "b", "a"], [1, 0, 0, 1], [0.4, 0.1, 0.3, 0.2])
    assert ids == ["a", "b"]
    np.testing.assert_array_equal(r, [[0.1, 0.2], [0.3, 0.4]])
    _, r = selection.reward_matrix(["a", "b"], [0, 1], [1.0, 2.0], n=3)
    assert np.isnan(r[0, 1:]).all() and np.isnan(r[1, [0, 2]]).all() and r[1, 1] == 2.0
    with pytest.raises(ValueError, match="appears twice"):
        selection.reward_matrix(["a", "a"], [0, 0], [1.0, 2.0])


def test_ranked_puts_best_of_ns_pick_first_keeps_ties_in_order_and_nan_last():
    from rlhf_ray.core import selection

    rewards = [0.5, float("nan"), 2.0, 0.5, 2.0, -1.0]
    order = selection.ranked(rewards)
    assert order == [2, 4, 0, 3, 5, 1] and order[0] == selection.best_of_n(rewards)
    with pytest.raises(ValueError):
        selection.ranked([float("nan")])
