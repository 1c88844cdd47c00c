"""Scoring (prompt, completion) pairs with a trained reward model: length-sorted batches, OOM splitting.

``RewardScorer`` is plain torch; ``score_dataset`` runs it in a Ray Data actor pool.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from rlhf_ray import models
from rlhf_ray.core import chat, objectives
from rlhf_ray.engines.actor_pool import EngineError, PoolActor, check_gpus, objects
from rlhf_ray.engines.vllm_engine import check_engine_kwargs, memory_share


class Scorer(Protocol):
    """What scores candidates: a reward model (transformers or vLLM pooling), an LLM judge or a rule."""
    real: int      # tokens scored so far (0 for scorers that do not batch tokens)
    padding: int   # padding tokens scored so far

    def score(self, prompts: list[list[dict]], completions: list[list[dict]],
              columns: dict | None = None) -> list[float]:
        """One reward per (prompt, completion); ``columns`` is the candidates' batch (numpy columns, such as a
        gold answer), for the scorers that read it."""


def actor_device() -> str:
    """Where a scorer runs: the GPU its actor holds (Ray shows an actor only the GPUs it reserved, so
    ``cuda`` is that one), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class RewardScorer:
    """One score per candidate from any reward-model checkpoint: a sequence-classification RM's scalar; an
    ORM token head's logit at the last completion token (the verifier's final-token prediction, as
    training's AUC reads it); a 3-label PRM's probability that a step is correct, at each step's last
    token (steps: the completion's lines), reduced over the steps by ``prm_reduce`` (min or mean)."""

    def __init__(self, model_dir: str, template: str | None = None, max_len: int = 512, batch_size: int = 16,
                 dtype: str = "float32", threads: int = 0, prm_reduce: str = "min", device: str | None = None):
        from transformers import AutoConfig

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or actor_device())
        self.tokenizer = models.chat_tokenizer(model_dir)
        self.objective = objectives.for_checkpoint(AutoConfig.from_pretrained(models.local_path(model_dir)))
        self.model = models.load_reward_model(model_dir, self.objective, self.tokenizer, dtype).to(self.device).eval()
        self.template, self.max_len, self.batch_size, self.prm_reduce = template, max_len, batch_size, prm_reduce
        self.padding = self.real = 0

    def encode(self, prompt: list[dict], completion: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids and the positions the score is read at (the last completion token; PRM: each step's)."""
        return objectives.OBJECTIVES[self.objective].score_at(prompt, completion, self.tokenizer, self.template,
                                                              self.max_len)

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], completions: list[list[dict]], columns: dict | None = None,
              *, sort: bool = True) -> list[float]:
        return unscored_if_control_tokens(prompts, completions, self.encode, lambda items: self._score(items, sort))

    def _score(self, encoded: list, sort: bool) -> list[float]:
        # Longest first, batched by similar length: padding stays low (the RLHF book's tip).
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0])) if sort else list(range(len(encoded)))
        out = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, s in zip(idx, self._run([encoded[i] for i in idx])):
                out[i] = s
        return out

    def _run(self, items: list[tuple[list[int], int]]) -> list[float]:
        try:
            return self._forward(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
        # Too large a batch: halve it and retry rather than failing the job. Out of the handler, the failed
        # attempt's activations are unreferenced, so the cache can hand their memory back first.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(items) // 2
        return self._run(items[:half]) + self._run(items[half:])

    def _forward(self, items: list[tuple[list[int], int]]) -> list[float]:
        ids, mask = objectives.pad_rows([ids for ids, _ in items], self.tokenizer.pad_token_id)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).cpu()
        self.real += int(mask.sum())
        self.padding += int(mask.numel() - mask.sum())
        read = objectives.OBJECTIVES[self.objective].score
        return [read(out[i], at, self.prm_reduce) for i, (_, at) in enumerate(items)]

    @property
    def padding_fraction(self) -> float:
        return self.padding / max(self.padding + self.real, 1)


