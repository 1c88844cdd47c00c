"""N completions per prompt with vLLM in a Ray Data actor pool: prompts → candidates.

Prompts are rendered by ``rlhf_ray.chat.render_prompt`` (generation-prompt mode), so the engine sees
exactly the tokens SFT trained as the prompt of an assistant turn. Each actor holds one vLLM engine;
``SamplingParams(n=N)`` shares the prompt's prefix across the N samples.

Ray's ``ray.data.llm`` processor keeps only the first completion when ``n > 1`` and starts a separate
engine process (3× slower on CPU, see ../shared/notes), so the actor here is our own.
"""
from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from rlhf_ray import chat, models, storage

# Columns of a prompt row that the generator consumes; every other column (e.g. a gold ``answer``)
# is carried into each candidate.
_PROMPT_COLS = ("prompt_id", "prompt", "prompt_token_ids", "_file", "_line")


class EngineError(RuntimeError):
    """The engine failed (not the prompts it was given): its process state cannot be trusted."""


class EngineFailed(RuntimeError):
    """A stage's engines failed more often than it replaces them: the job stops with the engine's message."""


# One failing call per actor records the failure; the actor's other calls wait here until it ends.
_replacing = threading.Lock()


def replace_actor(failures: str, restarts: int, error: BaseException) -> None:
    """Record the engine's ``error`` in the stage's ``failures`` folder and end this actor's process:
    Ray Data restarts it (its pools restart actors without limit) and retries its calls, none of whose
    rows were returned, so nothing is lost or repeated. A failure past ``restarts`` records raises
    instead, failing the job. The process ends rather than rebuilding its engine: a failed accelerator
    context does not recover."""
    message = f"{type(error).__name__}: {error}"
    with _replacing:
        seen = len(storage.read_texts(failures))
        storage.write_text(f"{failures}/{os.getpid()}.txt", message)  # one record per failed actor process
        if seen >= restarts:
            raise EngineFailed(message) from error
        print(f"vLLM engine failed ({message}); this actor exits and Ray Data replaces it", file=sys.stderr,
              flush=True)
        os._exit(1)


@dataclass(frozen=True)
class Sampling:
    n: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0
    greedy: bool = False  # also one temperature-0 answer per prompt (sample_idx n, greedy=True)


def prompt_id(file: str, line: int, sources: dict[str, str] | None = None) -> str:
    """A stable id that also says where the prompt came from: the file's name (or its
    ``data.source_names`` name, which tells same-named inputs apart) and line."""
    return f"{(sources or {}).get(file) or Path(file).name}:{line}"


def tokenize_prompt(row: dict, model: str, template: str | None, max_prompt_tokens: int,
                    sources: dict[str, str] | None = None) -> dict:
    """Prompt row → ``prompt_token_ids``; a prompt that leaves no room for the completion is tagged bad."""
    tok = models.chat_tokenizer(model, template)
    try:
        ids = chat.render_prompt(list(row["prompt"]), tok, template)
        reason = f"{len(ids)} prompt tokens; the model's context leaves room for {max_prompt_tokens}" \
            if len(ids) > max_prompt_tokens else None
    except (ValueError, jinja2.TemplateError) as e:  # the chat template rejects the conversation
        ids, reason = [], f"chat template: {e}"
    bad = reason is not None
    return {**row, "prompt_id": prompt_id(row["_file"], row["_line"], sources), "prompt_token_ids": ids,
            "file": row["_file"], "line": row["_line"], "field": "prompt" if bad else None, "reason": reason}


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


def memory_share(configured: float, gpus: float) -> float:
    """vLLM's share of its GPU's memory: ``configured``, else 0.9 of the fraction Ray reserved, so that
    engines sharing one GPU (two actors at 0.5, a policy and a scorer) fit; vLLM's own default takes 0.9
    of the device whatever Ray reserved, and the second engine on a GPU then fails at start."""
    if configured:
        return configured
    return round(0.9 * gpus, 4) if 0 < gpus < 1 else 0.9


