"""vLLM as this project runs it: ``load_llm`` (an engine for a model folder, sized for the CPU or its
share of a GPU) and ``Engine`` (one engine stepped by its own thread, so that requests from any thread
join its running batch)."""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Future
from pathlib import Path

from rlhf_ray import models
from rlhf_ray.engines.actor_pool import EngineError


def load_llm(model: str, seed: int = 0, dtype: str = "auto", max_model_len: int = 2048, tensor_parallel: int = 1,
             kv_cache_gb: int = 1, threads: int = 0, gpu_memory_utilization: float = 0.9, **engine_kwargs):
    """A vLLM engine for a local folder, ``default`` or a hub id; on a GPU it takes
    ``gpu_memory_utilization`` of the device's memory (``memory_share``)."""
    import torch

    if torch.cuda.is_available():
        engine_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        # On CPU: in-process engine (4 s start instead of 23 s) and a bounded KV cache (unset, vLLM
        # reserves 92% of memory and fails).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        _engine_threads(threads)
        dtype = cpu_dtype(dtype)
        # The CPU default block (128 tokens) is longer than a short chat prompt, so the prefix cache
        # never shares a prompt between its n samples; with 32 the tiny run's generation took half the time.
        engine_kwargs.setdefault("block_size", 32)
    from vllm import LLM

    return LLM(model=models.local_path(model), seed=seed, dtype=dtype, max_model_len=max_model_len,
               tensor_parallel_size=tensor_parallel,
               enforce_eager=not torch.cuda.is_available(), **engine_kwargs)  # CUDA graphs pay off on GPU only


# Engine arguments this project sets from its own keys: an engine_kwargs entry would fight them.
_OWN = {"model": "the model key", "seed": "generate.seed", "dtype": "dtype", "max_model_len": "max_model_len",
        "tensor_parallel_size": "tensor_parallel", "gpu_memory_utilization": "gpu_memory_utilization",
        "enforce_eager": "the device (eager on CPU)", "runner": "score.scorer"}


def check_engine_kwargs(key: str, kwargs: dict) -> None:
    """``kwargs`` are vLLM engine arguments (``vllm.engine.arg_utils.EngineArgs``) this project does not set
    itself; else one line naming the key (and the closest argument, for a typo), before Ray starts."""
    import dataclasses
    import difflib

    from rlhf_ray.config import ConfigError

    if not kwargs:
        return
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    for name in kwargs:
        if name in _OWN:
            raise ConfigError(f"{key}.{name}: set by this project; use {_OWN[name]}")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"{key}.{name}: not a vLLM engine argument" + (f" (did you mean {close[0]}?)" if close else ""))


def memory_share(configured: float, gpus: float) -> float:
    """vLLM's share of its GPU's memory: ``configured``, else 0.9 of the fraction Ray reserved, so that
    engines sharing one GPU (two actors at 0.5, a policy and a scorer) fit; vLLM's own default takes 0.9
    of the device whatever Ray reserved, and the second engine on a GPU then fails at start."""
    if configured:
        return configured
    return round(0.9 * gpus, 4) if 0 < gpus < 1 else 0.9