class VLLMRewardScorer:
    """A decoder RM checkpoint (``*ForSequenceClassification``, one label) in vLLM's pooling runner: the
    head's raw logit at the last token, the same number ``RewardScorer`` reads. vLLM batches without
    padding."""

    def __init__(self, model_dir: str, template: str | None = None, max_len: int = 512, dtype: str = "float32",
                 gpu_memory_utilization: float = 0.9, engine_kwargs: dict | None = None):
        from transformers import AutoConfig

        from rlhf_ray.engines.vllm_engine import load_llm

        cfg = AutoConfig.from_pretrained(models.local_path(model_dir))
        if getattr(cfg, "rlhf_ray_pooling", None) == "mean" or not (cfg.architectures or [""])[0].endswith(
                "ForSequenceClassification"):
            raise ValueError(f"{model_dir}: vLLM scores decoder *ForSequenceClassification RMs (last-token "
                             f"head); use scorer=rm for {cfg.architectures} with mean pooling or token heads")
        self.tokenizer = models.chat_tokenizer(model_dir)
        self.template, self.max_len = template, max_len
        self.llm = load_llm(model_dir, dtype=dtype, max_model_len=max_len, runner="pooling",
                            gpu_memory_utilization=gpu_memory_utilization, **(engine_kwargs or {}))
        self.padding, self.real = 0, 0

    def score(self, prompts: list[list[dict]], completions: list[list[dict]], columns: dict | None = None) -> list[float]:
        from vllm import PoolingParams

        def classify(ids: list[list[int]]) -> list[float]:
            self.real += sum(map(len, ids))
            # use_activation=False: the raw logit (vLLM applies a sigmoid by default).
            try:
                outs = self.llm.classify([{"prompt_token_ids": x} for x in ids], use_tqdm=False,
                                         pooling_params=PoolingParams(use_activation=False))
            except Exception as e:  # the inputs were encoded: what fails here is the engine
                raise EngineError("vLLM engine failed") from e
            return [float(o.outputs.probs[0]) for o in outs]

        encode = lambda p, c: objectives.encode(p, c, self.tokenizer, self.template, self.max_len)[0]  # noqa: E731
        return unscored_if_control_tokens(prompts, completions, encode, classify)


def unscored_if_control_tokens(prompts: list, completions: list, encode, score) -> list[float]:
    """``score`` over the encoded candidates, NaN (unscored, never picked) for a candidate whose text holds
    a control token (``chat.check_text``: text stays text, the rule every stage applies)."""
    encoded = []
    for p, c in zip(prompts, completions):
        try:
            encoded.append(encode(p, c))
        except chat.ControlTokenError:
            encoded.append(None)
    kept = [i for i, e in enumerate(encoded) if e is not None]
    out = [float("nan")] * len(encoded)
    for i, s in zip(kept, score([encoded[i] for i in kept]) if kept else []):
        out[i] = s
    return out


class FunctionScorer:
    """A rule-based reward (``rlhf_ray.core.rewards`` or a user's ``module:callable``) on each candidate's text,
    given the candidate's row (its gold ``answer`` and other prompt columns)."""

    def __init__(self, function: str):
        from rlhf_ray.core import rewards

        self.spec, self.fn = function, rewards.load_batched(function)  # per sample or TRL's batched form
        self.padding = self.real = 0  # no tokens: the padding report reads zero

    def score(self, prompts: list[list[dict]], completions: list[list[dict]], columns: dict | None = None) -> list[float]:
        # Only this scorer reads the other columns: the rows are built here, not for every scorer.
        names = list(columns or {})
        rows = [dict(zip(names, values)) for values in zip(*(columns[c].tolist() for c in names))] if names \
            else [{} for _ in prompts]
        return self.fn(prompts, ["\n\n".join(m["content"] for m in c) for c in completions], rows)


