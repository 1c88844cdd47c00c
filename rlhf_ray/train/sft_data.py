"""SFT examples: conversation rows → token ids + labels, then micro-batches, packed or padded. Pure torch."""
from __future__ import annotations

from typing import Literal, Sequence

import torch

from rlhf_ray.core import chat
from rlhf_ray.core.chat import IGNORE_INDEX
from rlhf_ray.core.schema import BadRecord

Overlength = Literal["truncate", "reject"]


def _where(row: dict) -> tuple[str, int | str]:
    return row.get("_file", "<rows>"), row.get("_line", "?")


def encode_sft_row(row: dict, tokenizer, max_seq_len: int, mask: chat.MaskStrategy = "all_assistant",
                   template: str | None = None, overlength: Overlength = "truncate") -> dict:
    """Token ids and labels of one conversation row.

    Over ``max_seq_len``: ``reject`` raises ``BadRecord``; ``truncate`` keeps the beginning and
    marks the row ``truncated``. A row left with no trained token raises ``BadRecord`` (it would
    train nothing); the caller quarantines or fails on it, it is never dropped silently.
    """
    rendered = chat.render(row["messages"], tokenizer, mask, template)
    n = len(rendered.input_ids)
    if n > max_seq_len and overlength == "reject":
        raise BadRecord(*_where(row), "messages", f"{n} tokens, over max_seq_len={max_seq_len}")
    kept = chat.truncate(rendered, max_seq_len)
    if kept is None:
        raise BadRecord(*_where(row), "messages",
                        f"no trained tokens left after truncation to max_seq_len={max_seq_len} ({n} tokens)")
    return {"input_ids": kept.input_ids, "labels": kept.labels, "truncated": n > max_seq_len}


def pack(examples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Padding-free packing: all examples in one row; positions restart per example and attention
    never crosses an example boundary (block-diagonal causal mask)."""
    ids = [t for e in examples for t in e["input_ids"]]
    labels = []
    for e in examples:
        # The first token of an example must not be predicted from the previous example.
        labels += [IGNORE_INDEX] + list(e["labels"][1:])
    positions = [p for e in examples for p in range(len(e["input_ids"]))]
    lengths = [len(e["input_ids"]) for e in examples]
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "attention_mask": block_causal_mask(lengths),
    }


def block_causal_mask(lengths: Sequence[int]) -> torch.Tensor:
    """[1, 1, T, T] boolean mask: True where a token may attend (same example, not in the future)."""
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.ones(len(doc), len(doc), dtype=torch.bool).tril()
    return (causal & (doc[:, None] == doc[None, :]))[None, None]


def pad(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch for models or attention kernels without packing support."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attention[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def collate(examples: Sequence[dict], packing: bool, pad_id: int) -> dict[str, torch.Tensor]:
    return pack(examples) if packing else pad(examples, pad_id)


def trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens whose prediction is trained (labels shifted by one, as the loss sees them)."""
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())


def padding_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch["attention_mask"]
    return 0 if mask.dim() == 4 else int((mask == 0).sum())