def check_gpus(key: str, gpus: float) -> None:
    """A CUDA build of vLLM in an actor that reserves no GPU fails deep in its start-up (or grabs a GPU
    Ray gave to another actor): one line naming the key instead, before Ray starts."""
    import importlib.metadata

    def installed(name: str) -> bool:
        try:
            importlib.metadata.distribution(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            return False

    if gpus == 0 and installed("vllm") and not installed("vllm-cpu"):
        from rlhf_ray.config import ConfigError

        raise ConfigError(f"{key}=0 with the CUDA build of vLLM installed: give its actors a GPU ({key}=1, or a "
                          f"fraction to share one), or install the cpu extra on CPU machines")


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


class VLLMGenerator:
    """One ``Engine``; ``__call__`` turns a batch of tokenized prompts into N candidate rows each.
    Several calls run at once (Ray Data threads) and share the engine's running batch, so that a new
    call's prompts do not wait for the previous call's longest completion."""

    def __init__(self, model: str, sampling: dict, max_model_len: int, dtype: str = "auto",
                 tensor_parallel: int = 1, kv_cache_gb: int = 1, threads: int = 0, failures: str = "",
                 restarts: int = 0, progress=None, gpu_memory_utilization: float = 0.9):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = Sampling(**sampling)
        self.failures, self.restarts = failures, restarts  # where and how often a failed engine is replaced
        self.progress = progress  # a progress.Counter actor, or None
        once = RequestOutputKind.FINAL_ONLY  # no partial outputs per step
        self.params = [SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                      output_kind=once)]
        if s.greedy:  # in the same running batch as the samples: one engine start serves both
            self.params.append(SamplingParams(n=1, temperature=0.0, max_tokens=s.max_tokens, output_kind=once))
        # vllm-cpu rejects per-request seeds ("CPU Generator does not use offset"): the engine is seeded.
        self.engine = Engine(functools.partial(load_llm, model, s.seed, dtype, max_model_len, tensor_parallel,
                                               kv_cache_gb, threads, gpu_memory_utilization))

    def generate(self, token_ids: list[list[int]]):
        """One vLLM output per prompt and sampling parameters (samples, then greedy), prompt by prompt."""
        return self.engine.generate([(ids, p) for ids in token_ids for p in self.params])

    def __call__(self, batch: dict) -> dict:
        try:
            outputs = self.generate(batch["prompt_token_ids"])
        except EngineError as e:
            if not self.failures:
                raise
            replace_actor(self.failures, self.restarts, e.__cause__ or e)
        carried = [c for c in batch if c not in _PROMPT_COLS]
        rows: dict[str, list] = {c: [] for c in ("prompt_id", "sample_idx", "greedy", "prompt", "completion",
                                                 "num_prompt_tokens", "num_completion_tokens",
                                                 "finish_reason", *carried)}
        per_prompt = len(self.params)
        for i in range(len(batch["prompt_id"])):
            samples = [(o, False) for o in outputs[i * per_prompt].outputs]
            samples += [(out.outputs[0], True) for out in outputs[i * per_prompt + 1:(i + 1) * per_prompt]]
            for k, (o, greedy) in enumerate(samples):
                rows["prompt_id"].append(batch["prompt_id"][i])
                rows["sample_idx"].append(k)
                rows["greedy"].append(greedy)
                rows["prompt"].append(_messages(batch["prompt"][i]))
                rows["completion"].append(o.text)
                rows["num_prompt_tokens"].append(len(outputs[i * per_prompt].prompt_token_ids))
                rows["num_completion_tokens"].append(len(o.token_ids))
                rows["finish_reason"].append(o.finish_reason)
                for c in carried:
                    rows[c].append(batch[c][i])
        if self.progress is not None:
            self.progress.add.remote(len(batch["prompt_id"]))
        return {c: _objects(v) if c == "prompt" else np.asarray(v) for c, v in rows.items()}


def _objects(values: list) -> np.ndarray:
    # np.asarray would turn equal-length message lists into a 2-D array.
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _messages(prompt) -> list[dict]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def generate_dataset(prompts, model: str, g, failures: str = "", progress=None):
    """Tokenized good prompt rows (``prompt_id``, ``prompt``, ``prompt_token_ids``) → candidate rows,
    sampled and pooled as the ``generate`` section ``g`` (a ``config.GenerateConfig``) says. With a
    ``failures`` folder, an actor whose engine fails is replaced up to g.engine_restarts times; with a
    ``progress.Counter`` actor, the actors count the prompts they finished into it."""
    from dataclasses import asdict

    from ray.data import ActorPoolStrategy

    sampling = Sampling(g.n, g.temperature, g.top_p, g.max_tokens, g.seed, g.greedy)
    return prompts.map_batches(
        VLLMGenerator, batch_size=g.rows_per_call, batch_format="numpy",
        fn_constructor_kwargs={"model": model, "sampling": asdict(sampling), "max_model_len": g.max_model_len,
                               "dtype": g.dtype, "tensor_parallel": g.tensor_parallel, "kv_cache_gb": g.kv_cache_gb,
                               "threads": g.threads, "failures": failures, "restarts": g.engine_restarts,
                               "progress": progress,
                               "gpu_memory_utilization": memory_share(g.gpu_memory_utilization, g.gpus_per_actor)},
        compute=ActorPoolStrategy(min_size=g.actors[0], max_size=g.actors[1], enable_true_multi_threading=True,
                                  max_concurrent_calls_per_actor=g.calls_per_actor,
                                  max_tasks_in_flight_per_actor=2 * g.calls_per_actor),
        num_cpus=g.cpus_per_actor, num_gpus=g.gpus_per_actor * g.tensor_parallel)
