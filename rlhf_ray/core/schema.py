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


_MESSAGE_KEYS = ("role", "content", "reasoning_content")


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
        dropped = sorted(k for k, v in m.items() if k not in _MESSAGE_KEYS and v is not None)
        if dropped:  # tool calls and the like: refused rather than trained on a conversation without them
            raise RowError(f"{where}.{dropped[0]}", "not supported: a message holds role, content and (assistant) "
                                                     "reasoning_content; tool calls are not rendered yet")
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
    if row.get("tools"):  # TRL's tool-calling rows: the template would have to render the tools' schemas
        raise RowError("tools", "not supported: tool definitions are not rendered yet (the row would train without them)")
    return VALIDATORS[kind](from_trl(kind, row))


def from_trl(kind: str, row: dict) -> dict:
    """TRL's dataset shapes (its "dataset formats" page), conversational or standard, as the row kinds here
    read them; a shape a kind cannot train on is refused naming the column, never dropped:

    - sft: ``messages``; prompt-completion (``prompt`` + ``completion``: one conversation, the completion
      its assistant turn); language modelling (``text``) is refused: SFT here trains assistant turns
      through the chat template.
    - pairwise: explicit prompt; implicit prompt (``chosen`` and ``rejected`` whole conversations, the
      prompt their shared first turns, as TRL extracts it).
    - orm: unpaired preference (``prompt``, ``completion``, ``label``).
    - prm: stepwise supervision (``labels`` true/false become +1/-1).
    - prompt: prompt-only.
    Strings are plain text: a prompt string is the user's turn, a completion string the assistant's.
    """
    if kind == "sft" and "messages" not in row:
        if "prompt" in row and "completion" in row:
            prompt = _messages(row["prompt"], "prompt", last="user")
            completion = _messages(row["completion"], "completion", roles=("assistant",))
            return {**{k: v for k, v in row.items() if k not in ("prompt", "completion")},
                    "messages": prompt + completion}
        if "text" in row:
            raise RowError("text", "language-modelling rows (plain text, no roles) are not supported: SFT trains "
                                   "assistant turns through the chat template; give messages or prompt + completion")
    if kind == "pairwise" and "prompt" not in row and isinstance(row.get("chosen"), list) \
            and isinstance(row.get("rejected"), list):
        return {**row, **_split_implicit_prompt(row["chosen"], row["rejected"])}
    if kind == "pairwise" and "prompt" not in row and isinstance(row.get("chosen"), str):
        raise RowError("prompt", "missing: plain-text preference rows need their prompt in its own column (an "
                                 "implicit prompt is read from conversations only)")
    if kind == "prm" and isinstance(row.get("labels"), list) and row["labels"] \
            and all(isinstance(x, bool) for x in row["labels"]):
        return {**row, "labels": [1 if x else -1 for x in row["labels"]]}
    return row


def _split_implicit_prompt(chosen: list, rejected: list) -> dict:
    """The messages both conversations share, up to the last user turn before they part, are the prompt."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and not (isinstance(chosen[shared - 1], dict) and chosen[shared - 1].get("role") == "user"):
        shared -= 1  # an assistant turn both share belongs to the completions' side of the split
    if not shared:
        raise RowError("chosen", "an implicit prompt needs chosen and rejected to share their first turns, up to a "
                                 "user turn")
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


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
