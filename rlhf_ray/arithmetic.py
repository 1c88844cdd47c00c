"""A task the project generates itself, with a gold reward a program checks: two-number arithmetic
(the prompts carry their ``answer``; ``rewards.final_number`` checks a completion against it).

SmolLM2-135M gets such sums wrong often enough that best-of-N and rejection sampling have headroom.
"""
from __future__ import annotations

import json
import random
from pathlib import Path


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


def write_arithmetic(out_dir: str | Path, sft_rows: int, prompt_rows: int, seed: int, eval_rows: int = 0,
                     rm_rows: int | None = None, operands: tuple[int, int] = (10, 99)) -> dict[str, str]:
    """jsonl files, each on its own problems: SFT conversations; reward-model problems (``rm_rows``,
    default ``sft_rows``) as synthetic preference pairs and as prompts with gold answers (for labelled
    policy samples); prompts for rejection sampling and held-out eval prompts (with gold answers)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rm_rows = sft_rows if rm_rows is None else rm_rows
    sizes = {"sft": sft_rows, "rm": rm_rows, "prompts": prompt_rows, "eval": eval_rows}
    lo, hi = operands
    if not 0 <= lo <= hi or sum(sizes.values()) > 2 * (hi - lo + 1) ** 2:
        raise ValueError(f"task.operands={list(operands)}: need 0 <= low <= high and at least "
                         f"{sum(sizes.values())} distinct problems (there are {2 * (hi - lo + 1) ** 2})")
    seen, items = set(), []
    while len(items) < sum(sizes.values()):
        q, a = problem(rng, operands)
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
                               "rejected": [{"role": "assistant", "content": wrong_solution(q, a, rng)}]},
        "prompts": lambda q, a: {"prompt": [{"role": "user", "content": q}], "answer": str(a)},
    }
    rows["eval"] = rows["rm_prompts"] = rows["prompts"]
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
    return write_arithmetic(Path(run_dir) / "data", task.sft_rows, task.prompt_rows, task.seed, task.eval_rows,
                            task.rm_rows or task.sft_rows, tuple(task.operands))
