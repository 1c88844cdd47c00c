"""Tasks the project generates itself, each with a gold reward a program checks: the files every stage
reads when its data paths are empty (``task.name``), written into the run's ``data`` folder.

A task is one module here with a ``TASK`` entry (``base.Task``: its problem maker, answers and checker)
and one line in ``TASKS``; the config accepts its name and its checker from this table.

- ``arithmetic``: two-number sums (``rewards.final_number``). Checking an answer needs the sum, which
  a small reward model does not learn from a few hundred labelled answers (docs/tiny-run.md).
- ``categories``: pick the word of a category among distractors (``rewards.final_word``). SmolLM2-135M
  often picks wrong; whether a word belongs to a category is what a small text encoder judges well.
"""
from __future__ import annotations

from pathlib import Path

from rlhf_ray.tasks import arithmetic, categories
from rlhf_ray.tasks.base import Task, write_task

TASKS: dict[str, Task] = {"arithmetic": arithmetic.TASK, "categories": categories.TASK}


def task_files(task, out: str | Path) -> dict[str, str]:
    """The files of a configured task (``TaskConfig``), written into ``out`` (a run's ``data`` folder)."""
    if task.name not in TASKS:
        raise ValueError(f"no generated task is configured (task.name={task.name!r})")
    t = TASKS[task.name]
    sizes = {"sft": task.sft_rows, "rm": task.rm_rows or task.sft_rows, "prompts": task.prompt_rows,
             "eval": task.eval_rows}
    return write_task(out, sizes, lambda rng: t.problem(rng, task), t.solution, t.wrong, task.seed, t.distinct(task))
