"""The training step shared by SFT and reward models: framework-light, plain torch.

One optimizer step takes ``accum`` micro-batches on each of ``world_size`` workers. The loss of every
micro-batch is its *sum* divided by the count (trained tokens, pairs, ...) of the whole global batch,
all-reduced before the first backward, so accumulation and data parallelism give the same update as
one large batch. Ray Train (or any launcher that sets up torch.distributed) wraps this.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist

# (model, micro-batch) -> (loss summed over its units, number of units)
LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]


def freeze_lower_layers(model: torch.nn.Module, trainable: int) -> None:
    """Leave only the top ``trainable`` transformer blocks, and the norms and heads above them, to learn:
    the input embeddings (and a head tied to them) and the blocks below are frozen. Backward then stops
    at the lowest trainable block, which is most of a step's cost on a CPU."""
    blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=None)
    if blocks is None or trainable <= 0 or trainable >= len(blocks):
        return
    model.get_input_embeddings().requires_grad_(False)
    for block in blocks[:len(blocks) - trainable]:
        block.requires_grad_(False)


def checkpoint_activations(model: torch.nn.Module) -> None:
    """``train.gradient_checkpointing``: each block's activations are recomputed in the backward pass instead
    of kept (non-reentrant, so frozen inputs and LoRA need no special case); generation's KV cache is off."""
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # Biases and norms are not decayed (the usual AdamW practice).
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def build_scheduler(optimizer, total_steps: int, warmup_ratio: float, schedule: str):
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_model(model: torch.nn.Module, device) -> torch.nn.Module:
    """FSDP2: each transformer block (the model's ``_no_split_modules``, as accelerate wraps them) and then
    the root are sharded over the workers, so parameters, gradients and optimizer state are split and a
    block's full weights exist only while it runs. Gradients are averaged over workers, as with DDP."""
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def all_reduce_sum(value: float | torch.Tensor, device) -> float:
    t = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
    if world()[1] > 1:
        dist.all_reduce(t)
    return float(t)


@dataclass
class StepResult:
    loss: float            # global-batch mean
    grad_norm: float
    lr: float
    units: float           # global count the loss was normalised by (trained tokens, pairs, ...)
    tokens: float          # global input tokens (real, not padding)
    padding: float         # global padding tokens
    seconds: float


def train_step(model, optimizer, scheduler, micro_batches: Sequence[dict], loss_fn: LossFn,
               max_grad_norm: float, device, autocast_dtype: torch.dtype | None = None) -> StepResult:
    """One optimizer step over this worker's ``micro_batches`` (its share of the global batch)."""
    t0 = time.perf_counter()
    units = all_reduce_sum(sum(mb["units"] for mb in micro_batches), device)
    _, world_size = world()
    model.train()
    total = 0.0
    for i, mb in enumerate(micro_batches):
        # DDP averages gradients over workers: scale by world_size to keep the global-sum / units form.
        sync = nullcontext() if i == len(micro_batches) - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync, autocast_ctx(device, autocast_dtype):
            loss_sum, _ = loss_fn(model, to_device(mb["batch"], device))
            loss = loss_sum / max(units, 1.0) * world_size
        loss.backward()
        total += float(loss_sum.detach())
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss_global = all_reduce_sum(total, device) / max(units, 1.0)
    tokens = all_reduce_sum(sum(mb["tokens"] for mb in micro_batches), device)
    padding = all_reduce_sum(sum(mb["padding"] for mb in micro_batches), device)
    return StepResult(loss_global, grad_norm, lr, units, tokens, padding, time.perf_counter() - t0)


@torch.no_grad()
def evaluate(model, micro_batches: Iterable[dict], loss_fn: LossFn, device,
             autocast_dtype: torch.dtype | None = None) -> float:
    """Mean loss per unit over all workers' micro-batches."""
    model.eval()
    total, units = 0.0, 0.0
    for mb in micro_batches:
        with autocast_ctx(device, autocast_dtype):
            loss_sum, n = loss_fn(model, to_device(mb["batch"], device))
        total += float(loss_sum)
        units += float(n)
    return all_reduce_sum(total, device) / max(all_reduce_sum(units, device), 1.0)


def autocast_ctx(device, dtype):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
