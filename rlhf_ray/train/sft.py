"""Supervised fine-tuning on Ray Train: Ray Data in, the shared train step, HF checkpoints out."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rlhf_ray import models
from rlhf_ray.core import chat, losses
from rlhf_ray.config import ModelConfig, ScalingConfig, SFTConfig, TrainConfig
from rlhf_ray.data import split_bad_rows
from rlhf_ray.core.schema import BadRecord
from rlhf_ray.train import loop, runner, sft_data


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
    return losses.sft_nll_sum(logits, batch["labels"]), torch.tensor(sft_data.trained_tokens(batch))


def micro_batch(examples: list[dict], packing: bool, pad_id: int) -> dict:
    batch = sft_data.collate(examples, packing, pad_id)
    return {"batch": batch, "units": sft_data.trained_tokens(batch),
            "tokens": sum(len(e["input_ids"]) for e in examples), "padding": sft_data.padding_tokens(batch)}


# ---------------------------------------------------------------- data (Ray Data)


def _encode(row: dict, model: dict, max_seq_len: int, mask: str, overlength: str) -> dict:
    tok = models.chat_tokenizer(model["name"], model["template"], model["trust_remote_code"])
    where = {"file": row.get("_file"), "line": row.get("_line")}
    try:
        ex = sft_data.encode_sft_row(row, tok, max_seq_len, mask, model["template"], overlength)
        return {**ex, **where, "field": None, "reason": None}
    except (BadRecord, chat.TemplateError) as e:
        return {"input_ids": [], "labels": [], "truncated": False, **where,
                "field": getattr(e, "field", "messages"), "reason": getattr(e, "reason", str(e))}


def encode_dataset(rows, policy: ModelConfig, section: SFTConfig, on_bad_rows: str, quarantine_path: Path | None):
    """Rows → token ids and labels (materialised in the object store) plus counts for the manifest."""
    t = section.train
    encoded = rows.map(_encode, fn_kwargs={"model": dataclasses.asdict(policy), "max_seq_len": t.max_seq_len,
                                           "mask": t.mask, "overlength": t.overlength}).materialize()
    good, n_bad = split_bad_rows(encoded, on_bad_rows, quarantine_path)
    counts = {"encoded": good.count(), "quarantined_after_tokenization": n_bad,
              "truncated": good.filter(lambda r: bool(r["truncated"])).count()}
    return good.select_columns(["input_ids", "labels"]), counts


# ---------------------------------------------------------------- the recipe the runner trains


@dataclasses.dataclass(frozen=True)
class SFTRecipe:
    """What Ray Train workers need to run SFT (see ``runner.train_worker``): the policy and the training
    settings, nothing else of the config."""
    policy: ModelConfig
    train: TrainConfig
    scaling: ScalingConfig
    name = "sft"
    units = "trained_tokens"

    def loss_fn(self, model, batch: dict):
        return sft_loss(model, batch)

    def tokenizer(self):
        p = self.policy
        return models.chat_tokenizer(p.name, p.template, p.trust_remote_code)

    def load_model(self, tokenizer, source: str | None):
        """The policy, or the checkpoint ``source`` to resume; with ``train.lora_r`` the base model frozen
        under rank-r LoRA adapters (peft), resumed from a checkpoint's adapter."""
        p, t = self.policy, self.train
        lora = t.lora_r > 0
        model = models.load_policy(models.local_path(p.name) if lora or not source else source, p.dtype,
                                   p.trust_remote_code, p.attn_implementation)
        resized = len(tokenizer) > model.get_input_embeddings().num_embeddings
        if resized:
            model.resize_token_embeddings(len(tokenizer))
        if lora:
            from peft import LoraConfig, PeftModel, get_peft_model

            if source:
                return PeftModel.from_pretrained(model, source, is_trainable=True)
            target = t.lora_target if t.lora_target == "all-linear" else [m.strip() for m in t.lora_target.split(",")]
            # Rows for tokens the template added are new: they train (and are saved) in full, or the merged
            # model would get other random rows than the ones trained with.
            embeddings = {model.get_input_embeddings(), model.get_output_embeddings()}
            full = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m in embeddings}) if resized else None
            return get_peft_model(model, LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                                    target_modules=target, modules_to_save=full, task_type="CAUSAL_LM"))
        return model

    def micro_batches(self, shard, epoch: int, tokenizer):
        t = self.train
        for b in runner.iter_shard(shard, epoch, t):
            examples = [{"input_ids": list(i), "labels": list(l)} for i, l in zip(b["input_ids"], b["labels"])]
            yield micro_batch(examples, t.packing, tokenizer.pad_token_id)

    def evaluate(self, model, micro_batches, device, autocast) -> dict:
        return {"eval_loss": loop.evaluate(model, micro_batches, sft_loss, device, autocast)}


def fit(policy: ModelConfig, section: SFTConfig, train_ds, eval_ds, out_dir: Path):
    """Train on Ray Train; returns the final ``ray.train.Result`` and the step plan. Re-running resumes."""
    return runner.fit(SFTRecipe(policy, section.train, section.scaling), train_ds, eval_ds, out_dir)
