"""The reward-model recipe Ray Train runs (``runner``): micro-batches, the loss, held-out figures over
all workers. What each objective reads, encodes and computes is ``rlhf_ray.core.objectives``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_ray import models
from rlhf_ray.core import objectives
from rlhf_ray.config import RewardConfig
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


def loss_fn(objective: str, center_coef: float = 0.0):
    """``objective``'s (loss summed over units, units) of a micro-batch, as ``loop.train_step`` takes it."""
    def fn(model, batch):
        return objectives.loss(objective, objectives.scores(model, batch, objective), batch, center_coef)
    return fn


@dataclasses.dataclass(frozen=True)
class RewardRecipe:
    """What Ray Train workers need to train a reward model: the ``reward`` section, nothing else."""
    section: RewardConfig
    name = "reward"
    units = "units"

    @property
    def train(self):
        return self.section.train

    @property
    def scaling(self):
        return self.section.scaling

    def tokenizer(self):
        m = self.section.model
        return models.chat_tokenizer(m.name, m.template, m.trust_remote_code)

    def load_model(self, tokenizer, source: str | None):
        m = self.section.model
        return models.load_reward_model(source or m.name, self.section.objective, tokenizer, m.dtype,
                                        m.trust_remote_code, m.attn_implementation)

    def micro_batches(self, shard, epoch: int, tokenizer):
        objective = self.section.objective
        for b in runner.iter_shard(shard, epoch, self.train):
            rows = [dict(zip(b, values)) for values in zip(*b.values())]
            batch = objectives.collate(rows, objective, tokenizer.pad_token_id, self.train.packing)
            real, padding = objectives.token_counts(batch)
            yield {"batch": batch, "units": objectives.OBJECTIVES[objective].units(batch), "tokens": real,
                   "padding": padding}

    def loss_fn(self, model, batch):
        return loss_fn(self.section.objective, self.section.center_rewards_coef)(model, batch)

    def evaluate(self, model, micro_batches, device, autocast) -> dict:
        return evaluate(model, micro_batches, self.section.objective, device, autocast)


def fit(section: RewardConfig, train_ds, eval_ds, out_dir: Path):
    return runner.fit(RewardRecipe(section), train_ds, eval_ds, out_dir)
