"""Reward models: encoding of preference rows, heads, the loss of each objective, and the Ray Train recipe.

Objectives (RLHF book ch. 5): ``bt`` (Bradley-Terry), ``margin`` (Llama 2), ``kwise`` (InstructGPT,
1/C(K,2) per prompt), ``plackett_luce`` (Starling), ``orm`` (per-token BCE, Cobbe et al.) and
``prm`` (3-class at step boundaries, Lightman et al.).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_ray import chat, evaluation, losses, models
from rlhf_ray.chat import IGNORE_INDEX
from rlhf_ray.config import PipelineConfig
from rlhf_ray.schema import BadRecord
from rlhf_ray.train import loop, runner

ROW_KIND = {"bt": "pairwise", "margin": "pairwise", "kwise": "kwise", "plackett_luce": "kwise",
            "orm": "orm", "prm": "prm"}
HEAD = {"bt": "scalar", "margin": "scalar", "kwise": "scalar", "plackett_luce": "scalar",
        "orm": "token", "prm": "prm3"}


# ---------------------------------------------------------------- text → tokens


def encode(prompt: list[dict], completion: list[dict], tokenizer, template: str | None, max_len: int):
    """Token ids of prompt + completion and, per token, whether it belongs to the completion.

    Chat models use their chat template; encoders without one (MiniLM) get ``Role: content`` blocks and
    their own [CLS]/[SEP]. Over ``max_len`` the prompt is cut from the left: the completion is what
    the reward judges.
    """
    if template or getattr(tokenizer, "chat_template", None):
        head = chat.render_text(prompt, tokenizer, template, add_generation_prompt=True)
        full = chat.render_text(prompt + completion, tokenizer, template)
        if not full.startswith(head):
            raise chat.TemplateError("the completion's rendering does not extend the prompt's")
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if tokenizer.bos_token_id is not None and chat._adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
            ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
    else:
        head = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt) + "\n\nAssistant: "
        full = head + "\n\n".join(m["content"] for m in completion)
        enc = tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
    in_completion = [int(a >= len(head) and b > a) for a, b in offsets]
    if len(ids) > max_len:
        keep_first = int(not in_completion[0] and ids[0] in tokenizer.all_special_ids)
        cut = len(ids) - max_len
        ids = ids[:keep_first] + ids[keep_first + cut:]
        in_completion = in_completion[:keep_first] + in_completion[keep_first + cut:]
    if not any(in_completion):
        raise ValueError(f"no completion token left within max_len={max_len}")
    return ids, in_completion, offsets, len(head)


def step_labels(prompt, steps: list[str], labels: list[int], tokenizer, template, max_len: int) -> tuple[list, list]:
    """PRM: ids of prompt + steps (one per line) and the class of each step at its last token."""
    ids, _, offsets, start = encode(prompt, [{"role": "assistant", "content": "\n".join(steps)}],
                                    tokenizer, template, 10 ** 9)
    ends, pos = [], start
    for s in steps:
        pos += len(s)
        ends.append(pos)  # character just past the step
        pos += 1          # the newline
    targets = [IGNORE_INDEX] * len(ids)
    for end, label in zip(ends, labels):
        last = max(i for i, (a, b) in enumerate(offsets) if a < end and b > a)
        targets[last] = losses.PRM_CLASSES[label]
    if len(ids) > max_len:
        ids, targets = ids[-max_len:], targets[-max_len:]
    return ids, targets


def _where(row):
    return row.get("_file", "<rows>"), row.get("_line", "?")


def encode_row(row: dict, objective: str, tokenizer, template, max_len: int) -> dict:
    """A validated row of the objective's kind → the token columns its loss needs."""
    try:
        if objective in ("bt", "margin"):
            c, _, _, _ = encode(row["prompt"], row["chosen"], tokenizer, template, max_len)
            r, _, _, _ = encode(row["prompt"], row["rejected"], tokenizer, template, max_len)
            margin = row.get("margin")
            if objective == "margin" and margin is None:
                raise BadRecord(*_where(row), "margin", "missing (the margin objective needs one per pair)")
            return {"chosen_ids": c, "rejected_ids": r, "margin": float(margin or 0.0)}
        if objective in ("kwise", "plackett_luce"):
            return {"completion_ids": [encode(row["prompt"], comp, tokenizer, template, max_len)[0]
                                       for comp in row["completions"]], "ranking": list(row["ranking"])}
        if objective == "orm":
            ids, mask, _, _ = encode(row["prompt"], row["completion"], tokenizer, template, max_len)
            return {"input_ids": ids, "completion_mask": mask, "label": int(row["label"])}
        ids, targets = step_labels(row["prompt"], row["completions"], row["labels"], tokenizer, template, max_len)
        if all(t == IGNORE_INDEX for t in targets):
            raise ValueError(f"no step boundary left within max_len={max_len}")
        return {"input_ids": ids, "step_labels": targets}
    except (ValueError, chat.TemplateError) as e:
        if isinstance(e, BadRecord):
            raise
        raise BadRecord(*_where(row), "prompt", str(e)) from None


