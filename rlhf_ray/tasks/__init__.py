"""Tasks the project generates itself, each with a gold reward a program checks: the files every stage
reads when its data paths are empty (``task.name``), written under RUN_DIR/data.

- ``arithmetic``: two-number sums (``rewards.final_number``). Checking an answer needs the sum, which
  a small reward model does not learn from a few hundred labelled answers (docs/tiny-run.md).
- ``categories``: pick the word of a category among distractors (``rewards.final_word``). SmolLM2-135M
  often picks wrong; whether a word belongs to a category is what a small text encoder judges well.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from rlhf_ray.tasks import arithmetic, categories

# A problem is (question, gold answer); a task draws problems, writes a chosen answer and a rejected one.
Problem = tuple[str, "int | str"]


def write_task(out_dir: str | Path, sizes: dict[str, int], draw: Callable[[random.Random], Problem],
               solution: Callable[[str, object], str], wrong: Callable[[str, object, random.Random], str],
               seed: int, distinct: int) -> dict[str, str]:
    """jsonl files, each on its own problems (``sizes``: sft, rm, prompts, eval): SFT conversations;
    reward-model problems as synthetic preference pairs (``pairs``) and as prompts with gold answers
    (``rm_prompts``, for labelled policy samples); prompts for rejection sampling and held-out eval prompts
    (with gold answers). ``distinct``: how many different problems ``draw`` can make."""
    if sum(sizes.values()) > distinct:
        raise ValueError(f"task: task.sft_rows + rm_rows + prompt_rows + eval_rows = {sum(sizes.values())} distinct "
                         f"problems, and this task can make {distinct} (arithmetic: widen task.operands)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen, items = set(), []
    while len(items) < sum(sizes.values()):
        q, a = draw(rng)
        if q not in seen:
            seen.add(q)
            items.append((q, a))
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name], start = items[start:start + size], start + size
    parts["pairs"] = parts.pop("rm")
    parts["rm_prompts"] = parts["pairs"]
    rows = {
        "sft": lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": solution(q, a)}]},
        "pairs": lambda q, a: {"prompt": [{"role": "user", "content": q}],
                               "chosen": [{"role": "assistant", "content": solution(q, a)}],
                               "rejected": [{"role": "assistant", "content": wrong(q, a, rng)}]},
        "prompts": lambda q, a: {"prompt": [{"role": "user", "content": q}], "answer": str(a)},
    }
    rows["eval"] = rows["rm_prompts"] = rows["prompts"]
    paths = {}
    for name, part in parts.items():
        paths[name] = str(out / f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(rows[name](q, a)) + "\n" for q, a in part)
    return paths


def task_files(task, out: str | Path) -> dict[str, str]:
    """The files of a configured task (``TaskConfig``), written into ``out`` (a run's ``data`` folder)."""
    sizes = {"sft": task.sft_rows, "rm": task.rm_rows or task.sft_rows, "prompts": task.prompt_rows,
             "eval": task.eval_rows}
    if task.name == "arithmetic":
        lo, hi = task.operands
        return write_task(out, sizes, lambda rng: arithmetic.problem(rng, (lo, hi)), arithmetic.solution,
                          arithmetic.wrong_solution, task.seed, distinct=2 * (hi - lo + 1) ** 2)
    if task.name == "categories":
        return write_task(out, sizes, lambda rng: categories.problem(rng, task.options), categories.solution,
                          categories.wrong_solution, task.seed, distinct=categories.distinct(task.options))
    raise ValueError(f"no generated task is configured (task.name={task.name!r})")
