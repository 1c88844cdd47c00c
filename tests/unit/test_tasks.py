"""Generated tasks: each split on its own problems, answers the task's checker accepts, rejected answers it refuses."""
import json

import pytest

from rlhf_ray import config, tasks
from rlhf_ray.core import rewards
from rlhf_ray.tasks import categories


def read(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("name, checker", [("arithmetic", rewards.final_number), ("categories", rewards.final_word)])
def test_a_tasks_files_hold_disjoint_problems_that_its_checker_grades(tmp_path, name, checker):
    task = config.TaskConfig(name=name, sft_rows=20, rm_rows=15, prompt_rows=10, eval_rows=12, seed=3)
    paths = tasks.task_files(task, tmp_path)
    assert {k: len(read(p)) for k, p in paths.items()} == {"sft": 20, "pairs": 15, "rm_prompts": 15, "prompts": 10, "eval": 12}
    questions = {k: {r["messages"][0]["content"] if k == "sft" else r["prompt"][0]["content"] for r in read(p)}
                 for k, p in paths.items()}
    assert questions["pairs"] == questions["rm_prompts"]
    parts = [questions[k] for k in ("sft", "pairs", "prompts", "eval")]
    assert len(set().union(*parts)) == sum(map(len, parts))  # no problem in two splits
    answers = {r["prompt"][0]["content"]: r["answer"] for r in read(paths["rm_prompts"])}
    for r in read(paths["pairs"]):
        row = {"answer": answers[r["prompt"][0]["content"]]}
        assert checker(r["prompt"], r["chosen"][0]["content"], row) == 1.0
        assert checker(r["prompt"], r["rejected"][0]["content"], row) == 0.0
    assert tasks.task_files(task, tmp_path) == paths and read(paths["eval"]) == read(tasks.task_files(task, tmp_path)["eval"])


def test_a_categories_question_offers_one_word_of_its_category():
    import random

    rng = random.Random(0)
    for _ in range(200):
        q, answer = categories.problem(rng, options=5)
        category = next(c for c in categories.WORDS if f" {c}: " in q)
        offered = q.split(": ", 1)[1].removesuffix("? Answer with one word.").split(", ")
        assert len(offered) == 5 and answer in offered
        assert [w for w in offered if w in categories.WORDS[category]] == [answer]


def test_a_task_too_small_for_its_rows_says_so(tmp_path):
    task = config.TaskConfig(name="arithmetic", sft_rows=10, prompt_rows=0, eval_rows=0, operands=(1, 2))
    with pytest.raises(ValueError, match=r"rm_rows \+ prompt_rows \+ eval_rows = 20 distinct problems, and this task can make 8"):
        tasks.task_files(task, tmp_path)
