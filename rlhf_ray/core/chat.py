"""Chat rendering and prompt masking, pure (no Ray, no vLLM).

Trained spans come from the template's ``{% generation %}`` marks where it has them (TRL's
``*_training.jinja``; the character spans transformers' ``return_assistant_tokens_mask`` uses), else from
token counts of conversation prefixes: the tokens of ``render(messages[:i], add_generation_prompt=True)``
are the prompt of assistant turn ``i`` and the tokens of ``render(messages[:i + 1])`` end it. Nothing
searches the rendered string.

Reasoning (``reasoning_content`` on an assistant message) is the template's to render: kept where it
writes it (Qwen3: the turns after the last user message, i.e. the final turn), dropped where it drops it
(earlier turns), exactly as at inference. A template that never writes it is refused, not silently
trained without it. A think block the template writes into a turn without reasoning (Qwen3's empty
``<think>\n\n</think>\n\n``) is trained as part of the turn, by choice: the generation prompt ends
before it, so at inference the model writes it itself, and TRL's ``qwen3_training`` trains it the same way.

Every rendered row is checked: each trained span must be an assistant turn's content plus its end
token, one span per trained turn; otherwise ``render`` raises ``TemplateError`` (the row is refused, or
quarantined and counted), never returns a wrong mask.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import jinja2

IGNORE_INDEX = -100
MaskStrategy = Literal["all_assistant", "final_turn"]
MASK_STRATEGIES = ("all_assistant", "final_turn")
GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")

# The seed's formats. Each gives the assistant header as the generation prompt.
BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '</s>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "tulu": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ '<|assistant|>\\n' + m['content'] + '<|endoftext|>' + ('' if loop.last else '\\n') }}"
        "{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
}
# Markers each built-in template needs as single special tokens (added to tokenizers that lack them).
BUILTIN_SPECIAL_TOKENS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "zephyr": ["<|system|>", "<|user|>", "<|assistant|>", "</s>"],
    "tulu": ["<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"],
}


class TemplateError(ValueError):
    """The template cannot mask this conversation (not prefix-preserving, no template, ...)."""


@dataclass(frozen=True)
class Rendered:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def resolve_template(tokenizer, template: str | None = None) -> str:
    """Jinja source for ``template``: a built-in name, a ``.jinja`` path, or None for the tokenizer's own."""
    if template is None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                f"name one of {sorted(BUILTIN_TEMPLATES)} or a .jinja file"
            )
        return tokenizer.chat_template
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    if template.endswith(".jinja"):
        if not os.path.isfile(template):
            raise TemplateError(f"chat template file not found: {template}")
        with open(template, encoding="utf-8") as f:
            return f.read()
    shipped = trl_templates()
    if template in shipped:
        with open(shipped[template], encoding="utf-8") as f:
            return f.read()
    raise TemplateError(f"unknown chat template {template!r}: use {sorted(BUILTIN_TEMPLATES)}, a .jinja path"
                        + (f" or a template trl ships ({', '.join(sorted(shipped))})" if shipped else ""))


