"""Scoring (prompt, completion) pairs with a trained reward model: length-sorted batches, OOM splitting.

``RewardScorer`` is plain torch; ``score_dataset`` runs it in a Ray Data actor pool.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_ray import models
from rlhf_ray.train import reward


class RewardScorer:
    """Scalar rewards from a sequence-classification RM, or per-sequence scores from an ORM token head
    (its logit at the last completion token, the verifier's final-token prediction)."""

    def __init__(self, model_dir: str, template: str | None = None, max_len: int = 512, batch_size: int = 16,
                 dtype: str = "float32", threads: int = 0):
        from transformers import AutoConfig

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = models.load_tokenizer(models.resolve(model_dir))
        arch = " ".join(AutoConfig.from_pretrained(models.resolve(model_dir)).architectures or [])
        self.objective = "orm" if "TokenClassification" in arch else "bt"
        self.model = reward.load_reward_model(model_dir, self.objective, self.tokenizer, dtype).eval()
        self.template, self.max_len, self.batch_size = template, max_len, batch_size
        self.padding = self.real = 0

    def encode(self, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
        ids, in_completion, _, _ = reward.encode(prompt, completion, self.tokenizer, self.template, self.max_len)
        return ids, max(i for i, c in enumerate(in_completion) if c)

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], completions: list[list[dict]], sort: bool = True) -> list[float]:
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        # Longest first, batched by similar length: padding stays low (the RLHF book's tip).
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0])) if sort else list(range(len(encoded)))
        out = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, s in zip(idx, self._run([encoded[i] for i in idx])):
                out[i] = s
        return out

    def _run(self, items: list[tuple[list[int], int]]) -> list[float]:
        try:
            ids, mask = reward.pad_rows([ids for ids, _ in items], self.tokenizer.pad_token_id)
            self.real += int(mask.sum())
            self.padding += int(mask.numel() - mask.sum())
            if self.objective == "orm":
                logits = self.model(input_ids=ids, attention_mask=mask).logits[..., 0].float()
                return [float(logits[i, last]) for i, (_, last) in enumerate(items)]
            return reward.sequence_rewards(self.model, ids, mask).tolist()
        except torch.OutOfMemoryError:
            # Too large a batch: halve it and retry rather than failing the job.
            if len(items) == 1:
                raise
            half = len(items) // 2
            return self._run(items[:half]) + self._run(items[half:])

    @property
    def padding_fraction(self) -> float:
        return self.padding / max(self.padding + self.real, 1)


class _ScoreActor:
    def __init__(self, model_dir: str, template: str | None, max_len: int, batch_size: int, threads: int):
        self.scorer = RewardScorer(model_dir, template, max_len, batch_size, threads=threads)

    def __call__(self, batch: dict) -> dict:
        prompts = [json.loads(p) for p in batch["prompt_json"]]
        completions = [json.loads(c) for c in batch["completion_json"]]
        return {**batch, "reward": self.scorer.score(prompts, completions)}


def score_dataset(ds, model_dir: str | Path, template: str | None = None, max_len: int = 512,
                  batch_size: int = 16, actors: tuple[int, int] = (1, 1), rows_per_call: int = 256,
                  threads: int = 0):
    """Add a ``reward`` column to rows holding ``prompt_json`` and ``completion_json`` (message lists as JSON)."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        _ScoreActor, batch_size=rows_per_call, batch_format="numpy",
        fn_constructor_kwargs={"model_dir": str(model_dir), "template": template, "max_len": max_len,
                               "batch_size": batch_size, "threads": threads},
        compute=ActorPoolStrategy(min_size=actors[0], max_size=actors[1]), num_cpus=1)
