"""MT-Bench judge prompt and rating parsing."""
import math

from rlhf_ray.engines import judge


def test_single_prompt_carries_question_and_answer_in_mt_bench_format():
    msgs = judge.single_messages("What is 2 + 2?", "4")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[Question]\nWhat is 2 + 2?\n\n[The Start of Assistant's Answer]\n4\n[The End of Assistant's Answer]" in msgs[1]["content"]
    assert '"[[rating]]"' in msgs[1]["content"]


def test_ratings():
    assert judge.parse_rating("Helpful and correct. Rating: [[8]]") == 8.0
    assert judge.parse_rating("Rating: [[7.5]]") == 7.5
    assert judge.parse_rating("I'd say [6]") == 6.0  # MT-Bench's fallback pattern
    assert math.isnan(judge.parse_rating("It is fine."))


def test_question_is_the_last_user_turn():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2 + 2?"}]
    assert judge.question_text(prompt) == "2 + 2?"
