"""Ray Train shell shared by SFT and reward models: plan, worker loop, checkpoints, resume, metrics.

A recipe (``sft.SFTRecipe``, ``reward.RewardRecipe``) says how to load the model, cut micro-batches
and compute the loss; everything else (step arithmetic, the global-batch step, evaluation, HF
checkpoints with optimizer state, progress files) lives here once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import logging
import os
import signal
import sys
import tempfile
import threading
from itertools import islice
from pathlib import Path
from typing import Iterator, Protocol

import ray.train
import torch

from rlhf_ray import manifest, models, progress, storage, tracking
from rlhf_ray.run_layout import ADAPTER, METRICS, MODEL
from rlhf_ray.config import ScalingConfig, TrainConfig
from rlhf_ray.train import loop

STATE_FILE = "trainer_state.pt"


class Recipe(Protocol):
    """What a training stage tells the runner (``sft.SFTRecipe``, ``reward.RewardRecipe``): an object built
    from the config sections it needs, which Ray Train pickles to every worker."""
    name: str              # the stage, in messages and run names
    units: str             # what the loss averages over, as metrics name it (trained_tokens, units)
    train: TrainConfig
    scaling: ScalingConfig

    def tokenizer(self): ...

    def load_model(self, tokenizer, source: str | None): ...  # source: a checkpoint folder

    def micro_batches(self, shard, epoch: int, tokenizer) -> Iterator[dict]: ...

    def loss_fn(self, model, batch: dict): ...     # (loss summed over units, units), for ``loop.train_step``

    def evaluate(self, model, micro_batches, device, autocast) -> dict: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step arithmetic the driver fixes before training, so resumed runs count the same steps."""
    rows_per_worker: int
    accum: int
    steps_per_epoch: int
    total_steps: int


def plan(num_rows: int, t: TrainConfig, s: ScalingConfig, name: str) -> Plan:
    workers = s.num_workers
    per_step = t.micro_batch_size * workers
    if t.global_batch_size % per_step:
        raise ValueError(f"{name}.train.global_batch_size={t.global_batch_size} must be a multiple of "
                         f"micro_batch_size × num_workers = {per_step}")
    rows_per_worker = num_rows // workers
    if rows_per_worker == 0:
        raise ValueError(f"{num_rows} training rows cannot feed {workers} workers")
    accum = t.global_batch_size // per_step
    steps_per_epoch = math.ceil(rows_per_worker / (t.micro_batch_size * accum))
    total = steps_per_epoch * t.epochs
    return Plan(rows_per_worker, accum, steps_per_epoch, min(total, t.max_steps) if t.max_steps else total)


def iter_shard(shard, epoch: int, t):
    """One epoch of a worker's shard in micro-batches of rows, shuffled locally with a per-epoch seed."""
    return shard.iter_batches(batch_size=t.micro_batch_size, batch_format="numpy", drop_last=False,
                              local_shuffle_buffer_size=max(64, 4 * t.micro_batch_size),
                              local_shuffle_seed=t.seed + epoch)


def _grouped(items, size: int):
    it = iter(items)
    while group := list(islice(it, size)):
        yield group