def make_scorer(kind: str, model_dir: str, template: str | None, max_len: int, batch_size: int, threads: int,
                judge: dict | None = None, dtype: str = "float32", function: str = "", prm_reduce: str = "min",
                gpu_memory_utilization: float = 0.9, engine_kwargs: dict | None = None) -> Scorer:
    if kind == "function":
        if not function:
            raise ValueError("score.scorer=function needs score.function (module:callable)")
        return FunctionScorer(function)
    if kind == "rm":
        return RewardScorer(model_dir, template, max_len, batch_size, dtype, threads, prm_reduce)
    if kind == "vllm":
        return VLLMRewardScorer(model_dir, template, max_len, dtype, gpu_memory_utilization, engine_kwargs)
    if kind == "judge":
        from rlhf_ray.engines import judge as j

        jc = judge or {}
        if jc.get("base_url"):
            backend = j.OpenAIBackend(jc["base_url"], jc.get("served_model") or "default",
                                      jc.get("api_key_env", "OPENAI_API_KEY"), jc.get("max_tokens", 256),
                                      jc.get("concurrency", 8), jc.get("max_retries", 4))
        elif jc.get("model"):
            backend = j.VLLMBackend(jc["model"], jc.get("max_tokens", 256), gpu_memory_utilization=gpu_memory_utilization,
                                    engine_kwargs=engine_kwargs)
        else:
            raise ValueError("score.judge needs base_url (an OpenAI-compatible endpoint) or model (a local judge)")
        return j.JudgeScorer(backend)
    raise ValueError(f"unknown scorer {kind!r} (rm, vllm, judge, function)")


def check_score_gpus(s) -> None:
    """The ``score`` section's GPU request against the installed vLLM build, for the scorers that run vLLM."""
    if s.scorer == "vllm" or (s.scorer == "judge" and not s.judge.base_url):
        check_gpus("score.gpus_per_actor", s.gpus_per_actor)
        check_engine_kwargs("score.engine_kwargs", s.engine_kwargs)


def as_messages(completion) -> list[dict]:
    """A completion as a message list: candidates hold plain text, preference rows hold messages."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in completion]


class _ScoreActor(PoolActor):
    def __init__(self, failures: str = "", restarts: int = 0, progress=None, **kwargs):
        super().__init__(failures, restarts, progress)
        self.scorer = make_scorer(**kwargs)

    def work(self, batch: dict) -> tuple[dict, int]:
        prompts = [as_messages(p) for p in batch["prompt"]]
        completions = [as_messages(c) for c in batch["completion"]]
        before = (self.scorer.real, self.scorer.padding)
        rewards = self.scorer.score(prompts, completions, batch)
        # Token counts of this call, so that the job can report the padding fraction.
        real, pad = self.scorer.real - before[0], self.scorer.padding - before[1]
        # Plain message lists: numpy arrays of dicts would not convert back to Arrow structs.
        plain = {"prompt": objects(prompts)}
        if len(batch["completion"]) and not isinstance(batch["completion"][0], str):
            plain["completion"] = objects(completions)
        return {**batch, **plain, "reward": rewards, "score_tokens": _spread(real, len(rewards)),
                "score_padding": _spread(pad, len(rewards))}, len(rewards)


def _spread(total: int, n: int) -> list[int]:
    """``total`` split over ``n`` rows so that the column sums back to it exactly."""
    return [total // n + (i < total % n) for i in range(n)]


def score_dataset(ds, model_dir: str | Path, s, failures: str = "", progress=None):
    """Add ``reward`` (and per-row ``score_tokens``/``score_padding``) to rows holding ``prompt`` (messages)
    and ``completion`` (text or messages), scored and pooled as the ``score`` section ``s`` (a
    ``config.ScoreConfig``) says. With a ``failures`` folder, an actor whose vLLM engine fails is
    replaced up to s.engine_restarts times; with a ``progress.Counter`` actor, the actors count the rows
    they scored into it."""
    from dataclasses import asdict

    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        _ScoreActor, batch_size=s.rows_per_call, batch_format="numpy",
        fn_constructor_kwargs={"kind": s.scorer, "model_dir": str(model_dir), "template": s.template,
                               "max_len": s.max_len, "batch_size": s.batch_size, "threads": s.threads,
                               "judge": asdict(s.judge), "dtype": s.dtype, "function": s.function,
                               "prm_reduce": s.prm_reduce, "failures": failures, "restarts": s.engine_restarts,
                               "progress": progress, "engine_kwargs": dict(s.engine_kwargs),
                               "gpu_memory_utilization": memory_share(s.gpu_memory_utilization, s.gpus_per_actor)},
        compute=ActorPoolStrategy(min_size=s.actors[0], max_size=s.actors[1]), num_cpus=s.cpus_per_actor,
        num_gpus=s.gpus_per_actor)
