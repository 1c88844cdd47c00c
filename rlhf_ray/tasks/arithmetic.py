"""The arithmetic task: two-number sums and differences (the prompts carry their ``answer``;
``rewards.final_number`` checks a completion against it). ``tasks`` writes its files.

SmolLM2-135M gets such sums wrong often enough that best-of-N and rejection sampling have headroom.
"""
from __future__ import annotations

import random

from rlhf_ray.tasks.base import Task


def problem(rng: random.Random, operands: tuple[int, int] = (10, 99)) -> tuple[str, int]:
    a, b = rng.randint(*operands), rng.randint(*operands)
    op = rng.choice("+-")
    return f"What is {a} {op} {b}?", a + b if op == "+" else a - b


def solution(question: str, answer: int) -> str:
    # Short on purpose: every generated token costs ~7 ms on 2 CPU cores, and the gold reward reads the last number.
    return f"{question.removeprefix('What is ').rstrip('?')} = {answer}."


def wrong_solution(question: str, answer: int, rng: random.Random) -> str:
    """A rejected answer: the right format with a wrong number, or no number at all."""
    if rng.random() < 2 / 3:
        return solution(question, answer + rng.choice([d for d in range(-10, 11) if d]))
    return rng.choice(["To solve this, add or subtract the two numbers.", "I am not sure about this one.",
                       "This is a simple arithmetic problem that you can solve step by step."])


def _check(task) -> list[tuple[str, str]]:
    lo, hi = task.operands
    return [] if 0 <= lo <= hi else [("operands", f"{list(task.operands)} must be [low, high] with 0 <= low <= high")]


TASK = Task(problem=lambda rng, task: problem(rng, task.operands), solution=solution, wrong=wrong_solution,
            distinct=lambda task: 2 * (task.operands[1] - task.operands[0] + 1) ** 2,
            checker="rlhf_ray.core.rewards:final_number", check=_check)