def trl_templates() -> dict[str, str]:
    """The chat templates the ``trl`` package ships, by name (``qwen3``, ``qwen3_training``, ...): the
    ``_training`` ones carry ``{% generation %}`` marks. Empty when trl is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = os.path.join(spec.submodule_search_locations[0], "chat_templates")
    if not os.path.isdir(folder):
        return {}
    return {f[: -len(".jinja")]: os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jinja")}


def add_template_tokens(tokenizer, template: str | None) -> int:
    """Make a built-in template's markers single special tokens; returns how many were added
    (resize the model's embeddings by that much)."""
    if template not in BUILTIN_SPECIAL_TOKENS:
        return 0
    vocab = tokenizer.get_vocab()
    missing = [t for t in BUILTIN_SPECIAL_TOKENS[template] if t not in vocab]
    if not missing:
        return 0
    return tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


class ControlTokenError(TemplateError):
    """Message ``index``'s text holds a control token's string."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def control_tokens(tokenizer) -> list[str]:
    """Every special or added token's string (``<|im_start|>``, and SmolLM2's ``<file_sep>``,
    ``<jupyter_code>``, ...), longest first: typed into a message, the tokenizer would read it as that token."""
    added = (t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values())
    return sorted({t for t in (*added, *tokenizer.all_special_tokens) if len(t) > 1}, key=len, reverse=True)


def check_text(messages: Sequence[dict], tokens: Sequence[str]) -> None:
    """Text stays text, one policy in every stage (SFT, reward data, prompts, serving): a message whose
    content holds one of ``tokens`` (``control_tokens``) is refused, naming the message and the token,
    never rendered with the string turned into structure."""
    for i, m in enumerate(messages):
        content = m.get("content") or ""
        found = next((t for t in tokens if t in content), None)
        if found:
            raise ControlTokenError(f"messages[{i}].content: holds the control token {found!r} (typed control "
                                    f"tokens are refused: the tokenizer would read them as structure)", i)


def render_text(messages: Sequence[dict], tokenizer, template: str | None = None,
                add_generation_prompt: bool = False, **template_kwargs) -> str:
    check_text(messages, control_tokens(tokenizer))
    return tokenizer.apply_chat_template(
        list(messages), chat_template=resolve_template(tokenizer, template), tokenize=False,
        add_generation_prompt=add_generation_prompt, **template_kwargs,
    )


def tokenize(text: str, tokenizer, first: bool = True) -> list[int]:
    """Tokens of rendered text with exactly one BOS where the model expects one.

    Templates usually write the BOS themselves, so the tokenizer must not add another; a tokenizer that
    adds a BOS by default but whose template does not write it gets one prepended to the first piece.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    bos = tokenizer.bos_token_id
    if first and bos is not None and _adds_bos(tokenizer) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _adds_bos(tokenizer) -> bool:
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    turn_starts: list[int]   # token index where each assistant turn's generation begins
    turn_chars: list[int]    # the same boundaries as character offsets in the rendered text


def _pieces(text: str, cuts: list[int], tokenizer) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """Tokens of ``text`` tokenized piece by piece between ``cuts``: ids, character offsets, and the
    token index where each cut falls."""
    ids, offsets, starts = [], [], []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        if a > 0:
            starts.append(len(ids))
        piece = tokenize(text[a:b], tokenizer, first=a == 0)
        spans = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] \
            if b > a else []
        offsets += [(0, 0)] * (len(piece) - len(spans)) + [(a + x, a + y) for x, y in spans]  # a BOS added first
        ids += piece
    return ids, offsets, starts


def _encode(messages, tokenizer, template, add_generation_prompt, **kw) -> _Encoded:
    """Tokenize the rendering in pieces cut where each assistant turn begins.

    Cutting there makes the tokens before a turn exactly ``render_prompt`` of the messages before it
    (BPE merges never cross into the answer), so training sees the prompt that inference sends.
    """
    text = render_text(messages, tokenizer, template, add_generation_prompt, **kw)
    cuts = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render_text(messages[:i], tokenizer, template, True, **kw) if i else ""
        if not text.startswith(prompt):
            raise TemplateError(
                f"the generation prompt before message {i} is not a prefix of the full rendering: "
                "the template renders earlier turns differently once later turns exist"
            )
        cuts.append(len(prompt))
    ids, _, starts = _pieces(text, cuts, tokenizer)
    return _Encoded(ids, starts, cuts)


def render_prompt(messages: Sequence[dict], tokenizer, template: str | None = None, **template_kwargs) -> list[int]:
    """Generation-prompt mode: the exact tokens that training used as the prompt of the next assistant turn."""
    check_text(messages, control_tokens(tokenizer))
    return _encode(messages, tokenizer, template, True, **template_kwargs).ids


def render(messages: Sequence[dict], tokenizer, mask: MaskStrategy = "all_assistant",
           template: str | None = None, **template_kwargs) -> Rendered:
    """Tokens of the whole conversation and labels that train only the chosen assistant turns.

    Each trained span starts after the assistant header (the generation prompt, given at inference)
    and ends with the turn's end-of-turn token; separator whitespace the template writes after that
    token is not trained, since generation stops at the end token. ``input_ids`` do not depend on ``mask``.
    """
    check_text(messages, control_tokens(tokenizer))
    rendered = _render(messages, tokenizer, mask, template, **template_kwargs)
    # Every row, not only the preflight's first ones: a template that rewrites earlier turns once later
    # ones exist (Qwen3 adds a think block only to the final turn) leaves those turns no span, and a
    # multi-turn row deep in a file would otherwise train its final turn alone without a word.
    problems = _span_problems(messages, rendered, tokenizer, mask)
    if problems:
        raise TemplateError(f"{problems[0]}; {_fix(mask)}")
    return rendered