# ---------------------------------------------------------------- model and losses


def load_reward_model(name: str, objective: str, tokenizer, dtype: str = "float32", trust_remote_code: bool = False):
    """A scalar, per-token or 3-class head on any HF backbone.

    Encoder backbones (no ``score`` head) pool the mean of their token states: sentence encoders such
    as MiniLM were trained for mean pooling, and their [CLS] pooler is untrained (on HH-harmless, 1,200
    pairs: 0.65 held-out accuracy with mean pooling vs 0.59 with [CLS]). The choice is saved in the
    config (``rlhf_ray_pooling``) so that a reloaded reward model scores the same way.
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    head = HEAD[objective]
    cls = AutoModelForSequenceClassification if head == "scalar" else AutoModelForTokenClassification
    model = cls.from_pretrained(models.resolve(name), num_labels=3 if head == "prm3" else 1,
                                dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if head == "scalar" and not hasattr(model, "score"):
        model.config.rlhf_ray_pooling = getattr(model.config, "rlhf_ray_pooling", "mean")
    return model


def disable_dropout(model) -> None:
    """Dropout off, as TRL and OpenRLHF train reward models: it adds noise to the score differences the
    loss compares, and it slows steps (bench/rm_throughput.py: 0.45x → 0.78x of TRL once off)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar per sequence: decoder RMs read their head at the last real token; encoders pool the
    mean of their token states (or [CLS], when the config says so)."""
    base = getattr(model, "module", model)
    encoder = not hasattr(base, "score")
    if encoder and getattr(base.config, "rlhf_ray_pooling", "cls") != "mean":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    hidden = base.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if encoder:
        mask = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return base.classifier(base.dropout(pooled))[:, 0].float()
    last = hidden[torch.arange(hidden.size(0), device=hidden.device), last_token_index(attention_mask)]
    return base.score(last)[:, 0].float()


def pad_rows(rows: list[list[int]], pad_id: int, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def collate(rows: list[dict], objective: str, pad_id: int) -> dict:
    if objective in ("bt", "margin"):
        ids, mask = pad_rows([r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "margin": torch.tensor([r["margin"] for r in rows])}
    if objective in ("kwise", "plackett_luce"):
        k = len(rows[0]["completion_ids"])
        if any(len(r["completion_ids"]) != k for r in rows):
            raise ValueError("K-wise rows in one batch must have the same number of completions")
        ids, mask = pad_rows([c for r in rows for c in r["completion_ids"]], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "ranking": torch.tensor([r["ranking"] for r in rows])}
    ids, mask = pad_rows([r["input_ids"] for r in rows], pad_id)
    if objective == "orm":
        cmask, _ = pad_rows([r["completion_mask"] for r in rows], 0, fill=0)
        return {"input_ids": ids, "attention_mask": mask, "completion_mask": cmask,
                "label": torch.tensor([r["label"] for r in rows])}
    targets, _ = pad_rows([r["step_labels"] for r in rows], IGNORE_INDEX, fill=IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "step_labels": targets}


def scores(model, batch: dict, objective: str) -> torch.Tensor:
    """Rewards in the objective's shape: [2, B] pairs, [B, K] rankings, token logits otherwise."""
    if HEAD[objective] == "scalar":
        r = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])
        if objective in ("bt", "margin"):
            return r.view(2, -1)
        return r.view(batch["ranking"].size(0), -1)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def objective_loss(objective: str, out: torch.Tensor, batch: dict, center_coef: float = 0.0):
    """(loss summed over the batch's units, number of units) for the train step's global normalisation."""
    if objective in ("bt", "margin"):
        r_c, r_r = out[0], out[1]
        per = losses.margin_bradley_terry(r_c, r_r, batch["margin"]) if objective == "margin" \
            else losses.bradley_terry(r_c, r_r)
        if center_coef:
            per = per + center_coef * losses.center_rewards(r_c, r_r)
        n = r_c.numel()
    elif objective == "kwise":
        per, n = losses.kwise_balanced(out, batch["ranking"]), out.size(0)
    elif objective == "plackett_luce":
        per, n = losses.plackett_luce(out, batch["ranking"]), out.size(0)
    elif objective == "orm":
        n = int(batch["completion_mask"].sum())
        per = losses.orm_bce(out[..., 0], batch["label"], batch["completion_mask"])
    else:
        n = int((batch["step_labels"] != IGNORE_INDEX).sum())
        per = losses.prm_3class(out, batch["step_labels"])
    return per * n, torch.tensor(n)


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
            out = scores(model, batch, objective)
            loss_sum, n = objective_loss(objective, out, batch)
        total, units = total + float(loss_sum), units + float(n)
        records += _eval_records(objective, out, batch)
    records = _gather(records)
    total, units = sum(_gather([total])), sum(_gather([units]))
    return {"eval_loss": total / max(units, 1.0), **_summarise(objective, records)}


