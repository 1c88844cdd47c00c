"""Supervised fine-tuning on Ray Train: Ray Data in, the shared train step, HF checkpoints out."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
from itertools import islice
from pathlib import Path

import torch

from rlhf_ray import chat, losses, models
from rlhf_ray.config import ModelConfig, PipelineConfig, SFTConfig, build
from rlhf_ray.data import Record, write_quarantine
from rlhf_ray.schema import BadRecord
from rlhf_ray.train import loop, sft_data

STATE_FILE = "trainer_state.pt"


# ---------------------------------------------------------------- pure pieces


def sft_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss over trained tokens, and their count."""
    mask = batch["attention_mask"]
    config = getattr(model, "module", model).config  # DDP/FSDP wrappers hide the HF config
    if mask.dim() == 4 and getattr(config, "_attn_implementation", "sdpa") == "eager":
        # Eager attention adds the mask to the scores: it needs 0 / -inf, not booleans.
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    kwargs = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, **kwargs).logits
    return losses.sft_nll(logits, batch["labels"], num_trained=1), torch.tensor(sft_data.trained_tokens(batch))


def micro_batch(examples: list[dict], packing: bool, pad_id: int) -> dict:
    batch = sft_data.collate(examples, packing, pad_id)
    return {"batch": batch, "units": sft_data.trained_tokens(batch),
            "tokens": sum(len(e["input_ids"]) for e in examples), "padding": sft_data.padding_tokens(batch)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step arithmetic the driver fixes before training, so resumed runs count the same steps."""
    rows_per_worker: int
    accum: int
    steps_per_epoch: int
    total_steps: int


def plan(num_rows: int, cfg: SFTConfig) -> Plan:
    t, workers = cfg.train, cfg.scaling.num_workers
    per_step = t.micro_batch_size * workers
    if t.global_batch_size % per_step:
        raise ValueError(f"sft.train.global_batch_size={t.global_batch_size} must be a multiple of "
                         f"micro_batch_size × num_workers = {per_step}")
    rows_per_worker = num_rows // workers
    if rows_per_worker == 0:
        raise ValueError(f"{num_rows} training rows cannot feed {workers} workers")
    accum = t.global_batch_size // per_step
    steps_per_epoch = math.ceil(rows_per_worker / (t.micro_batch_size * accum))
    total = steps_per_epoch * t.epochs
    return Plan(rows_per_worker, accum, steps_per_epoch, min(total, t.max_steps) if t.max_steps else total)


# ---------------------------------------------------------------- data (Ray Data)


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str, template: str | None, trust_remote_code: bool):
    tok = models.load_tokenizer(name, trust_remote_code)
    chat.add_template_tokens(tok, template)
    return tok


def _encode(row: dict, model: dict, max_seq_len: int, mask: str, overlength: str) -> dict:
    tok = _tokenizer(models.resolve(model["name"]), model["template"], model["trust_remote_code"])
    where = {"file": row.get("_file"), "line": row.get("_line")}
    try:
        ex = sft_data.encode_sft_row(row, tok, max_seq_len, mask, model["template"], overlength)
        return {**ex, **where, "field": None, "reason": None}
    except (BadRecord, chat.TemplateError) as e:
        return {"input_ids": [], "labels": [], "truncated": False, **where,
                "field": getattr(e, "field", "messages"), "reason": getattr(e, "reason", str(e))}


def encode_dataset(rows, policy: ModelConfig, cfg: SFTConfig, on_bad_rows: str, quarantine_path: Path | None):
    """Rows → token ids and labels (materialised in the object store) plus counts for the manifest."""
    t = cfg.train
    encoded = rows.map(_encode, fn_kwargs={"model": dataclasses.asdict(policy), "max_seq_len": t.max_seq_len,
                                           "mask": t.mask, "overlength": t.overlength}).materialize()
    bad = encoded.filter(lambda r: r["reason"] is not None)
    n_bad = bad.count()
    if n_bad and on_bad_rows == "error":
        first = bad.sort(["file", "line"]).take(1)[0]
        raise BadRecord(first["file"], first["line"], first["field"], first["reason"])
    if n_bad and quarantine_path is not None:
        write_quarantine((Record(r["file"], r["line"], None, r["field"], r["reason"]) for r in bad.iter_rows()),
                         quarantine_path, append=True)
    good = encoded.filter(lambda r: r["reason"] is None).select_columns(["input_ids", "labels"]).materialize()
    counts = {"encoded": good.count(), "quarantined_after_tokenization": n_bad,
              "truncated": encoded.filter(lambda r: bool(r["truncated"])).count()}
    return good, counts


# ---------------------------------------------------------------- worker (Ray Train)


def _micro_batches(shard, epoch: int, t, pad_id: int):
    batches = shard.iter_batches(batch_size=t.micro_batch_size, batch_format="numpy", drop_last=False,
                                 local_shuffle_buffer_size=max(64, 4 * t.micro_batch_size),
                                 local_shuffle_seed=t.seed + epoch)
    for b in batches:
        examples = [{"input_ids": list(i), "labels": list(l)} for i, l in zip(b["input_ids"], b["labels"])]
        yield micro_batch(examples, t.packing, pad_id)


def _grouped(items, size: int):
    it = iter(items)
    while group := list(islice(it, size)):
        yield group


def train_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg: PipelineConfig = build(PipelineConfig, config["cfg"])
    p = Plan(**config["plan"])
    t, out_dir = cfg.sft.train, Path(config["out_dir"])
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    torch.manual_seed(t.seed)
    ctx = ray.train.get_context()
    rank, device = ctx.get_world_rank(), ray.train.torch.get_device()

    tokenizer = _tokenizer(models.resolve(cfg.policy.name), cfg.policy.template, cfg.policy.trust_remote_code)
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else _no_dir()) as ckpt_dir:
        source = ckpt_dir or models.resolve(cfg.policy.name)
        model = models.load_policy(source, cfg.policy.dtype, cfg.policy.trust_remote_code)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model = ray.train.torch.prepare_model(model, parallel_strategy=cfg.sft.scaling.strategy)
        optimizer = loop.build_optimizer(model, t.lr, t.weight_decay)
        scheduler = loop.build_scheduler(optimizer, p.total_steps, t.warmup_ratio, t.schedule)
        step = _load_state(ckpt_dir, model, optimizer, scheduler) if ckpt_dir else 0

    autocast = torch.bfloat16 if (t.bf16 and device.type == "cuda") or t.cpu_bf16 else None
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval") if "eval" in config["datasets"] else None
    pad_id = tokenizer.pad_token_id
    _write_progress(out_dir, rank, step)
    baseline = {}
    if eval_shard is not None and step == 0:
        # Held-out loss before any update: the reference the final eval is compared with.
        baseline["eval_loss_initial"] = loop.evaluate(
            model, _micro_batches(eval_shard, 0, t, pad_id), sft_loss, device, autocast)
    while step < p.total_steps:
        epoch = step // p.steps_per_epoch
        groups = _grouped(_micro_batches(train_shard, epoch, t, pad_id), p.accum)
        # Resuming mid-epoch: pass over the steps already taken (the epoch's order is seeded).
        for group in islice(groups, step - epoch * p.steps_per_epoch, None):
            res = loop.train_step(model, optimizer, scheduler, group, sft_loss, t.max_grad_norm, device, autocast)
            step += 1
            metrics = {**baseline, "step": step, "epoch": epoch, "loss": res.loss, "lr": res.lr, "grad_norm": res.grad_norm,
                       "trained_tokens": res.units, "trained_tokens_per_s": res.units / res.seconds,
                       "tokens_per_s": res.tokens / res.seconds,
                       "padding_fraction": res.padding / max(res.tokens + res.padding, 1)}
            last = step == p.total_steps
            if eval_shard is not None and ((t.eval_every and step % t.eval_every == 0) or last):
                metrics["eval_loss"] = loop.evaluate(
                    model, _micro_batches(eval_shard, 0, t, pad_id), sft_loss, device, autocast)
            baseline = {}
            save = last or (t.checkpoint_every and step % t.checkpoint_every == 0)
            _report(metrics, model, optimizer, scheduler, tokenizer, rank, out_dir, save)
            if last:
                break


class _no_dir:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _write_progress(out_dir: Path, rank: int, step: int) -> None:
    # Per-rank pid and step: lets an operator (or a fault test) find and stop a worker.
    d = out_dir / "workers"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "step": step}))


def _report(metrics, model, optimizer, scheduler, tokenizer, rank, out_dir: Path, save: bool) -> None:
    import ray.train

    if rank == 0:
        with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        print(f"[sft] step {metrics['step']} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
              f"tok/s {metrics['trained_tokens_per_s']:.0f}"
              + (f" eval {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""), flush=True)
    _write_progress(out_dir, rank, metrics["step"])
    if not save:
        ray.train.report(metrics)
        return
    from ray.train import Checkpoint
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    # Every rank takes part in gathering full state dicts (FSDP shards them); rank 0 writes.
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            base = model.module if hasattr(model, "module") else model
            base.save_pretrained(tmp, state_dict=model_sd, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": metrics["step"]},
                       Path(tmp) / STATE_FILE)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _load_state(ckpt_dir: str, model, optimizer, scheduler) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, state["optimizer"],
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


# ---------------------------------------------------------------- driver


def fit(cfg: PipelineConfig, train_ds, eval_ds, out_dir: Path):
    """Train on Ray Train; returns the final ``ray.train.Result``. Re-running resumes."""
    import ray.train
    from ray.train.torch import TorchTrainer

    s = cfg.sft.scaling
    p = plan(train_ds.count(), cfg.sft)
    datasets = {"train": train_ds, **({"eval": eval_ds} if eval_ds is not None else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "plan": dataclasses.asdict(p),
                           "out_dir": str(out_dir), "datasets": sorted(datasets)},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name="sft", storage_path=str((out_dir / "ray_train").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
    )
    return trainer.fit(), p