def _fix(mask: MaskStrategy) -> str:
    if mask == "all_assistant":
        return ("use a template that keeps earlier turns as they were (or a training template with "
                "{% generation %} marks, e.g. trl's qwen3_training), or mask: final_turn")
    return "fix the template so that an assistant turn renders as its content plus one end token"


def _render(messages, tokenizer, mask, template, **template_kwargs) -> Rendered:
    """``render`` without its check of the spans (the doctor reports them instead)."""
    if mask not in MASK_STRATEGIES:
        raise ValueError(f"mask must be one of {MASK_STRATEGIES}, got {mask!r}")
    source = resolve_template(tokenizer, template)
    _check_reasoning(messages, source)
    if GENERATION_MARK.search(source):
        return _render_marked(messages, tokenizer, mask, template, source, **template_kwargs)
    enc = _encode(messages, tokenizer, template, False, **template_kwargs)
    labels = [IGNORE_INDEX] * len(enc.ids)
    for start, end in _assistant_spans(messages, tokenizer, mask, template, enc, **template_kwargs):
        labels[start:end] = enc.ids[start:end]
    return Rendered(enc.ids, labels)


def _render_marked(messages, tokenizer, mask, template, source: str, **kw) -> Rendered:
    """The template's ``{% generation %}`` blocks are the trained spans (the final turn: the last run of
    adjacent blocks, as Phi-3 marks its closing EOS apart). Tokenized in pieces cut where each block
    begins, so that no BPE merge crosses into a trained span."""
    text = render_text(messages, tokenizer, template, **kw)
    blocks = []
    for a, b in _marked_blocks(messages, tokenizer, source, text, **kw):
        if blocks and blocks[-1][1] == a:
            blocks[-1] = (blocks[-1][0], b)
        elif b > a:
            blocks.append((a, b))
    if mask == "final_turn":
        blocks = blocks[-1:]
    ids, offsets, _ = _pieces(text, sorted({a for a, _ in blocks} - {0}), tokenizer)
    # A token is trained when it overlaps a block, as transformers' mask counts it.
    labels = [t if any(x < b and y > a for a, b in blocks) else IGNORE_INDEX for t, (x, y) in zip(ids, offsets)]
    return Rendered(ids, labels)


def _marked_blocks(messages, tokenizer, source: str, text: str, **kw) -> list[tuple[int, int]]:
    """Character spans of the template's ``{% generation %}`` blocks in ``text`` (transformers' own
    renderer, with the variables ``apply_chat_template`` gives it)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, blocks = render_jinja_template([list(messages)], chat_template=source, return_assistant_tokens_mask=True,
                                             **{**tokenizer.special_tokens_map, **kw})
    if rendered[0] != text:
        raise TemplateError("the template renders differently for its generation marks than for training")
    return [tuple(b) for b in blocks[0]]


def _check_reasoning(messages, source: str) -> None:
    if any(m.get("reasoning_content") for m in messages) and "reasoning_content" not in source:
        raise TemplateError("messages carry reasoning_content but the chat template never writes it, so it "
                            "would not be trained: use the model's own template (e.g. Qwen3's) or put the "
                            "reasoning into content as <think>...</think>")


def _assistant_spans(messages, tokenizer, mask, template, enc: _Encoded, **kw) -> list[tuple[int, int]]:
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    bounds = enc.turn_starts[1:] + [len(enc.ids)]
    spans = []
    for k, i in enumerate(turns):
        if mask == "final_turn" and k != len(turns) - 1:
            continue
        # The turn as written when it is the last message: what generation produces for it.
        alone = render_text(messages[: i + 1], tokenizer, template, **kw)[enc.turn_chars[k]:]
        start = enc.turn_starts[k]
        length = _turn_length(enc.ids[start:bounds[k]], tokenize(alone, tokenizer, first=False), special, tokenizer)
        spans.append((start, start + length))
    return spans


def _turn_length(segment: list[int], alone: list[int], special: set[int], tokenizer) -> int:
    """How many tokens of ``segment`` (from the turn's start to the next turn's) the turn spans.

    Where the template writes a turn the same whether or not it is the last, ``alone`` is a prefix of
    ``segment``. Otherwise (gpt-oss writes ``<|end|>`` instead of ``<|return|>`` mid-conversation,
    Phi-3 drops the final EOS) keep the shared tokens and, if they lack an end token, the segment's
    next special token, which replaces it.
    """
    shared = _common_prefix(segment, alone)
    end = _trim_separator(segment, 0, shared, special, tokenizer)
    if shared < len(alone) and not (end > 0 and segment[end - 1] in special):
        if shared < len(segment) and segment[shared] in special:
            end = shared + 1
    return end


def _trim_separator(ids: list[int], start: int, end: int, special: set[int], tokenizer) -> int:
    """Drop tokens after the span's last special token when they only separate turns (whitespace)."""
    last = max((j for j in range(start, end) if ids[j] in special), default=None)
    if last is None or tokenizer.decode(ids[last + 1:end], skip_special_tokens=False).strip():
        return end
    return last + 1


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    for j in range(n):
        if a[j] != b[j]:
            return j
    return n


