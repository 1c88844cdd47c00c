"""Reward-model objectives (RLHF book ch. 5), one table entry each: the rows it reads, its head, how a
row becomes tokens, how rows become a batch, its loss and its held-out figures.

``bt`` (Bradley-Terry), ``margin`` (Llama 2), ``kwise`` (InstructGPT, 1/C(K,2) per prompt),
``plackett_luce`` (Starling), ``orm`` (per-token BCE, Cobbe et al.) and ``prm`` (3-class at step
boundaries, Lightman et al.). Adding an objective is one ``Objective`` in ``OBJECTIVES``: training, scoring
and serving all read from it how text becomes tokens and how the model's output becomes a score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhf_ray.core import chat, evaluation, losses
from rlhf_ray.core.chat import IGNORE_INDEX
from rlhf_ray.core.schema import BadRecord


# ---------------------------------------------------------------- text → tokens


def texts(prompt: list[dict], completion: list[dict], tokenizer, template: str | None) -> tuple[str, str, bool]:
    """(prompt text, prompt + completion text, whether a chat template rendered them): chat models use
    their template; encoders without one (MiniLM) get ``Role: content`` blocks."""
    if template or getattr(tokenizer, "chat_template", None):
        head = chat.render_text(prompt, tokenizer, template, add_generation_prompt=True)
        full = chat.render_text(prompt + completion, tokenizer, template)
        if not full.startswith(head):
            raise chat.TemplateError("the completion's rendering does not extend the prompt's")
        return head, full, True
    chat.check_text(prompt + completion, chat.control_tokens(tokenizer))  # an encoder's typed [SEP] too
    head = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt) + "\n\nAssistant: "
    return head, head + "\n\n".join(m["content"] for m in completion), False


def encode(prompt: list[dict], completion: list[dict], tokenizer, template: str | None, max_len: int):
    """Token ids of prompt + completion and, per token, whether it belongs to the completion.

    Chat models use their chat template; encoders without one (MiniLM) get ``Role: content`` blocks and
    their own [CLS]/[SEP]. Over ``max_len`` the prompt is cut from the left: the completion is what
    the reward judges.
    """
    head, full, chat_model = texts(prompt, completion, tokenizer, template)
    enc = tokenizer(full, add_special_tokens=not chat_model, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if chat_model and tokenizer.bos_token_id is not None and chat._adds_bos(tokenizer) \
            and ids[:1] != [tokenizer.bos_token_id]:
        ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
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
    """PRM: ids of prompt + steps (one per line) and the class of each step at its last token.

    Each step is found in the text the template rendered, after the previous one (a template may write a
    think block before the answer, or trim it), and its label goes on the last token that overlaps it.
    """
    completion = [{"role": "assistant", "content": "\n".join(steps)}]
    ids, _, offsets, start = encode(prompt, completion, tokenizer, template, 10 ** 9)
    full = texts(prompt, completion, tokenizer, template)[1]
    targets, pos = [IGNORE_INDEX] * len(ids), start
    for n, (step, label) in enumerate(zip(steps, labels)):
        at = full.find(step.strip(), pos)
        if at < 0 or not step.strip():
            raise ValueError(f"step {n} ({step[:30]!r}) is not in the rendered completion")
        pos = at + len(step.strip())
        last = max(i for i, (a, b) in enumerate(offsets) if a < pos and b > a)
        if targets[last] != IGNORE_INDEX or not offsets[last][0] < pos <= offsets[last][1]:
            raise ValueError(f"step {n}: no token of its own ends it (a token spans two steps)")
        targets[last] = losses.PRM_CLASSES[label]
    if len(ids) > max_len:
        ids, targets = ids[-max_len:], targets[-max_len:]
    return ids, targets


def _where(row):
    return row.get("_file", "<rows>"), row.get("_line", "?")


def _encode_pair(row, objective, tok, template, max_len) -> dict:
    c, _, _, _ = encode(row["prompt"], row["chosen"], tok, template, max_len)
    r, _, _, _ = encode(row["prompt"], row["rejected"], tok, template, max_len)
    margin = row.get("margin")
    if objective == "margin" and margin is None:
        raise BadRecord(*_where(row), "margin", "missing (the margin objective needs one per pair)")
    return {"chosen_ids": c, "rejected_ids": r, "margin": float(margin or 0.0)}


def _encode_ranking(row, objective, tok, template, max_len) -> dict:
    return {"completion_ids": [encode(row["prompt"], comp, tok, template, max_len)[0] for comp in row["completions"]],
            "ranking": list(row["ranking"])}


def _encode_outcome(row, objective, tok, template, max_len) -> dict:
    ids, mask, _, _ = encode(row["prompt"], row["completion"], tok, template, max_len)
    return {"input_ids": ids, "completion_mask": mask, "label": int(row["label"])}


def _encode_steps(row, objective, tok, template, max_len) -> dict:
    ids, targets = step_labels(row["prompt"], row["completions"], row["labels"], tok, template, max_len)
    if all(t == IGNORE_INDEX for t in targets):
        raise ValueError(f"no step boundary left within max_len={max_len}")
    return {"input_ids": ids, "step_labels": targets}


# ---------------------------------------------------------------- rows → batch


def pad_rows(rows: list[list[int]], pad_id: int, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def pack_rows(seqs: list[list[int]], pad_id: int) -> dict:
    """Sequences bin-packed (first fit, longest first) into rows as wide as the longest: the attention work
    of padding each to the longest, without most of its padding. ``segment_ids`` (-1: padding) and
    ``position_ids`` restarting at 0 keep each sequence to itself (``models.RewardModel`` builds the block
    mask); ``unpack`` [N, longest] indexes the flattened packed tokens of sequence n in order (past its end,
    its last token again), so outputs read back in the padded layout every loss and record uses.
    Written here: transformers packs for FlashAttention's varlen kernels only, not for SDPA or eager."""
    width = max(len(s) for s in seqs)
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
        row = next((r for r, u in enumerate(used) if u + len(seqs[i]) <= width), None)
        if row is None:
            rows.append([])
            used.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        used[row] += len(seqs[i])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    unpack = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = len(seqs[i])
            ids[r, at:at + n] = torch.tensor(seqs[i], dtype=torch.long)
            positions[r, at:at + n] = torch.arange(n)
            segments[r, at:at + n] = i
            unpack[i] = r * width + at + torch.arange(width).clamp(max=n - 1)
            at += n
    return {"input_ids": ids, "position_ids": positions, "segment_ids": segments, "unpack": unpack}


