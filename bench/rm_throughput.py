"""Reward-model throughput on CPU: training pairs/s of rlhf_ray's loop, packed (reward.train.packing, the
default) and padded, vs TRL's RewardTrainer: same backbone (MiniLM, the default encoder, or SmolLM2-135M, a
decoder), the same HH pairs in the same order (TRL's sampler made sequential), max length, batch, optimizer,
threads, float32 on every side; then each trained model's held-out pair accuracy, with bootstrap intervals
on the differences. Inference scores/s with and without length sorting. One process, baselines run in the
same command; JSON to bench/results/.

    .venv/bin/python bench/rm_throughput.py [--backbones encoder decoder] [--steps 6] [--pairs-per-step 16]
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
from rlhf_ray.core import objectives as rm, stats  # noqa: E402
from rlhf_ray.train import loop  # noqa: E402
from rlhf_ray.train.reward import loss_fn  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh_harmless_test.jsonl.gz"
BACKBONES = {"encoder": models.DEFAULT_RM, "decoder": models.DEFAULT_POLICY}


def plain(messages) -> str:
    # The text rlhf_ray's encoder gives MiniLM (no chat template), so TRL sees the same tokens.
    head = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages[:-1])
    return f"{head}\n\nAssistant: {messages[-1]['content']}"


def correct(score_pairs) -> list[float]:
    return [float(c > r) for c, r in score_pairs]


def ours(backbone, rows, held_out, tok, args, packing: bool) -> dict:
    torch.manual_seed(0)
    model = models.load_reward_model(BACKBONES[backbone], "bt", tok)
    opt = loop.build_optimizer(model, 3e-5, 0.0)
    sched = loop.build_scheduler(opt, args.steps + 1, 0.0, "constant")
    encoded = [rm.encode_row(r, "bt", tok, None, args.max_len) for r in rows]
    steps = [encoded[i * args.pairs_per_step:(i + 1) * args.pairs_per_step] for i in range(args.steps + 1)]
    counts = [0, 0]

    def mb(group):
        batch = rm.collate(group, "bt", tok.pad_token_id, packing)
        real, padding = rm.token_counts(batch)
        counts[0], counts[1] = counts[0] + real, counts[1] + padding
        return [{"batch": batch, "units": len(group), "tokens": real, "padding": padding}]

    loop.train_step(model, opt, sched, mb(steps[0]), loss_fn("bt"), 1.0, "cpu")  # warm-up, not timed
    counts[:] = [0, 0]
    t0 = time.perf_counter()
    for group in steps[1:]:
        loop.train_step(model, opt, sched, mb(group), loss_fn("bt"), 1.0, "cpu")
    secs = time.perf_counter() - t0
    model.eval()
    pairs = []
    with torch.no_grad():
        held = [rm.encode_row(r, "bt", tok, None, args.max_len) for r in held_out]
        for i in range(0, len(held), 16):
            out = rm.scores(model, rm.collate(held[i:i + 16], "bt", tok.pad_token_id, packing), "bt")
            pairs += list(zip(out[0].tolist(), out[1].tolist()))
    return {"seconds": secs, "pairs_per_s": args.steps * args.pairs_per_step / secs,
            "padding_fraction": counts[1] / sum(counts), "held_out_correct": correct(pairs)}


def trl(backbone, rows, held_out, tok, args) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    class InOrder(RewardTrainer):  # the same pairs in each step as rlhf_ray's side
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    def text(messages):
        return tok.apply_chat_template(messages, tokenize=False) if backbone == "decoder" else plain(messages)

    ds = datasets.Dataset.from_list([{"chosen": text(r["prompt"] + r["chosen"]),
                                      "rejected": text(r["prompt"] + r["rejected"])} for r in rows])
    torch.manual_seed(0)
    # float32 as on rlhf_ray's side (from_pretrained would keep the SmolLM2 folder's bfloat16).
    model = AutoModelForSequenceClassification.from_pretrained(
        str(models.default_rm_dir() if backbone == "encoder" else models.default_policy_dir()), num_labels=1,
        dtype=torch.float32)
    tok = copy.deepcopy(tok)
    if backbone == "encoder":
        # TRL appends the EOS token to every text; MiniLM's WordPiece tokenizer has none, so lend it [SEP]
        # (one extra token a sequence on TRL's side).
        tok.eos_token = tok.sep_token
    model.config.pad_token_id = tok.pad_token_id
    cfg = RewardConfig(output_dir=str(ROOT / "runs" / "bench_trl_rm"), max_steps=args.steps + 1,
                       per_device_train_batch_size=args.pairs_per_step, learning_rate=3e-5, bf16=False,
                       lr_scheduler_type="constant", max_length=args.max_len, use_cpu=True, report_to="none",
                       logging_steps=1000, save_strategy="no", adam_beta2=0.95, seed=0)
    trainer = InOrder(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    secs = sum(times[2 * i + 1] - times[2 * i] for i in range(1, args.steps + 1))
    # TRL's collator pads a step's chosen and rejected sequences to the longest of them.
    lengths = [[len(ids) for ids in tok([r["chosen"], r["rejected"]])["input_ids"]] for r in ds]
    real = padded = 0
    for i in range(1, args.steps + 1):
        step = [n + 1 for pair in lengths[i * args.pairs_per_step:(i + 1) * args.pairs_per_step] for n in pair]
        real, padded = real + sum(step), padded + len(step) * max(step)
    trainer.model.eval()
    pairs = []
    with torch.no_grad():
        for r in held_out:
            enc = tok([text(r["prompt"] + r["chosen"]), text(r["prompt"] + r["rejected"])], padding=True,
                      truncation=True, max_length=args.max_len, return_tensors="pt")
            c, rej = trainer.model(**enc).logits[:, 0].tolist()
            pairs.append((c, rej))
    return {"seconds": secs, "pairs_per_s": args.steps * args.pairs_per_step / secs,
            "padding_fraction": 1 - real / padded, "held_out_correct": correct(pairs)}


def compare(backbone, rows, held_out, args) -> dict:
    tok = models.load_tokenizer(BACKBONES[backbone])
    # TRL drops pairs longer than max_length where rlhf_ray truncates them: time both on pairs that fit
    # whole (with room for the token TRL appends), so each side trains on the same tokens.
    fits = [r for r in rows if all(len(ids) < args.max_len - 1 for ids in
                                   (rm.encode(r["prompt"], r[s], tok, None, 10 ** 6)[0] for s in ("chosen", "rejected")))]
    train_rows = fits[: (args.steps + 1) * args.pairs_per_step]
    sides = {"packed": ours(backbone, train_rows, held_out, tok, args, packing=True),
             "padded": ours(backbone, train_rows, held_out, tok, args, packing=False),
             "trl": trl(backbone, train_rows, held_out, tok, args)}
    acc = {k: v.pop("held_out_correct") for k, v in sides.items()}
    for k, v in sides.items():
        v["held_out_accuracy"] = sum(acc[k]) / len(acc[k])
    out = {"model": BACKBONES[backbone], **sides,
           "packed_over_trl_pairs_per_s": sides["packed"]["pairs_per_s"] / sides["trl"]["pairs_per_s"],
           "padded_over_trl_pairs_per_s": sides["padded"]["pairs_per_s"] / sides["trl"]["pairs_per_s"],
           "held_out_pairs": len(held_out),
           "accuracy_packed_minus_padded": stats.paired_difference(acc["packed"], acc["padded"]),
           "accuracy_packed_minus_trl": stats.paired_difference(acc["packed"], acc["trl"])}
    print(f"{backbone}: packed {out['packed_over_trl_pairs_per_s']:.2f}x TRL's pairs/s (padded "
          f"{out['padded_over_trl_pairs_per_s']:.2f}x); padding {sides['packed']['padding_fraction']:.1%} packed, "
          f"{sides['padded']['padding_fraction']:.1%} padded, {sides['trl']['padding_fraction']:.1%} TRL; held-out "
          f"accuracy {sides['packed']['held_out_accuracy']:.3f} / {sides['padded']['held_out_accuracy']:.3f} / "
          f"{sides['trl']['held_out_accuracy']:.3f}", flush=True)
    return out


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
    p.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["encoder", "decoder"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--pairs-per-step", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--score-rows", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(common.RESULTS / "rm_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = list(data.read_records([HH], "pairwise", "hh", on_bad_rows="quarantine", quarantine=[]))
    held_out = rows[-args.held_out:]  # never trained on: training takes pairs from the front
    res = {"device": "cpu", **common.machine(), "threads": args.threads, "max_len": args.max_len,
           "pairs_per_step": args.pairs_per_step, "steps": args.steps, "precision": "float32",
           "train": {b: compare(b, rows[:-args.held_out], held_out, args) for b in args.backbones},
           "score": scoring(rows[-args.score_rows:], args)}
    print(f"scoring: length sorting {res['score']['speedup']:.2f}x faster, padding "
          f"{res['score']['length_sorted']['padding_fraction']:.1%} vs {res['score']['unsorted']['padding_fraction']:.1%}")
    common.write(args.out, res)


if __name__ == "__main__":
    main()
