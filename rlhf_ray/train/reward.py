"""The reward-model recipe Ray Train runs (``runner``): micro-batches, the loss, held-out figures over
all workers. What each objective reads, encodes and computes is ``rlhf_ray.objectives``."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_ray import models, objectives
from rlhf_ray.config import PipelineConfig
from rlhf_ray.train import loop, runner


# ---------------------------------------------------------------- evaluation


def _gather(values: list) -> list:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, values)
        return [v for p in parts for v in p]
    return values


@torch.no_grad()
def evaluate(model, micro_batches, objective: str, device, autocast=None) -> dict:
    """Held-out loss and the objective's accuracy figures, over all workers."""
    model.eval()
    records, total, units = [], 0.0, 0.0
    for mb in micro_batches:
        batch = loop.to_device(mb["batch"], device)
        with loop.autocast_ctx(device, autocast):
            out = objectives.scores(model, batch, objective)
            loss_sum, n = objectives.loss(objective, out, batch)
        total, units = total + float(loss_sum), units + float(n)
        records += objectives.OBJECTIVES[objective].records(out, batch)
    records = _gather(records)
    total, units = sum(_gather([total])), sum(_gather([units]))
    summary = objectives.OBJECTIVES[objective].summary(records) if records else {}
    return {"eval_loss": total / max(units, 1.0), **summary}


# ---------------------------------------------------------------- the recipe the runner trains


class RewardRecipe:
    name = "reward"
    units = "units"

    @staticmethod
    def stage(cfg: PipelineConfig):
        return cfg.reward

    @staticmethod
    def tokenizer(cfg: PipelineConfig):
        m = cfg.reward.model
        return models.chat_tokenizer(m.name, m.template, m.trust_remote_code)

    @staticmethod
    def load_model(cfg: PipelineConfig, tokenizer, source: str | None):
        m = cfg.reward.model
        return objectives.load_model(source or m.name, cfg.reward.objective, tokenizer, m.dtype, m.trust_remote_code)

    @staticmethod
    def micro_batches(shard, epoch: int, cfg: PipelineConfig, tokenizer):
        r = cfg.reward
        for b in runner.iter_shard(shard, epoch, r.train):
            rows = [dict(zip(b, values)) for values in zip(*b.values())]
            batch = {**objectives.collate(rows, r.objective, tokenizer.pad_token_id), "objective": r.objective,
                     "center_coef": r.center_rewards_coef}
            real = int(batch["attention_mask"].sum())
            yield {"batch": batch, "units": objectives.OBJECTIVES[r.objective].units(batch), "tokens": real,
                   "padding": batch["attention_mask"].numel() - real}

    @staticmethod
    def loss_fn(model, batch):
        # The objective travels in the batch so that this stays a plain function of (model, batch).
        objective = batch["objective"]
        return objectives.loss(objective, objectives.scores(model, batch, objective), batch, batch.get("center_coef", 0.0))

    @staticmethod
    def evaluate(model, micro_batches, device, autocast) -> dict:
        mbs = list(micro_batches)
        objective = mbs[0]["batch"]["objective"] if mbs else "bt"
        return evaluate(model, mbs, objective, device, autocast)


def fit(cfg: PipelineConfig, train_ds, eval_ds, out_dir: Path):
    return runner.fit(RewardRecipe, cfg, train_ds, eval_ds, out_dir)