# What a batch gives the model (``scores``); the rest is for the loss and records.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "segment_ids", "unpack")


def sequences(rows: list[list[int]], pad_id: int, packing: bool) -> dict:
    """The model inputs for token rows: padded, or packed (``pack_rows``); ``attention_mask`` is the padded
    layout's either way (which positions of an output read back are real)."""
    ids, mask = pad_rows(rows, pad_id)
    return {**pack_rows(rows, pad_id), "attention_mask": mask} if packing else {"input_ids": ids, "attention_mask": mask}


def token_counts(batch: dict) -> tuple[int, int]:
    """(real tokens, padding tokens) the model computes over for this batch."""
    real = int(batch["attention_mask"].sum())
    return real, batch["input_ids"].numel() - real


def _collate_pairs(rows, pad_id, packing) -> dict:
    seqs = sequences([r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows], pad_id, packing)
    return {**seqs, "margin": torch.tensor([r["margin"] for r in rows])}


def _collate_rankings(rows, pad_id, packing) -> dict:
    k = len(rows[0]["completion_ids"])
    if any(len(r["completion_ids"]) != k for r in rows):
        raise ValueError("K-wise rows in one batch must have the same number of completions")
    seqs = sequences([c for r in rows for c in r["completion_ids"]], pad_id, packing)
    return {**seqs, "ranking": torch.tensor([r["ranking"] for r in rows])}


def _collate_outcomes(rows, pad_id, packing) -> dict:
    cmask, _ = pad_rows([r["completion_mask"] for r in rows], 0, fill=0)
    return {**sequences([r["input_ids"] for r in rows], pad_id, packing), "completion_mask": cmask,
            "label": torch.tensor([r["label"] for r in rows])}


def _collate_steps(rows, pad_id, packing) -> dict:
    targets, _ = pad_rows([r["step_labels"] for r in rows], IGNORE_INDEX, fill=IGNORE_INDEX)
    return {**sequences([r["input_ids"] for r in rows], pad_id, packing), "step_labels": targets}


# ---------------------------------------------------------------- losses (mean per unit) and units


