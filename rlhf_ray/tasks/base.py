"""What a generated task is (``Task``) and how its files are written (``write_task``)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class Task:
    """A generated task, as nanochat's tasks own their examples and their reward: what it draws, how a
    chosen and a rejected answer read, and the checker that grades an answer (the gold reward)."""
    problem: Callable      # (rng, task section) → (question, gold answer)
    solution: Callable     # (question, answer) → a chosen answer
    wrong: Callable        # (question, answer, rng) → a rejected answer
    distinct: Callable     # task section → how many different problems ``problem`` can draw
    checker: str           # module:callable, (prompt, completion, row) → 1.0 / 0.0
    check: Callable        # task section → [(key, what is wrong)] for the keys this task reads
