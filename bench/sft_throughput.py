"""Trained tokens/s of rlhf_ray's SFT loop vs TRL's SFTTrainer, in one process, same everything.

Same model (embedded SmolLM2-135M-Instruct), data (Self-Instruct seed tasks), sequence length, batch,
optimizer, precision, threads, and assistant-only loss (TRL: prompt/completion rows, completion-only
loss; rlhf_ray: the chat masks). Both train on the same examples in the same order; the first step of
each is warm-up and not timed. Prints the ratio and the padding fraction of both; writes JSON to
bench/results/.

    .venv/bin/python bench/sft_throughput.py [--steps 6] [--batch 8] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

from rlhf_ray import data, models  # noqa: E402
from rlhf_ray.train import loop, sft_data  # noqa: E402
from rlhf_ray.train.sft import micro_batch, sft_loss  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"
H100_BF16_FLOPS = 989e12  # dense bf16 peak, for MFU on a GPU


def conversations(n: int) -> list[list[dict]]:
    rows = data.read_records([DATA], "sft", "alpaca_seed")
    return [r["messages"] for _, r in zip(range(n), rows)]


def ours(convs, tok, args, device) -> dict:
    examples = [sft_data.encode_sft_row({"messages": c}, tok, args.max_len) for c in convs]
    model = models.load_policy(models.DEFAULT_POLICY).to(device)
    opt = loop.build_optimizer(model, 1e-5, 0.0)
    sched = loop.build_scheduler(opt, args.steps + 1, 0.0, "constant")
    autocast = torch.bfloat16
    groups = [examples[i * args.batch:(i + 1) * args.batch] for i in range(args.steps + 1)]
    loop.train_step(model, opt, sched, [micro_batch(groups[0], True, tok.pad_token_id)], sft_loss, 1.0, device, autocast)
    trained = padding = real = 0
    _sync(device)
    t0 = time.perf_counter()
    for g in groups[1:]:
        res = loop.train_step(model, opt, sched, [micro_batch(g, True, tok.pad_token_id)], sft_loss, 1.0, device, autocast)
        trained, padding, real = trained + res.units, padding + res.padding, real + res.tokens
    _sync(device)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "trained_tokens": trained, "tokens": real,
            "trained_tokens_per_s": trained / secs, "tokens_per_s": real / secs,
            "padding_fraction": padding / (padding + real)}


def trl(convs, tok, args, device) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in convs[: (args.steps + 1) * args.batch]]
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            _sync(device)
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            _sync(device)
            times.append(time.perf_counter())

    cfg = SFTConfig(output_dir=str(ROOT / "runs" / "bench_trl"), max_steps=args.steps + 1,
                    per_device_train_batch_size=args.batch, learning_rate=1e-5, lr_scheduler_type="constant",
                    max_length=args.max_len, bf16=True, use_cpu=device == "cpu", report_to="none",
                    logging_steps=1000, save_strategy="no", completion_only_loss=True, max_grad_norm=1.0,
                    adam_beta2=0.95, dataloader_drop_last=False, seed=0)
    trainer = SFTTrainer(model=models.load_policy(models.DEFAULT_POLICY), args=cfg,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tok, callbacks=[Timer()])
    trained = padding = real = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if 1 <= i <= args.steps:
            trained += int((batch["labels"][:, 1:] != -100).sum())
            real += int(batch["attention_mask"].sum())
            padding += int((batch["attention_mask"] == 0).sum())
    trainer.train()
    secs = sum(times[2 * i + 1] - times[2 * i] for i in range(1, args.steps + 1))
    return {"seconds": secs, "trained_tokens": trained, "tokens": real,
            "trained_tokens_per_s": trained / secs, "tokens_per_s": real / secs,
            "padding_fraction": padding / (padding + real)}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(common.RESULTS / "sft_throughput.json"))
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = models.load_tokenizer(models.DEFAULT_POLICY)
    convs = conversations((args.steps + 1) * args.batch)
    result = {"device": args.device, **common.machine(), "threads": args.threads, "steps": args.steps,
              "batch": args.batch, "max_len": args.max_len, "precision": "bf16 autocast",
              "rlhf_ray": ours(convs, tok, args, args.device), "trl": trl(convs, tok, args, args.device)}
    result["ratio_trained_tokens_per_s"] = (result["rlhf_ray"]["trained_tokens_per_s"]
                                           / result["trl"]["trained_tokens_per_s"])
    if args.device == "cuda":
        n_params = sum(p.numel() for p in models.load_policy(models.DEFAULT_POLICY).parameters())
        result["gpu"] = torch.cuda.get_device_name()
        result["rlhf_ray"]["mfu_vs_h100_bf16"] = 6 * n_params * result["rlhf_ray"]["tokens_per_s"] / H100_BF16_FLOPS
    print(f"rlhf_ray / TRL trained tokens/s: {result['ratio_trained_tokens_per_s']:.2f}x "
          f"(padding {result['rlhf_ray']['padding_fraction']:.1%} vs {result['trl']['padding_fraction']:.1%})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    common.write(args.out, result)


if __name__ == "__main__":
    main()