def _pair_loss(objective):
    def loss(out, batch, center_coef):
        r_c, r_r = out[0], out[1]
        per = losses.margin_bradley_terry(r_c, r_r, batch["margin"]) if objective == "margin" \
            else losses.bradley_terry(r_c, r_r)
        return per + center_coef * losses.center_rewards(r_c, r_r) if center_coef else per
    return loss


def _ranking_loss(fn):
    return lambda out, batch, center_coef: fn(out, batch["ranking"])


def _outcome_loss(out, batch, center_coef):
    return losses.orm_bce(out[..., 0], batch["label"], batch["completion_mask"])


def _steps_loss(out, batch, center_coef):
    return losses.prm_3class(out, batch["step_labels"])


def _pair_units(batch) -> int:
    return batch["margin"].numel()


def _ranking_units(batch) -> int:
    return batch["ranking"].size(0)


def _outcome_units(batch) -> int:
    return int(batch["completion_mask"].sum())


def _steps_units(batch) -> int:
    return int((batch["step_labels"] != IGNORE_INDEX).sum())


# ---------------------------------------------------------------- held-out figures


def _pair_records(out, batch) -> list:
    return list(zip(out[0].tolist(), out[1].tolist()))


def _ranking_records(out, batch) -> list:
    ordered = torch.gather(out, 1, batch["ranking"])
    return [(row[0], row[-1]) for row in ordered.tolist()]  # best vs worst


def _outcome_records(out, batch) -> list:
    # The logit at the last completion token: the score the scorer and eval_rm read too.
    last = losses.last_token_index(batch["completion_mask"])
    scores = out[torch.arange(out.size(0), device=out.device), last, 0]
    return list(zip(scores.tolist(), batch["label"].tolist()))


def _steps_records(out, batch) -> list:
    keep = batch["step_labels"] != IGNORE_INDEX
    return list(zip(out.argmax(-1)[keep].tolist(), batch["step_labels"][keep].tolist()))


def _preference_summary(records) -> dict:
    good, bad = torch.tensor([g for g, _ in records]), torch.tensor([b for _, b in records])
    everything = torch.cat([good, bad])
    return {"eval_accuracy": losses.pairwise_accuracy(good, bad), "eval_margin": float((good - bad).mean()),
            "eval_chosen_mean": float(good.mean()), "eval_rejected_mean": float(bad.mean()),
            "eval_chosen_std": float(good.std()) if len(good) > 1 else 0.0,
            "eval_rejected_std": float(bad.std()) if len(bad) > 1 else 0.0,
            "reward_mean": float(everything.mean()), "reward_std": float(everything.std())}


def _outcome_summary(records) -> dict:
    return {"eval_auc": evaluation.auc([s for s, _ in records], [y for _, y in records])}


def _steps_summary(records) -> dict:
    return {"eval_step_accuracy": sum(p == y for p, y in records) / len(records)}


# ---------------------------------------------------------------- inference: a candidate → its score


def _completion_end(prompt, completion, tok, template, max_len) -> tuple[list[int], list[int]]:
    ids, in_completion, _, _ = encode(prompt, completion, tok, template, max_len)
    return ids, [max(i for i, c in enumerate(in_completion) if c)]


def _step_ends(prompt, completion, tok, template, max_len) -> tuple[list[int], list[int]]:
    steps = [line for line in "\n".join(m["content"] for m in completion).split("\n") if line.strip()]
    ids, targets = step_labels(prompt, steps, [1] * len(steps), tok, template, max_len)
    return ids, [i for i, t in enumerate(targets) if t != IGNORE_INDEX] or [len(ids) - 1]


def _sequence_score(out, at, prm_reduce) -> float:
    return float(out)


def _last_token_score(out, at, prm_reduce) -> float:
    # The logit at the last completion token: the verifier's final-token prediction, as training's AUC reads it.
    return float(out[at[-1], 0])