def train_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train.torch

    # Not every report's full metrics again (our step line says it): Ray Train v2 names that logger
    # after its file path ("Reporting training result ..."), not under "ray.train".
    for name in ["ray.train", *(n for n in list(logging.root.manager.loggerDict) if "/ray/train/" in n)]:
        logging.getLogger(name).setLevel(logging.WARNING)
    rec: Recipe = config["recipe"]
    p, out_dir = Plan(**config["plan"]), config["out_dir"]  # out_dir: a path or storage URI
    t = rec.train
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    torch.manual_seed(t.seed)
    rank, device = ray.train.get_context().get_world_rank(), ray.train.torch.get_device()

    tokenizer = rec.tokenizer()
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as ckpt_dir:
        model = rec.load_model(tokenizer, ckpt_dir)
        loop.freeze_lower_layers(model, t.trainable_layers)
        if t.gradient_checkpointing:
            loop.checkpoint_activations(model)
        if rec.scaling.strategy == "fsdp" and rec.scaling.num_workers > 1:
            # Ray's prepare_model wraps FSDP1 as one unit and only on GPU; FSDP2 per block also runs on CPU.
            model = loop.shard_model(model, device)
        else:
            model = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
        optimizer = loop.build_optimizer(model, t.lr, t.weight_decay)
        scheduler = loop.build_scheduler(optimizer, p.total_steps, t.warmup_ratio, t.schedule)
        step = _load_state(ckpt_dir, model, optimizer, scheduler) if ckpt_dir else 0

    autocast = torch.bfloat16 if (t.bf16 and device.type == "cuda") or t.cpu_bf16 else None
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval") if "eval" in config["datasets"] else None

    def evaluate():
        return rec.evaluate(model, rec.micro_batches(eval_shard, 0, tokenizer), device, autocast)

    _write_progress(out_dir, rank, step)
    log = MetricsLog(f"{out_dir}/{METRICS}", step) if rank == 0 else None
    # Held-out metrics before any update: the reference the final eval is compared with.
    extra = {f"{k}_initial": v for k, v in evaluate().items()} if eval_shard is not None and step == 0 else {}
    clock = progress.StepClock(step, p.total_steps, t.log_every)
    while step < p.total_steps:
        epoch = step // p.steps_per_epoch
        groups = _grouped(rec.micro_batches(train_shard, epoch, tokenizer), p.accum)
        # Resuming mid-epoch: pass over the steps already taken (the epoch's order is seeded).
        for group in islice(groups, step - epoch * p.steps_per_epoch, None):
            res = loop.train_step(model, optimizer, scheduler, group, rec.loss_fn, t.max_grad_norm, device, autocast)
            step += 1
            metrics = {**extra, "step": step, "epoch": epoch, "loss": res.loss, "lr": res.lr,
                       "grad_norm": res.grad_norm, rec.units: res.units,
                       f"{rec.units}_per_s": res.units / res.seconds, "tokens_per_s": res.tokens / res.seconds,
                       "padding_fraction": res.padding / max(res.tokens + res.padding, 1)}
            extra = {}
            last = step == p.total_steps
            if eval_shard is not None and ((t.eval_every and step % t.eval_every == 0) or last):
                metrics.update(evaluate())
            # The final checkpoint never resumes training: it keeps no optimizer state (2x the model for AdamW).
            save = "final" if last else "full" if t.checkpoint_every and step % t.checkpoint_every == 0 else None
            _report(rec.name, metrics, model, optimizer, scheduler, tokenizer, rank, out_dir, save, log, clock)
            if last:
                break


class MetricsLog:
    """Rank 0's metrics.jsonl, local or in storage (rewritten whole: object stores cannot append). A
    fresh run starts it empty; a worker resumed from a checkpoint appends, so the log keeps the steps a
    failure lost and shows them again after the restart."""

    def __init__(self, path: str, step: int):
        self.path = path
        old = (storage.read_text(path) or "").splitlines() if step else []
        self.lines = [line for line in old if line.strip()]

    def write(self, metrics: dict) -> None:
        self.lines.append(json.dumps(metrics))
        storage.write_text(self.path, "\n".join(self.lines) + "\n")


def _write_progress(out_dir: str, rank: int, step: int) -> None:
    # Per-rank pid and step: lets an operator (or a fault test) find and stop a worker on this machine.
    if storage.is_remote(out_dir):
        return
    d = Path(out_dir) / "workers"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "step": step}))