def _eval_records(objective, out, batch) -> list:
    if objective in ("bt", "margin"):
        return list(zip(out[0].tolist(), out[1].tolist()))
    if objective in ("kwise", "plackett_luce"):
        ordered = torch.gather(out, 1, batch["ranking"])
        return [(row[0], row[-1]) for row in ordered.tolist()]  # best vs worst
    if objective == "orm":
        m = batch["completion_mask"].float()
        mean_logit = (out[..., 0] * m).sum(1) / m.sum(1).clamp(min=1)
        return list(zip(mean_logit.tolist(), batch["label"].tolist()))
    keep = batch["step_labels"] != IGNORE_INDEX
    return list(zip(out.argmax(-1)[keep].tolist(), batch["step_labels"][keep].tolist()))


def _summarise(objective, records) -> dict:
    if not records:
        return {}
    if objective in ("orm",):
        return {"eval_auc": evaluation.auc([s for s, _ in records], [y for _, y in records])}
    if objective == "prm":
        return {"eval_step_accuracy": sum(p == y for p, y in records) / len(records)}
    good, bad = torch.tensor([g for g, _ in records]), torch.tensor([b for _, b in records])
    everything = torch.cat([good, bad])
    return {"eval_accuracy": losses.pairwise_accuracy(good, bad), "eval_margin": float((good - bad).mean()),
            "eval_chosen_mean": float(good.mean()), "eval_rejected_mean": float(bad.mean()),
            "eval_chosen_std": float(good.std()) if len(good) > 1 else 0.0,
            "eval_rejected_std": float(bad.std()) if len(bad) > 1 else 0.0,
            "reward_mean": float(everything.mean()), "reward_std": float(everything.std())}


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
        return load_reward_model(source or m.name, cfg.reward.objective, tokenizer, m.dtype, m.trust_remote_code)

    @staticmethod
    def micro_batches(shard, epoch: int, cfg: PipelineConfig, tokenizer):
        r = cfg.reward
        for b in runner.iter_shard(shard, epoch, r.train):
            rows = [dict(zip(b, values)) for values in zip(*b.values())]
            batch = {**collate(rows, r.objective, tokenizer.pad_token_id), "objective": r.objective,
                     "center_coef": r.center_rewards_coef}
            real = int(batch["attention_mask"].sum())
            yield {"batch": batch, "units": _units(batch, r.objective), "tokens": real,
                   "padding": batch["attention_mask"].numel() - real}

    @staticmethod
    def loss_fn(model, batch):
        # The objective travels in the batch so that this stays a plain function of (model, batch).
        objective = batch["objective"]
        return objective_loss(objective, scores(model, batch, objective), batch, batch.get("center_coef", 0.0))

    @staticmethod
    def evaluate(model, micro_batches, device, autocast) -> dict:
        mbs = list(micro_batches)
        objective = mbs[0]["batch"]["objective"] if mbs else "bt"
        return evaluate(model, mbs, objective, device, autocast)


def _units(batch: dict, objective: str) -> int:
    if objective in ("bt", "margin"):
        return batch["margin"].numel()
    if objective in ("kwise", "plackett_luce"):
        return batch["ranking"].size(0)
    if objective == "orm":
        return int(batch["completion_mask"].sum())
    return int((batch["step_labels"] != IGNORE_INDEX).sum())


def fit(cfg: PipelineConfig, train_ds, eval_ds, out_dir: Path):
    return runner.fit("reward", cfg, cfg.reward, train_ds, eval_ds, out_dir)
