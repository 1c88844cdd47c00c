"""Generation stage: N completions per prompt from vLLM actor pools on Ray Data → candidates Parquet."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pyarrow.compute as pc

from rlhf_ray import cluster, config, data, manifest, models, progress, storage, tasks
from rlhf_ray.config import GenerateConfig, PipelineConfig
from rlhf_ray.run_layout import CANDIDATES, RunDir


def prompt_files(cfg: PipelineConfig) -> list[str]:
    if cfg.generate.prompts:
        return data.expand_paths(cfg.generate.prompts)
    if cfg.task.name != "none":
        return [tasks.task_files(cfg.task, RunDir(cfg.run_dir).data)["prompts"]]
    raise config.ConfigError("generate.prompts is empty and no task is configured (task.name)")


def generate(g: GenerateConfig, template: str | None, model_dir: str, prompts: list[str], out: Path) -> Path:
    """prompts → out/candidates (M×N rows) sampled as section ``g`` says, with the policy's chat
    ``template``; skipped when out's manifest matches."""
    from rlhf_ray.engines import actor_pool, generator, vllm_engine

    model_dir = storage.publish(model_dir)  # vLLM actors on any node load it
    st = manifest.stage("generate", out, {"generate": g, "template": template}, [*prompts, models.expand_name(model_dir)])
    if st.up_to_date():
        return out / CANDIDATES
    actor_pool.check_gpus("generate.gpus_per_actor", g.gpus_per_actor)
    vllm_engine.check_engine_kwargs("generate.engine_kwargs", g.engine_kwargs)
    quarantine = st.begin()

    cluster.connect()
    rows, bad = data.read_dataset(prompts, "prompt", g.adapter, g.on_bad_rows, quarantine)
    if g.limit:
        rows = rows.limit(g.limit)
    sources = data.source_names(storage.uri(f) or f for f in prompts)  # keyed as read_dataset names them
    tagged = rows.map(generator.tokenize_prompt, fn_kwargs={"model": model_dir, "template": template,
                                                                "max_prompt_tokens": g.max_model_len - g.max_tokens,
                                                                "sources": sources})
    good, too_long = data.split_bad_rows(tagged, g.on_bad_rows, quarantine)
    m = good.count()
    # One block per actor call, so that the pool streams and a lost actor costs one call's retry.
    good = good.repartition(max(1, math.ceil(m / g.rows_per_call)))
    failures = actor_pool.failures_folder(out)
    target = out / CANDIDATES
    storage.remove(target)
    start = time.perf_counter()
    with progress.track(progress.label("generate", out), m, "prompts") as counter:
        candidates = generator.generate_dataset(good, model_dir, g, failures, counter)
        replaced = actor_pool.write_replacing_engines(candidates, target, failures, "generate", g.engine_restarts)
    seconds = time.perf_counter() - start

    per_prompt = g.n + g.greedy
    written = actor_pool.check_accounting(target, m * per_prompt, ("num_completion_tokens",))
    tokens = int(pc.sum(written["num_completion_tokens"]).as_py() or 0)
    counts = {"candidates": m * per_prompt, "prompts": m, "quarantined": bad + too_long,
              "engines_replaced": replaced, "completion_tokens": tokens,
              "seconds": round(seconds, 2), "completion_tokens_per_s": round(tokens / seconds, 1)}
    st.finish(counts, model_dir=model_dir)
    print(f"[generate] wrote {target}: {counts}")
    return target


def run(cfg: PipelineConfig) -> Path:
    layout = RunDir(cfg.run_dir)
    model_dir = cfg.generate.model_dir or str(layout.sft_model)
    return generate(cfg.generate, cfg.policy.template, model_dir, prompt_files(cfg), layout.generate)
