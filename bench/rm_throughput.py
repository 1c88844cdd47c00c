"""Reward-model throughput on CPU: training pairs/s of rlhf_ray's loop vs TRL's RewardTrainer (same
MiniLM backbone, HH pairs, max length, batch, optimizer, threads), and inference scores/s with and
without length sorting. One process, baselines run in the same command; JSON to bench/results/.

    .venv/bin/python bench/rm_throughput.py [--steps 6] [--pairs-per-step 16] [--score-rows 256]
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

from rlhf_ray import data, models  # noqa: E402
from rlhf_ray.engines.scorers import RewardScorer  # noqa: E402
from rlhf_ray.core import objectives as rm  # noqa: E402
from rlhf_ray.train import loop  # noqa: E402
from rlhf_ray.train.reward import loss_fn  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh_harmless_test.jsonl.gz"


def plain(messages) -> str:
    # The text rlhf_ray's encoder gives MiniLM (no chat template), so TRL sees the same tokens.
    head = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages[:-1])
    return f"{head}\n\nAssistant: {messages[-1]['content']}"


def ours(rows, tok, args) -> dict:
    model = models.load_reward_model(models.DEFAULT_RM, "bt", tok)
    opt = loop.build_optimizer(model, 3e-5, 0.0)
    sched = loop.build_scheduler(opt, args.steps + 1, 0.0, "constant")
    encoded = [rm.encode_row(r, "bt", tok, None, args.max_len) for r in rows]
    steps = [encoded[i * args.pairs_per_step:(i + 1) * args.pairs_per_step] for i in range(args.steps + 1)]

    def mb(group):
        batch = rm.collate(group, "bt", tok.pad_token_id)
        return [{"batch": batch, "units": len(group), "tokens": 0, "padding": 0}]

    loop.train_step(model, opt, sched, mb(steps[0]), loss_fn("bt"), 1.0, "cpu")
    t0 = time.perf_counter()
    for group in steps[1:]:
        loop.train_step(model, opt, sched, mb(group), loss_fn("bt"), 1.0, "cpu")
    secs = time.perf_counter() - t0
    return {"seconds": secs, "pairs_per_s": args.steps * args.pairs_per_step / secs}


def trl(rows, tok, args) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    ds = datasets.Dataset.from_list([{"chosen": plain(r["prompt"] + r["chosen"]),
                                      "rejected": plain(r["prompt"] + r["rejected"])} for r in rows])
    model = AutoModelForSequenceClassification.from_pretrained(str(models.default_rm_dir()), num_labels=1)
    # TRL appends the EOS token to every text; MiniLM's WordPiece tokenizer has none, so lend it [SEP]
    # (one extra token a sequence on TRL's side).
    tok = copy.deepcopy(tok)
    tok.eos_token = tok.sep_token
    cfg = RewardConfig(output_dir=str(ROOT / "runs" / "bench_trl_rm"), max_steps=args.steps + 1,
                       per_device_train_batch_size=args.pairs_per_step, learning_rate=3e-5,
                       lr_scheduler_type="constant", max_length=args.max_len, use_cpu=True, report_to="none",
                       logging_steps=1000, save_strategy="no", adam_beta2=0.95, seed=0)
    RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()]).train()
    secs = sum(times[2 * i + 1] - times[2 * i] for i in range(1, args.steps + 1))
    return {"seconds": secs, "pairs_per_s": args.steps * args.pairs_per_step / secs}


def scoring(rows, args) -> dict:
    scorer = RewardScorer(str(models.default_rm_dir()), max_len=args.max_len, batch_size=16)
    prompts = [r["prompt"] for r in rows] + [r["prompt"] for r in rows]
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    pairs = list(zip(prompts, completions))
    random.Random(0).shuffle(pairs)  # mixed lengths in arrival order
    prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
    out = {}
    for name, sort in (("unsorted", False), ("length_sorted", True)):
        scorer.padding = scorer.real = 0
        t0 = time.perf_counter()
        scorer.score(prompts, completions, sort=sort)
        secs = time.perf_counter() - t0
        out[name] = {"scores_per_s": len(prompts) / secs, "padding_fraction": scorer.padding_fraction}
    out["speedup"] = out["length_sorted"]["scores_per_s"] / out["unsorted"]["scores_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--pairs-per-step", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--score-rows", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(common.RESULTS / "rm_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = list(data.read_records([HH], "pairwise", "hh", on_bad_rows="quarantine", quarantine=[]))
    tok = models.load_tokenizer(models.DEFAULT_RM)
    # TRL drops pairs longer than max_length where rlhf_ray truncates them: time both on pairs that fit
    # whole (with room for the token TRL appends), so each side trains on the same tokens.
    fits = [r for r in rows if all(len(ids) < args.max_len - 1 for ids in
                                   (rm.encode(r["prompt"], r[s], tok, None, 10 ** 6)[0] for s in ("chosen", "rejected")))]
    train_rows = fits[: (args.steps + 1) * args.pairs_per_step]
    res = {"device": "cpu", **common.machine(), "threads": args.threads, "max_len": args.max_len,
           "pairs_per_step": args.pairs_per_step, "steps": args.steps,
           "train": {"rlhf_ray": ours(train_rows, tok, args), "trl": trl(train_rows, tok, args)},
           "score": scoring(rows[-args.score_rows:], args)}
    res["train"]["ratio_pairs_per_s"] = res["train"]["rlhf_ray"]["pairs_per_s"] / res["train"]["trl"]["pairs_per_s"]
    print(f"training: rlhf_ray / TRL pairs/s = {res['train']['ratio_pairs_per_s']:.2f}x; scoring: "
          f"length sorting {res['score']['speedup']:.2f}x faster, padding "
          f"{res['score']['length_sorted']['padding_fraction']:.1%} vs {res['score']['unsorted']['padding_fraction']:.1%}")
    common.write(args.out, res)


if __name__ == "__main__":
    main()