def _report(name, metrics, model, optimizer, scheduler, tokenizer, rank, out_dir: str, save: str | None, log,
            clock) -> None:

    if rank == 0:
        log.write(metrics)
        if shown := clock.line(name, metrics):
            # Straight to the worker's stdout: Ray Train's patched print would also log it (shown twice).
            print(shown, flush=True, file=sys.__stdout__)
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
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts) if save == "full" else None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            base = model.module if hasattr(model, "module") else model
            base.save_pretrained(tmp, state_dict=model_sd, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            state = {"scheduler": scheduler.state_dict(), "step": metrics["step"]}
            torch.save(state if optim_sd is None else {**state, "optimizer": optim_sd}, Path(tmp) / STATE_FILE)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _load_state(ckpt_dir: str, model, optimizer, scheduler) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # Tensors and plain values only: a checkpoint from storage others can write must not run code on load.
    state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    if "optimizer" in state:  # absent only in a final checkpoint, after which no step is left
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


class LiveSteps:
    """Rank 0's per-step reports, passed by Ray Train's controller (a ``UserCallback``) through a queue to a
    thread of the driver, which hands them to the tracker while the stage trains (the tracker's run lives
    in the driver; workers never talk to it)."""

    def __init__(self, out_dir: Path):
        from ray.util.queue import Queue

        self.out_dir, self.queue = out_dir, Queue(actor_options={"num_cpus": 0})
        self.callback = _ReportsToQueue(self.queue)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True, name="live-steps")

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                tracking.log_step(self.out_dir, self.queue.get(timeout=0.5))
            except Empty:
                if self.done.is_set():
                    return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.queue.shutdown()


class _ReportsToQueue(ray.train.UserCallback):
    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put_nowait(metrics[0])  # rank 0's: the figures metrics.jsonl holds


def fit(rec: Recipe, train_ds, eval_ds, out_dir: Path):
    """Train ``rec`` on Ray Train; returns (result, plan). Re-running with the same out_dir resumes."""
    from ray.train.torch import TorchTrainer

    name, s = rec.name, rec.scaling
    p = plan(train_ds.count(), rec.train, s, name)
    checkpoints = out_dir / manifest.RESUMABLE
    datasets = {"train": train_ds, **({"eval": eval_ds} if eval_ds is not None else {})}
    live = LiveSteps(out_dir) if tracking.live() else None
    trainer = TorchTrainer(
        train_worker,
        # Workers on other nodes write to storage URIs when the run folder is remote.
        train_loop_config={"recipe": rec, "plan": dataclasses.asdict(p),
                           "out_dir": storage.uri(out_dir) or str(out_dir), "datasets": sorted(datasets)},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker={"CPU": s.cpus_per_worker},
                                               placement_strategy=s.placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage.uri(checkpoints) or str(checkpoints.resolve()),
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[live.callback] if live else None),
        datasets=datasets,
    )
    previous = signal.getsignal(signal.SIGINT)
    try:
        with live or contextlib.nullcontext():
            result = trainer.fit()
    except SystemExit:  # Ray Train's Ctrl-C handler aborts the run, then exits: the job says it stopped
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous)  # Ray Train's handler would outlive the run
    storage.pull(out_dir / METRICS)  # written by rank 0, wherever it ran
    return result, p


def export_checkpoint(result, out_dir: Path) -> Path:
    """Copy the final checkpoint's HF folder (without optimizer state) to ``out_dir/model``."""
    import shutil

    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint (see {out_dir / manifest.RESUMABLE})")
    target = out_dir / MODEL
    with result.checkpoint.as_directory() as ckpt:
        if not any(Path(ckpt).glob("*.safetensors")):  # else the next stage fails on it, far from the cause
            raise RuntimeError(f"the final checkpoint {result.checkpoint.path} holds no *.safetensors: its upload to "
                               f"{result.checkpoint.filesystem.type_name} storage did not complete")
        shutil.rmtree(target, ignore_errors=True)
        if (Path(ckpt) / "adapter_config.json").exists():  # LoRA: the adapter, and the model merged for vLLM
            adapter = out_dir / ADAPTER
            shutil.rmtree(adapter, ignore_errors=True)
            shutil.copytree(ckpt, adapter, ignore=shutil.ignore_patterns(STATE_FILE))
            models.merge_adapter(adapter, target)
        else:
            shutil.copytree(ckpt, target, ignore=shutil.ignore_patterns(STATE_FILE))
    return target