def _step_score(out, at, prm_reduce) -> float:
    correct = out[at].softmax(-1)[:, losses.PRM_CLASSES[1]]  # P(step correct) at each step's last token
    return float(correct.min() if prm_reduce == "min" else correct.mean())


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Objective:
    row_kind: str        # the schema kind its rows are validated as (``schema.validate``)
    head: str            # scalar (one reward per sequence), token (a logit per token), prm3 (3 classes per token)
    encode: Callable     # (validated row, objective, tokenizer, template, max_len) → token columns
    empty: dict          # a bad row's token columns: Arrow blocks of good and bad rows share one schema
    collate: Callable    # (rows of token columns, pad id, packing) → batch of tensors
    loss: Callable       # (scores, batch, center_coef) → mean loss per unit
    units: Callable      # batch → the units its loss averages over (pairs, rankings, tokens, steps)
    records: Callable    # (scores, batch) → held-out records
    summary: Callable    # records of the whole eval set → eval_* figures
    score_at: Callable   # (prompt, completion, tokenizer, template, max_len) → (ids, positions its score reads)
    score: Callable      # (the model's output for one candidate, positions, prm_reduce) → the candidate's score


_PAIRS = dict(row_kind="pairwise", head="scalar", encode=_encode_pair, collate=_collate_pairs,
              empty={"chosen_ids": [], "rejected_ids": [], "margin": 0.0}, units=_pair_units,
              records=_pair_records, summary=_preference_summary, score_at=_completion_end, score=_sequence_score)
_RANKINGS = dict(row_kind="kwise", head="scalar", encode=_encode_ranking, collate=_collate_rankings,
                 empty={"completion_ids": [], "ranking": []}, units=_ranking_units, records=_ranking_records,
                 summary=_preference_summary, score_at=_completion_end, score=_sequence_score)
OBJECTIVES: dict[str, Objective] = {
    "bt": Objective(**_PAIRS, loss=_pair_loss("bt")),
    "margin": Objective(**_PAIRS, loss=_pair_loss("margin")),
    "kwise": Objective(**_RANKINGS, loss=_ranking_loss(losses.kwise_balanced)),
    "plackett_luce": Objective(**_RANKINGS, loss=_ranking_loss(losses.plackett_luce)),
    "orm": Objective("orm", "token", _encode_outcome, {"input_ids": [], "completion_mask": [], "label": 0},
                     _collate_outcomes, _outcome_loss, _outcome_units, _outcome_records, _outcome_summary,
                     _completion_end, _last_token_score),
    "prm": Objective("prm", "prm3", _encode_steps, {"input_ids": [], "step_labels": []},
                     _collate_steps, _steps_loss, _steps_units, _steps_records, _steps_summary,
                     _step_ends, _step_score),
}


# ---------------------------------------------------------------- what the stages call


def encode_row(row: dict, objective: str, tokenizer, template, max_len: int) -> dict:
    """A validated row of the objective's kind → the token columns its loss needs; a row that cannot be
    encoded is a ``BadRecord`` naming its file and line."""
    try:
        return OBJECTIVES[objective].encode(row, objective, tokenizer, template, max_len)
    except BadRecord:
        raise
    except (ValueError, chat.TemplateError) as e:
        raise BadRecord(*_where(row), "prompt", str(e)) from None


def for_checkpoint(config) -> str:
    """The objective a saved reward model (its HF config) is scored as: its head says which; the scalar
    objectives all read one reward per sequence, so ``bt`` stands for them."""
    token_head = "TokenClassification" in " ".join(config.architectures or [])
    head = ("prm3" if config.num_labels == 3 else "token") if token_head else "scalar"
    return next(name for name, o in OBJECTIVES.items() if o.head == head)


def collate(rows: list[dict], objective: str, pad_id: int, packing: bool = False) -> dict:
    """A micro-batch: every sequence of its rows (a pair's chosen and rejected, a ranking's K completions)
    in one forward pass, padded or packed (``pack_rows``)."""
    return OBJECTIVES[objective].collate(rows, pad_id, packing)


def scores(model, batch: dict, objective: str) -> torch.Tensor:
    """Rewards in the objective's shape: [2, B] pairs, [B, K] rankings, token logits otherwise."""
    o = OBJECTIVES[objective]
    r = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    if o.head != "scalar":
        return r
    return r.view(2, -1) if o.row_kind == "pairwise" else r.view(batch["ranking"].size(0), -1)


def loss(objective: str, out: torch.Tensor, batch: dict, center_coef: float = 0.0):
    """(loss summed over the batch's units, number of units) for the train step's global normalisation."""
    o = OBJECTIVES[objective]
    n = o.units(batch)
    return o.loss(out, batch, center_coef) * n, torch.tensor(n)
