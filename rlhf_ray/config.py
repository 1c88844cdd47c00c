"""Frozen dataclass configs loaded from YAML with ``key=value`` overrides.

Unknown keys and wrong types are errors that name the key. Nested sections use dotted keys on the
command line (``train.lr=1e-5``); override values are parsed as YAML scalars.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml


class ConfigError(ValueError):
    pass


def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()):
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides."""
    data: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return build(cls, data, source)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[last] = value


def build(cls, data: dict, where: str = "config", prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {prefix}{unknown[0]!r} (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, where, prefix + name) for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key {prefix}{missing[0]!r}")
    return cls(**kwargs)


def _coerce(tp, value, where: str, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a section (mapping), got {value!r}")
        return build(tp, value, where, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {key} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is dict and isinstance(value, dict):
        return value
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg) -> str:
    """Stable hash of a config's content, for manifests and resume checks."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
