"""Row contracts for every artifact (TRL-compatible) and their validation.

``validate(kind, row)`` returns the row normalised (plain-string completions become one assistant
message) or raises ``RowError`` naming the field. Readers add the file and line (``BadRecord``).
"""
from __future__ import annotations

import math
from typing import Any, TypedDict

ROLES = ("system", "user", "assistant", "tool")


class Message(TypedDict, total=False):
    role: str
    content: str
    reasoning_content: str  # an assistant turn's reasoning; the chat template decides where it is written


class SFTRow(TypedDict):
    messages: list[Message]


class PairwiseRow(TypedDict, total=False):
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float


class KWiseRow(TypedDict):
    prompt: list[Message]
    completions: list[list[Message]]
    ranking: list[int]          # indices into completions, best first


class ORMRow(TypedDict):
    prompt: list[Message]
    completion: list[Message]
    label: bool


class PRMRow(TypedDict):
    prompt: list[Message]
    completions: list[str]      # the solution's steps
    labels: list[int]           # -1 wrong, 0 neutral, +1 correct, one per step


class PromptRow(TypedDict, total=False):
    prompt: list[Message]
    answer: str                 # gold answer, where the task has one


class RowError(ValueError):
    """A row breaks its contract; ``field`` is a path like ``chosen[0].content``."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class BadRecord(ValueError):
    """A bad record located in its file: ``file:line: field: reason``."""

    def __init__(self, file: str, line: int | str, field: str, reason: str):
        super().__init__(f"{file}:{line}: {field}: {reason}")
        self.file, self.line, self.field, self.reason = file, line, field, reason


def _messages(value: Any, field: str, *, last: str | None = None, roles=ROLES) -> list[Message]:
    if isinstance(value, str) and roles == ("assistant",):
        value = [{"role": "assistant", "content": value}]
    elif isinstance(value, str) and last == "user":
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError(field, f"must be a non-empty list of messages, got {_show(value)}")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise RowError(where, f"must be an object with role and content, got {_show(m)}")
        if "role" not in m:
            raise RowError(f"{where}.role", "missing")
        if m["role"] not in roles:
            raise RowError(f"{where}.role", f"unknown role {m['role']!r} (expected one of {', '.join(roles)})")
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"must be a string, got {_show(content)}")
        if not content.strip():
            raise RowError(f"{where}.content", "empty")
        reasoning = m.get("reasoning_content")
        if reasoning is not None and (m["role"] != "assistant" or not isinstance(reasoning, str)):
            raise RowError(f"{where}.reasoning_content", "must be a string on an assistant message")
        out.append({"role": m["role"], "content": content, **({"reasoning_content": reasoning} if reasoning else {})})
    _check_order(out, field)
    if last is not None and out[-1]["role"] != last:
        raise RowError(f"{field}[{len(out) - 1}].role", f"the last message must be {last}, got {out[-1]['role']}")
    return out


def _check_order(messages: list[Message], field: str) -> None:
    """system only first; user and assistant alternate; tool messages answer an assistant turn."""
    prev = None
    for i, m in enumerate(messages):
        role, where = m["role"], f"{field}[{i}].role"
        if role == "system" and i != 0:
            raise RowError(where, "system message after the first position")
        if role == "user" and prev == "user":
            raise RowError(where, "two user messages in a row")
        if role == "assistant" and prev == "assistant":
            raise RowError(where, "two assistant messages in a row")
        if role == "tool" and prev not in ("assistant", "tool"):
            raise RowError(where, "tool message that does not follow an assistant turn")
        prev = role


def _finite(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(field, f"must be a number, got {_show(value)}")
    if not math.isfinite(value):
        raise RowError(field, f"must be finite, got {value}")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_sft(row: dict) -> SFTRow:
    messages = _messages(row.get("messages"), "messages", last="assistant")
    return {**row, "messages": messages}


def validate_pairwise(row: dict) -> PairwiseRow:
    prompt = _messages(row.get("prompt"), "prompt", last="user")
    chosen = _messages(row.get("chosen"), "chosen", roles=("assistant",))
    rejected = _messages(row.get("rejected"), "rejected", roles=("assistant",))
    if chosen == rejected:
        raise RowError("rejected", "identical to chosen")
    out = {**row, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    if row.get("margin") is not None:
        out["margin"] = _finite(row["margin"], "margin")
    return out


def validate_kwise(row: dict) -> KWiseRow:
    prompt = _messages(row.get("prompt"), "prompt", last="user")
    raw = row.get("completions")
    if not isinstance(raw, list) or len(raw) < 2:
        raise RowError("completions", f"must list at least 2 completions, got {_show(raw)}")
    completions = [_messages(c, f"completions[{i}]", roles=("assistant",)) for i, c in enumerate(raw)]
    ranking = row.get("ranking")
    if not isinstance(ranking, list) or sorted(r for r in ranking if isinstance(r, int)) != list(range(len(raw))):
        raise RowError("ranking", f"must be a permutation of 0..{len(raw) - 1} (best first), got {_show(ranking)}")
    return {**row, "prompt": prompt, "completions": completions, "ranking": ranking}


def validate_orm(row: dict) -> ORMRow:
    prompt = _messages(row.get("prompt"), "prompt", last="user")
    completion = _messages(row.get("completion"), "completion", roles=("assistant",))
    label = row.get("label")
    if label not in (True, False, 0, 1) or isinstance(label, float):
        raise RowError("label", f"must be true/false or 0/1, got {_show(label)}")
    return {**row, "prompt": prompt, "completion": completion, "label": bool(label)}


def validate_prm(row: dict) -> PRMRow:
    prompt = _messages(row.get("prompt"), "prompt", last="user")
    steps, labels = row.get("completions"), row.get("labels")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise RowError("completions", f"must be a non-empty list of non-empty step strings, got {_show(steps)}")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise RowError("labels", f"must give one label per step ({len(steps)}), got {_show(labels)}")
    for i, label in enumerate(labels):
        if label not in (-1, 0, 1) or isinstance(label, (bool, float)):
            raise RowError(f"labels[{i}]", f"must be -1, 0 or 1, got {_show(label)}")
    return {**row, "prompt": prompt, "completions": steps, "labels": labels}


def validate_prompt(row: dict) -> PromptRow:
    return {**row, "prompt": _messages(row.get("prompt"), "prompt", last="user")}


VALIDATORS = {
    "sft": validate_sft, "pairwise": validate_pairwise, "kwise": validate_kwise,
    "orm": validate_orm, "prm": validate_prm, "prompt": validate_prompt,
}


def validate(kind: str, row: Any) -> dict:
    if kind not in VALIDATORS:
        raise ValueError(f"unknown row kind {kind!r}: one of {sorted(VALIDATORS)}")
    if not isinstance(row, dict):
        raise RowError("<record>", f"must be a JSON object, got {_show(row)}")
    _check_numbers(row, "")
    return VALIDATORS[kind](row)


def _check_numbers(value: Any, path: str) -> None:
    """NaN and inf anywhere in a row are errors (Python's json accepts them silently)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError(path or "<record>", f"must be finite, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{path}[{i}]")
