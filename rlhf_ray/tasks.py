"""A task the project generates itself, with a gold reward a program checks: two-number arithmetic.

SmolLM2-135M gets such sums wrong often enough that best-of-N and rejection sampling have headroom.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def problem(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    return f"What is {a} {op} {b}?", a + b if op == "+" else a - b


def solution(question: str, answer: int) -> str:
    expr = question.removeprefix("What is ").rstrip("?")
    return f"{expr} = {answer}. The answer is {answer}."


def final_number(text: str) -> str | None:
    """The last number in a completion (GSM8K-style final-answer extraction), commas removed."""
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def gold_reward(completion: str, answer: str | int) -> float:
    """1.0 when the completion's final number equals the answer, else 0.0."""
    got = final_number(completion)
    try:
        return float(got is not None and float(got) == float(answer))
    except ValueError:
        return 0.0


def wrong_solution(question: str, answer: int, rng: random.Random) -> str:
    """A rejected answer: the right format with a wrong number, or no number at all."""
    if rng.random() < 2 / 3:
        return solution(question, answer + rng.choice([d for d in range(-10, 11) if d]))
    return rng.choice(["To solve this, add or subtract the two numbers.", "I am not sure about this one.",
                       "This is a simple arithmetic problem that you can solve step by step."])


def write_arithmetic(out_dir: str | Path, sft_rows: int, prompt_rows: int, seed: int,
                     eval_rows: int = 0) -> dict[str, str]:
    """jsonl files, each on its own problems: SFT conversations, preference pairs for the reward model
    (as many as SFT rows), prompts for rejection sampling and held-out eval prompts (with gold answers)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen, items = set(), []
    while len(items) < 2 * sft_rows + prompt_rows + eval_rows:
        q, a = problem(rng)
        if q not in seen:
            seen.add(q)
            items.append((q, a))
    parts = {"sft": items[:sft_rows], "pairs": items[sft_rows:2 * sft_rows],
             "prompts": items[2 * sft_rows:2 * sft_rows + prompt_rows], "eval": items[2 * sft_rows + prompt_rows:]}
    rows = {
        "sft": lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": solution(q, a)}]},
        "pairs": lambda q, a: {"prompt": [{"role": "user", "content": q}],
                               "chosen": [{"role": "assistant", "content": solution(q, a)}],
                               "rejected": [{"role": "assistant", "content": wrong_solution(q, a, rng)}]},
        "prompts": lambda q, a: {"prompt": [{"role": "user", "content": q}], "answer": str(a)},
    }
    rows["eval"] = rows["prompts"]
    paths = {}
    for name, part in parts.items():
        paths[name] = str(out / f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(rows[name](q, a)) + "\n" for q, a in part)
    return paths


def task_files(task, run_dir: str | Path) -> dict[str, str]:
    """The files of a configured task (``TaskConfig``), written under RUN_DIR/data."""
    if task.name != "arithmetic":
        raise ValueError(f"no generated task is configured (task.name={task.name!r})")
    return write_arithmetic(Path(run_dir) / "data", task.sft_rows, task.prompt_rows, task.seed, task.eval_rows)
