"""Rule-based rewards: the arithmetic checker, the GSM8K/MATH checker, and loading by module:callable."""
import math

import pytest

from rlhf_ray.core import rewards, selection

Q = [{"role": "user", "content": "What is 12 + 30?"}]


def test_final_number_checks_the_last_number():
    assert rewards.final_number(Q, "12 + 30 = 42. The answer is 42.", {"answer": "42"}) == 1.0
    assert rewards.final_number(Q, "The answer is 42, not 41.", {"answer": "42"}) == 0.0  # the last number counts
    assert rewards.final_number(Q, "I do not know.", {"answer": "42"}) == 0.0
    assert rewards.final_number(Q, "It is 1,042.", {"answer": "1042"}) == 1.0
    assert rewards.final_number(Q, "-5", {"answer": "-5"}) == 1.0
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        rewards.final_number(Q, "42", {})


def test_math_answer_compares_mathematically():
    assert rewards.math_answer(Q, "So the total is $\\boxed{\\frac{1}{2}}$.", {"answer": "\\frac{1}{2}"}) == 1.0
    assert rewards.math_answer(Q, "The answer is 0.5", {"answer": "\\frac{1}{2}"}) == 1.0
    assert rewards.math_answer(Q, "She pays 18 dollars in total. #### 18", {"answer": "18"}) == 1.0
    assert rewards.math_answer(Q, "The answer is $\\boxed{3}$", {"answer": "\\frac{1}{2}"}) == 0.0
    assert rewards.math_answer(Q, "no idea", {"answer": "7"}) == 0.0


def test_load_names_what_is_wrong():
    assert rewards.load("rlhf_ray.core.rewards:final_number") is rewards.final_number
    with pytest.raises(ValueError, match="expected module:callable"):
        rewards.load("rlhf_ray.core.rewards.final_number")
    with pytest.raises(ValueError, match="cannot import no_such_module"):
        rewards.load("no_such_module:f")
    with pytest.raises(ValueError, match="has no nope"):
        rewards.load("rlhf_ray.core.rewards:nope")
    assert rewards.source_file("rlhf_ray.core.rewards:final_number").endswith("rlhf_ray/core/rewards.py")


def test_correct_incorrect_pairs():
    nan = float("nan")
    labels = [[1, 0, 0, 1], [1, 1, nan, 1], [0, 0, 1, nan]]
    pairs = selection.correct_incorrect_pairs(labels, max_pairs=3, seed=0)
    first = [p for p in pairs if p[0] == 0]
    assert len(first) == 3 and len(set(first)) == 3  # distinct, of the 4 combinations
    assert all(labels[0][c] == 1 and labels[0][w] == 0 for _, c, w in first)
    assert not [p for p in pairs if p[0] == 1]  # no incorrect answer: no pair
    assert [p for p in pairs if p[0] == 2] == [(2, 2, 0), (2, 2, 1)]  # only two combinations
    assert pairs == selection.correct_incorrect_pairs(labels, max_pairs=3, seed=0)  # seeded


def test_final_word_checks_the_last_word_whatever_its_case():
    q = [{"role": "user", "content": "Which of these is a fruit: saw, plum, egypt? Answer with one word."}]
    assert rewards.final_word(q, "Plum.", {"answer": "plum"}) == 1.0
    assert rewards.final_word(q, "The fruit is plum", {"answer": "plum"}) == 1.0
    assert rewards.final_word(q, "plum, saw, egypt", {"answer": "plum"}) == 0.0  # listing every option
    assert rewards.final_word(q, "Plums.", {"answer": "plum"}) == 0.0
    assert rewards.final_word(q, "42.", {"answer": "plum"}) == 0.0
    assert rewards.final_word(q, "", {"answer": "plum"}) == 0.0
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        rewards.final_word(q, "plum", {})


def trl_style(prompts, completions, answer, **kwargs):  # TRL's reward-function signature
    return [None if a is None else float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]


def wrong_length(completions, **kwargs):
    return [1.0]


def test_trls_batched_reward_functions_plug_in_beside_per_sample_ones():
    from rlhf_ray.engines.scorers import FunctionScorer

    assert rewards.is_batched(trl_style) and not rewards.is_batched(rewards.final_number)
    prompt = [{"role": "user", "content": "1 + 1?"}]
    rows = [{"answer": "2", "prompt_id": "p0"}, {"answer": "3", "prompt_id": "p1"}, {"answer": None, "prompt_id": "p2"}]
    fn = rewards.load_batched(f"{__name__}:trl_style")
    got = fn([prompt] * 3, ["2", "2", "2"], rows)
    assert got[:2] == [1.0, 0.0] and math.isnan(got[2])  # None: not applicable, as TRL reads it
    per_sample = rewards.load_batched("rlhf_ray.core.rewards:final_number")
    assert per_sample([prompt] * 2, ["It is 2.", "It is 3."], rows[:2]) == [1.0, 1.0]
    import numpy as np

    scorer = FunctionScorer(f"{__name__}:trl_style")
    assert scorer.score([prompt] * 2, [[{"role": "assistant", "content": "2"}]] * 2,
                        {"answer": np.array(["2", "5"]), "prompt_id": np.array(["p0", "p1"])}) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"wrong_length returned 1 rewards for 2 completions"):
        rewards.load_batched(f"{__name__}:wrong_length")([prompt] * 2, ["a", "b"], rows[:2])
    with pytest.raises(ValueError, match=r"trl_style failed on a batch of 1: TypeError: .*missing .* .answer."):
        rewards.load_batched(f"{__name__}:trl_style")([prompt], ["a"], [{"prompt_id": "p0"}])
