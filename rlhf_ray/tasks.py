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


def write_arithmetic(out_dir: str | Path, sft_rows: int, prompt_rows: int, seed: int) -> dict[str, str]:
    """SFT conversations and held-out prompts (with gold answers) as jsonl; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen, items = set(), []
    while len(items) < sft_rows + prompt_rows:
        q, a = problem(rng)
        if q not in seen:
            seen.add(q)
            items.append((q, a))
    paths = {"sft": str(out / "sft.jsonl"), "prompts": str(out / "prompts.jsonl")}
    with open(paths["sft"], "w") as f:
        for q, a in items[:sft_rows]:
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": solution(q, a)}]}) + "\n")
    with open(paths["prompts"], "w") as f:
        for q, a in items[sft_rows:]:
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}], "answer": str(a)}) + "\n")
    return paths