def cpu_dtype(dtype: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """``auto`` on a CPU without AMX is float32: vLLM's bf16 kernels need AMX; without it SmolLM2's
    bf16 checkpoint had not finished after 3 min what float32 generated in about 35 s (a probe here). Any other choice is kept."""
    if dtype != "auto":
        return dtype
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:  # not Linux: leave it to vLLM
        return dtype
    return dtype if "amx_bf16" in flags else "float32"


def _engine_threads(threads: int) -> None:
    """The CPU engine's torch threads. Ray exports OMP_NUM_THREADS (the actor's CPU count) into a
    worker after it starts, and vLLM runs on one thread when the variable is unset ("Reducing Torch
    threads ... for serving"): an actor that reserves 1 CPU, so that Ray Data's own tasks still find
    one, then generates on one core. ``threads`` sets the count; 0 keeps a value the user exported
    (the process's initial environment) and otherwise leaves vLLM's choice."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        # Torch read the variable Ray set when it started the worker; vLLM then keeps torch's count for
        # serving ("leaving Torch threads at 1"), so the engine decoded on one core (half the speed here).
        torch.set_num_threads(threads)
        return
    try:
        initial = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:  # not Linux: leave the environment as it is
        return
    if not any(v.startswith(b"OMP_NUM_THREADS=") for v in initial):
        os.environ.pop("OMP_NUM_THREADS", None)


class Engine:
    """One vLLM engine, built and stepped by a thread of its own; requests submitted from any thread
    join its running batch at the next step (continuous batching, what vLLM's AsyncLLM does, which
    needs a separate engine process: a 20 s start on CPU, ../shared/notes). Each request's output
    arrives in a ``concurrent.futures.Future``; ``abort`` drops requests whose caller went away."""

    def __init__(self, load):
        self._lock = threading.Condition()  # guards the fields below; the engine itself is the thread's alone
        self._ids = itertools.count()
        self._new: list[tuple[str, list[int], object]] = []
        self._aborted: list[str] = []
        self._futures: dict[str, Future] = {}
        self._error: BaseException | None = None
        self.aborted = 0  # requests aborted so far
        ready = threading.Event()
        threading.Thread(target=self._drive, args=(load, ready), daemon=True, name="vllm-engine").start()
        ready.wait()
        if self._error is not None:
            raise self._error

    def submit(self, requests: list[tuple[list[int], object]]) -> tuple[list[str], list[Future]]:
        """(prompt token ids, SamplingParams) pairs → their keys and futures, in order."""
        keys = [str(next(self._ids)) for _ in requests]
        futures = [Future() for _ in requests]
        with self._lock:
            if self._error is not None:
                raise EngineError("vLLM engine failed") from self._error
            self._new += [(k, list(map(int, ids)), p) for k, (ids, p) in zip(keys, requests)]
            self._futures.update(zip(keys, futures))
            self._lock.notify_all()
        return keys, futures

    def abort(self, keys: list[str]) -> None:
        with self._lock:
            self._aborted += keys
            self.aborted += len(keys)
            for k in keys:
                self._futures.pop(k, None)
            self._lock.notify_all()

    def _drive(self, load, ready: threading.Event) -> None:
        # The engine is built in the thread that steps it: vLLM's CPU worker sets per-thread state (its
        # NUMA memory policy) in the thread that builds it; stepping from another thread ran 17% slower
        # (115 s vs 98 s, 256 prompts × 8).
        try:
            self.llm = load()
        except BaseException as e:  # __init__ re-raises it
            self._error = e
            return
        finally:
            ready.set()
        engine = self.llm.llm_engine
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._new or self._aborted or self._futures)
                new, self._new, aborted, self._aborted = self._new, [], self._aborted, []
            try:
                for key, ids, params in new:  # outputs come back under these (external) ids
                    engine.add_request(key, {"prompt_token_ids": ids}, params)
                if aborted:
                    engine.abort_request(aborted)
                outs, error = [o for o in engine.step() if o.finished], None
                idle = not engine.has_unfinished_requests()
            except Exception as e:  # every waiting request fails with the engine's error
                outs, idle, error = [], True, e
            with self._lock:
                self._record(outs, idle, error)

    def _record(self, outs: list, idle: bool, error: Exception | None) -> None:
        for out in outs:
            future = self._futures.pop(out.request_id, None)  # None: aborted meanwhile
            if future is not None:
                future.set_result(out)
        if idle and self._futures and not self._new:  # requests wait on an idle engine: it failed or dropped them
            self._error = self._error or error or RuntimeError(
                f"vLLM has no output for requests {sorted(self._futures, key=int)}")
            for future in self._futures.values():
                failed = EngineError("vLLM engine failed")
                failed.__cause__ = self._error
                future.set_exception(failed)
            self._futures.clear()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._futures)

    def generate(self, requests: list[tuple[list[int], object]]) -> list:
        """Submit and wait: one vLLM output per request, in order."""
        return [f.result() for f in self.submit(requests)[1]]