@dataclass
class TruncationStats:
    truncated: int = 0
    dropped_no_trained_tokens: int = 0


def truncate(rendered: Rendered, max_seq_len: int, stats: TruncationStats | None = None) -> Rendered | None:
    """Keep the first ``max_seq_len`` tokens; None (counted in ``stats``) when nothing trained is left."""
    if len(rendered.input_ids) > max_seq_len:
        rendered = Rendered(rendered.input_ids[:max_seq_len], rendered.labels[:max_seq_len])
        if stats is not None:
            stats.truncated += 1
    if rendered.num_trained == 0:
        if stats is not None:
            stats.dropped_no_trained_tokens += 1
        return None
    return rendered


def end_of_turn_ids(tokenizer, template: str | None = None, **template_kwargs) -> list[int]:
    """The token(s) a trained assistant turn ends with: the stop tokens for generation."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}]
    ends = set()
    for n in (2, 4):
        r = render(probe[:n], tokenizer, "final_turn", template, **template_kwargs)
        trained = [t for t in r.labels if t != IGNORE_INDEX]
        ends.add(trained[-1])
    return sorted(ends)


@dataclass
class DoctorReport:
    """What the mask doctor found on a template and a set of conversations."""
    template: str
    conversations: int = 0
    prefix_violations: list[str] = field(default_factory=list)
    span_mismatches: list[str] = field(default_factory=list)
    double_bos: int = 0
    truncation: TruncationStats = field(default_factory=TruncationStats)
    end_tokens: list[str] = field(default_factory=list)

    @property
    def prefix_preserving(self) -> bool:
        return not self.prefix_violations

    @property
    def ok(self) -> bool:
        return not (self.span_mismatches or self.double_bos or self.truncation.dropped_no_trained_tokens)

    def summary(self) -> str:
        lines = [
            f"template: {self.template}",
            f"conversations checked: {self.conversations}",
            f"prefix-preserving: {'yes' if self.prefix_preserving else 'NO'}",
            *[f"  - {v}" for v in self.prefix_violations[:5]],
            f"end-of-turn token(s): {', '.join(self.end_tokens) or '?'}",
            f"trained spans = content + end token: {'yes' if not self.span_mismatches else 'NO'}",
            *[f"  - {v}" for v in self.span_mismatches[:5]],
            f"double BOS: {self.double_bos}",
            f"truncated: {self.truncation.truncated}, "
            f"left with zero trained tokens: {self.truncation.dropped_no_trained_tokens}",
        ]
        return "\n".join(lines)


def doctor(conversations: Sequence[Sequence[dict]], tokenizer, template: str | None = None,
           mask: MaskStrategy = "all_assistant", max_seq_len: int | None = None,
           **template_kwargs) -> DoctorReport:
    """Check a template on real conversations: prefix property, span contents, BOS, truncation."""
    report = DoctorReport(template=template or getattr(tokenizer, "name_or_path", "tokenizer's own"))
    try:
        report.end_tokens = [tokenizer.convert_ids_to_tokens(t) for t in
                             end_of_turn_ids(tokenizer, template, **template_kwargs)]
    except TemplateError as e:
        report.end_tokens = [f"? ({e})"]
    for n, messages in enumerate(conversations):
        report.conversations += 1
        report.prefix_violations += [f"conversation {n}: {v}" for v in
                                     _prefix_violations(messages, tokenizer, template, **template_kwargs)]
        try:
            rendered = _render(messages, tokenizer, mask, template, **template_kwargs)
        except TemplateError as e:
            report.span_mismatches.append(f"conversation {n}: {e}")
            continue
        bos = tokenizer.bos_token_id
        if bos is not None and rendered.input_ids[:2] == [bos, bos]:
            report.double_bos += 1
        report.span_mismatches += [f"conversation {n}: {v}" for v in _span_problems(messages, rendered, tokenizer, mask)]
        if max_seq_len is not None:
            truncate(rendered, max_seq_len, report.truncation)
    return report


def preflight(examples: Sequence[tuple[str, Sequence[dict]]], tokenizer, template: str | None = None,
              mask: MaskStrategy = "all_assistant", **template_kwargs) -> str | None:
    """The doctor's verdict on ``(where, messages)`` examples, as the training jobs enforce it: None when
    the template masks them right, else one line naming the template, the first bad example and the fix.

    Refused: a template that is not prefix-preserving under ``all_assistant`` (it rewrites earlier turns,
    as Qwen3 drops their reasoning, so prefix counts would train the wrong spans), a trained span that is
    not the assistant content plus its end token, a double BOS.
    """
    name = template or getattr(tokenizer, "name_or_path", None) or "the tokenizer's own"
    for where, messages in examples:
        report = doctor([messages], tokenizer, template, mask, **template_kwargs)
        problems = ((report.prefix_violations if mask == "all_assistant" else []) + report.span_mismatches
                    + (["the rendering starts with two BOS tokens"] if report.double_bos else []))
        if problems:
            return (f"{where}: chat template {name} with mask={mask}: "
                    f"{problems[0].replace('conversation 0: ', '')}; {_fix(mask)}")
    return None


def _prefix_violations(messages, tokenizer, template, **kw) -> list[str]:
    out = []
    for k in range(1, len(messages)):
        try:
            shorter = render_text(messages[:k], tokenizer, template, **kw)
        except jinja2.TemplateError:  # a part no turn is trained on alone (Qwen3 needs a user query)
            continue
        longer = render_text(messages[: k + 1], tokenizer, template, **kw)
        if not longer.startswith(shorter):
            at = _common_prefix(shorter, longer)
            out.append(f"turns 1..{k} are not a prefix of turns 1..{k + 1}: from character {at}, "
                       f"{shorter[at:at + 20]!r} becomes {longer[at:at + 20]!r}")
    return out


def _span_problems(messages, rendered: Rendered, tokenizer, mask) -> list[str]:
    spans = _label_runs(rendered.labels)
    turns = [m for m in messages if m["role"] == "assistant"]
    if mask == "final_turn":
        turns = turns[-1:]
    if len(spans) != len(turns):
        return [f"{len(spans)} trained spans for {len(turns)} assistant turns (the template renders a turn "
                f"differently once later turns follow it)"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    problems = []
    for (start, end), turn in zip(spans, turns):
        ids = rendered.input_ids[start:end]
        # Channel names (gpt-oss) may precede the content; only special tokens and whitespace follow it
        # (a generation mark may close after the separator the template writes).
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        last = max((j for j, t in enumerate(ids) if t in special), default=None)
        if last is None or tokenizer.decode(ids[last + 1:], skip_special_tokens=False).strip() \
                or not text.endswith(turn["content"].strip()):
            problems.append(f"span {tokenizer.decode(ids, skip_special_tokens=False)!r} is not "
                            f"{turn['content'][:40]!r}... + an end token")
    return problems


def _label_runs(labels: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for j, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = j
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, j))
            start = None
    return runs


def show_mask(rendered: Rendered, tokenizer, color: bool = True) -> str:
    """Tokens with trained ones in green and masked ones dimmed (brackets when color is off)."""
    out = []
    for tok, label in zip(rendered.input_ids, rendered.labels):
        text = tokenizer.decode([tok], skip_special_tokens=False)
        trained = label != IGNORE_INDEX
        if color:
            out.append(f"\033[{'42;30' if trained else '2'}m{text}\033[0m")
        else:
            out.append(f"[{text}]" if trained else text)
    return "".join(out)
