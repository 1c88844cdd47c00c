"""Loading a config: YAML and ``key=value`` overrides (dotted keys, values parsed as YAML scalars) into the
section dataclasses of ``config``, with types coerced, unknown keys refused, every section's rules checked,
relative paths made absolute and ``task`` checkers resolved; and the hash manifests record."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from rlhf_ray import tasks
from rlhf_ray.config import ConfigError, PipelineConfig


def load(cls, path: str | Path | None = None, overrides: Sequence[str] = (), base: str | Path | None = None):
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides, with every relative path
    in it made absolute against ``base`` (default: the current directory, where the job started)."""
    data: dict = {}
    source = "overrides"
    if path is not None:
        path = config_path(path)
        source = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.load(f, _NoDuplicates) or {}
        except IsADirectoryError:
            raise ConfigError(f"{path}: a folder, not a config file") from None
        except yaml.YAMLError as e:  # one line: the file's line and what is wrong there
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML: "
                              f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.load(raw, _NoDuplicates) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); quote it, "
                              f"e.g. {key}='...'") from None
        _set_dotted(data, key.strip(), value)
    cfg = absolute_paths(build(cls, data, source), Path(base) if base is not None else Path.cwd())
    if isinstance(cfg, PipelineConfig):
        cfg = task_checkers(cfg, source)
        _check_paths(cfg, source)
        _check_functions(cfg, source)
    return cfg


