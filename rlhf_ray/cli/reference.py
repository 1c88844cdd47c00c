"""The config reference, generated from the section dataclasses: every key's type, default and the comment
beside it in ``config.py`` (what ``--help`` prints and docs/config-reference.md holds)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from rlhf_ray import config

_FIELD = re.compile(r"^    (\w+): (.+?)(?:  +# (.*))?$")
_COMMENT = re.compile(r"^    # ?(.*)$")


def _comments(cls) -> dict[str, str]:
    """Each field's comment: the ``# ...`` lines above it and the one beside it, joined."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        if m := _COMMENT.match(line):
            above.append(m.group(1))
        elif m := _FIELD.match(line):
            out[m.group(1)] = " ".join([*above, m.group(3) or ""]).strip()
            above = []
        else:
            above = []
    return out


def _type(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "list"
    if dataclasses.is_dataclass(tp):
        return "section"
    names = [a.__name__ if a is not type(None) else "null" for a in typing.get_args(tp)] or [getattr(tp, "__name__", str(tp))]
    return " | ".join(names)


def _default(f: dataclasses.Field):
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, tuple):
        return list(value)
    return value


def rows(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, comment) for every key of section ``cls``, nested sections flattened."""
    hints, comments, out = typing.get_type_hints(cls), _comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            default = _default(f)
            nested = rows(tp, f"{prefix}{f.name}.")
            # A section whose defaults differ from its class's (reward.train) shows its own.
            out += [(k, t, repr(_at(default, k.removeprefix(f"{prefix}{f.name}."))) if default is not None else d, c)
                    for k, t, d, c in nested]
            continue
        rule = getattr(cls, "RULES", {}).get(f.name)
        comment = comments.get(f.name, "")
        if rule:
            comment = f"{comment}; must be {rule[1]}" if comment else f"must be {rule[1]}"
        out.append((prefix + f.name, _type(tp), repr(_default(f)), comment))
    return out


def _at(section, dotted: str):
    for part in dotted.split("."):
        section = getattr(section, part)
    return list(section) if isinstance(section, tuple) else section


def text(sections: list[str]) -> str:
    """The keys of these top-level sections (``""``: the top-level keys), one per line, for ``--help``."""
    lines = []
    for key, tp, default, comment in rows(config.PipelineConfig):
        top = key.split(".")[0] if "." in key else ""
        if top in sections:
            lines.append(f"  {key} ({tp}, default {default})" + (f": {comment}" if comment else ""))
    return "\n".join(lines)


def markdown() -> str:
    """docs/config-reference.md: every key of the pipeline config, by section."""
    out = ["# Config reference", "",
           "Generated from `rlhf_ray/config.py` by `rlhf-ray config reference` (a test keeps this file equal to",
           "it). Override any key on the command line with its dotted name: `rlhf-ray sft tiny sft.train.lr=1e-4`.",
           ""]
    section = None
    for key, tp, default, comment in rows(config.PipelineConfig):
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            out += ["", f"## {top}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        cell = comment.replace("|", "\\|")
        out.append(f"| `{key}` | {tp.replace('|', '/')} | `{default}` | {cell} |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"
