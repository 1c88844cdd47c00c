"""Reward-model scoring on mixed-length candidates: scores/s and padding fraction with length-sorted
batches vs arrival order, in one process (MiniLM RM, AlpacaEval best-of-16 candidates: 20 to 2,000+
characters). Calls hold ``rows_per_call`` rows, as the Ray Data actor receives them. Two arrival orders:
grouped by prompt (as generation writes them: a prompt's samples are neighbours and often of similar
length) and shuffled.

    .venv/bin/python bench/score_throughput.py [--rows 1024] [--rows-per-call 256] [--rounds 1]
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

from rlhf_ray.engines.scorers import RewardScorer  # noqa: E402

BON = ROOT.parent / "shared" / "data" / "alpacaeval_bon16_tulu2dpo13b_compact.jsonl.gz"


def candidates(rows: int) -> tuple[list, list]:
    prompts, completions = [], []
    with gzip.open(BON, "rt") as f:
        for line in f:
            rec = json.loads(line)
            for c in rec["candidates"]:
                prompts.append([{"role": "user", "content": rec["instruction"]}])
                completions.append([{"role": "assistant", "content": c}])
            if len(prompts) >= rows:
                return prompts[:rows], completions[:rows]
    return prompts, completions


def timed(scorer: RewardScorer, prompts, completions, per_call: int, sort: bool) -> tuple[float, float, int]:
    """Seconds, padding fraction, and tokens the model ran (real + padding)."""
    scorer.padding = scorer.real = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), per_call):
        scorer.score(prompts[i:i + per_call], completions[i:i + per_call], sort=sort)
    return time.perf_counter() - start, scorer.padding_fraction, scorer.padding + scorer.real


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--rows-per-call", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(common.RESULTS / "score_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prompts, completions = candidates(args.rows)
    scorer = RewardScorer("default-rm", max_len=args.max_len, batch_size=args.batch_size)
    timed(scorer, prompts[:32], completions[:32], 32, True)  # warm-up
    perm = random.Random(0).sample(range(len(prompts)), len(prompts))
    orders = {"prompt_grouped": list(range(len(prompts))), "shuffled": perm}
    res = {"device": "cpu", **common.machine(), "threads": args.threads, "rows": len(prompts),
           "rows_per_call": args.rows_per_call, "batch_size": args.batch_size, "max_len": args.max_len,
           "rounds": args.rounds}
    for order, idx in orders.items():
        p_, c_ = [prompts[i] for i in idx], [completions[i] for i in idx]
        secs, padding, ran = {"unsorted": 0.0, "length_sorted": 0.0}, {}, {}
        for _ in range(args.rounds):  # alternate, so machine noise hits both sides alike
            for name, sort in (("unsorted", False), ("length_sorted", True)):
                t, padding[name], ran[name] = timed(scorer, p_, c_, args.rows_per_call, sort)
                secs[name] += t
        r = {name: {"scores_per_s": args.rounds * len(prompts) / secs[name], "padding_fraction": padding[name],
                    "tokens_run": ran[name]} for name in secs}
        r["speedup"] = r["length_sorted"]["scores_per_s"] / r["unsorted"]["scores_per_s"]
        # What removing padding alone can give if time is linear in tokens run (attention adds a little).
        r["padding_bound"] = ran["unsorted"] / ran["length_sorted"]
        res[order] = r
        print(f"{order}: length sorting {r['speedup']:.2f}x scores/s (tokens run {r['padding_bound']:.2f}x fewer), "
              f"padding {padding['length_sorted']:.1%} vs {padding['unsorted']:.1%} unsorted")
    common.write(args.out, res)


if __name__ == "__main__":
    main()