class _NoDuplicates(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_functions(cfg: "PipelineConfig", where: str) -> None:
    """Every reward function and adapter the config names imports, before a stage trains for an hour."""
    from rlhf_ray import data
    from rlhf_ray.core import rewards

    for key, spec in (("eval.gold", cfg.eval.gold), ("rs.rule_reward", cfg.rs.rule_reward),
                      ("reward.samples.checker", cfg.reward.samples.checker), ("score.function", cfg.score.function)):
        if spec:
            try:
                rewards.load(spec)
            except ValueError as e:
                raise ConfigError(f"{where}: {key}={spec}: {str(e).removeprefix(f'reward function {spec!r}: ')}") from None
    for key, spec in (("sft.data.adapter", cfg.sft.data.adapter), ("reward.data.adapter", cfg.reward.data.adapter),
                      ("reward.samples.adapter", cfg.reward.samples.adapter), ("generate.adapter", cfg.generate.adapter),
                      ("eval.adapter", cfg.eval.adapter)):
        try:
            data.get_adapter(spec)
        except ValueError as e:
            raise ConfigError(f"{where}: {key}: {e}") from None


def packaged() -> dict[str, Path]:
    """The example configs shipped in the package, by name (``tiny`` is rlhf_ray/configs/tiny.yaml)."""
    folder = Path(__file__).parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def config_path(path: str | Path) -> Path:
    """A config file's path: ``path`` itself, or the example config of that name (``tiny``)."""
    p = Path(path)
    if p.exists():
        return p
    if str(path) in packaged():
        return packaged()[str(path)]
    raise ConfigError(f"config file not found: {path} (or an example config: {', '.join(packaged())})")


def _check_paths(cfg: "PipelineConfig", where: str) -> None:
    """The run folder can be made and the starting models exist, before any stage starts."""
    run_dir = Path(cfg.run_dir)
    if "://" not in cfg.run_dir:
        for parent in [run_dir, *run_dir.parents]:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"{where}: run_dir={cfg.run_dir}: {parent} is a file, not a folder")
    models = (("policy.name", cfg.policy.name), ("reward.model.name", cfg.reward.model.name),
              ("generate.model_dir", cfg.generate.model_dir), ("score.model_dir", cfg.score.model_dir),
              ("eval_rm.model_dir", cfg.eval_rm.model_dir), ("serve.policy", cfg.serve.policy),
              ("serve.reward_model", cfg.serve.reward_model))
    for key, name in models:
        if os.path.isabs(name) and not (Path(name).is_dir() and any(Path(name).glob("*.safetensors"))):
            what = "holds no *.safetensors" if Path(name).is_dir() else "does not exist"
            raise ConfigError(f"{where}: {key}={name}: the folder {what} (use default, a hub id, or a Hugging Face "
                              f"model folder with safetensors)")


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
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING \
                and dataclasses.is_dataclass(hints[name]):
            # A partial section keeps the section's own defaults (RM training differs from SFT's).
            value = _merge(dataclasses.asdict(f.default_factory()), value)
        kwargs[name] = _coerce(hints[name], value, where, prefix + name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key '{prefix}{missing[0]}'")
    built = cls(**kwargs)
    _check(built, where, prefix)
    return built


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


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
            value = [value]  # a scalar where a list is expected is a list of one (train=data.jsonl)
        args = typing.get_args(tp)
        if args and args[-1] is not Ellipsis and len(value) != len(args):  # tuple[int, int]: exactly two
            raise ConfigError(f"{where}: {key} must be a list of {len(args)}, got {list(value)!r}")
        (item,) = args[:1] or (Any,)
        return tuple(_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-3 as a string; any float spelling Python accepts is meant as one.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is dict and isinstance(value, dict):
        return value
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _check(c, where: str, prefix: str) -> None:
    """Section ``c``'s own rules (``RULES`` per key, then ``problems()`` between keys), as one line."""
    for name, (ok, allowed) in getattr(c, "RULES", {}).items():
        value = getattr(c, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise ConfigError(f"{where}: {prefix}{name}={value!r}: must be {allowed}")
    broken = c.problems() if hasattr(c, "problems") else []
    if broken:
        raise ConfigError(f"{where}: {prefix}{broken[0][0]}={broken[0][1]}")


def task_checkers(cfg: "PipelineConfig", where: str) -> "PipelineConfig":
    """``task`` as a checker (eval.gold, reward.samples.checker, rs.rule_reward) names the generated
    task's own, so that ``task.name`` alone switches a run between tasks."""
    own = tasks.TASKS[cfg.task.name].checker if cfg.task.name in tasks.TASKS else None

    def pick(key: str, value: str) -> str:
        if value != "task":
            return value
        if own is None:
            raise ConfigError(f"{where}: {key}=task: task.name={cfg.task.name} generates no task to take the checker "
                              f"from; name one (module:callable)")
        return own

    r = cfg.reward
    return dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, gold=pick("eval.gold", cfg.eval.gold)),
        reward=dataclasses.replace(r, samples=dataclasses.replace(
            r.samples, checker=pick("reward.samples.checker", r.samples.checker))),
        rs=dataclasses.replace(cfg.rs, rule_reward=pick("rs.rule_reward", cfg.rs.rule_reward)))


# ---------------------------------------------------------------- paths

_KEYWORDS = {"model": {"default", "default-rm", "sft"}}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # gpt2, Qwen/Qwen2.5-0.5B


def absolute_paths(cfg, base: Path):
    """``cfg`` with every relative path made absolute against ``base``, so that Ray Train workers, Ray
    Data actors and a ``ray job submit`` driver (whose working directory differs) read the same files.
    Storage URIs, keywords (``default``, ``chatml``) and hub ids are left as they are."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = absolute_paths(value, base)
        elif "path" in f.metadata and isinstance(value, tuple):
            changes[f.name] = tuple(_absolute(v, f.metadata["path"], base) for v in value)
        elif "path" in f.metadata and isinstance(value, str):
            changes[f.name] = _absolute(value, f.metadata["path"], base)
    return dataclasses.replace(cfg, **changes)


def _absolute(value: str, kind: str, base: Path) -> str:
    if not value or "://" in value or value.startswith("hub:") or value in _KEYWORDS.get(kind, ()):
        return value  # a storage URI, a hub dataset (hub:NAME) or a keyword
    if kind == "template" and not value.endswith(".jinja") and "/" not in value:
        return value  # a template's name, not a file
    p = base / Path(value).expanduser()  # an absolute path stays as it is
    # A name that is no folder here but has a hub id's shape (name or org/name) stays a hub id.
    if kind == "model" and not p.exists() and _HUB_ID.match(value):
        return value
    return os.path.normpath(p)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _json_default(o):
    return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)


def plain(cfg):
    """A config (or a dict of sections) as plain JSON values, as manifests record it."""
    return json.loads(json.dumps(cfg, default=_json_default))


def config_hash(cfg) -> str:
    """Stable hash of a config's content, for manifests and resume checks."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]
