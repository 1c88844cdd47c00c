"""Generation stage: N completions per prompt from vLLM actor pools on Ray Data → candidates Parquet."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pyarrow.compute as pc

from rlhf_ray import cluster, config, data, manifest, models, progress, storage, tasks
from rlhf_ray.config import GenerateConfig, PipelineConfig


def prompt_files(cfg: PipelineConfig) -> list[str]:
    if cfg.generate.prompts:
        return data.expand_paths(cfg.generate.prompts)
    if cfg.task.name != "none":
        return [tasks.task_files(cfg.task, cfg.run_dir)["prompts"]]
    raise config.ConfigError("generate.prompts is empty and no task is configured (task.name)")


def generate(g: GenerateConfig, template: str | None, model_dir: str, prompts: list[str], out: Path) -> Path:
    """prompts → out/candidates (M×N rows) sampled as section ``g`` says, with the policy's chat
    ``template``; skipped when out's manifest matches."""
    from rlhf_ray import generate as vllm_generate

    model_dir = storage.publish(model_dir)  # vLLM actors on any node load it
    st = manifest.stage("generate", out, {"generate": g, "template": template}, [*prompts, models.expand_name(model_dir)])
    if st.up_to_date():
        return out / "candidates"
    vllm_generate.check_gpus("generate.gpus_per_actor", g.gpus_per_actor)
    quarantine = st.begin()

    cluster.connect()
    rows, bad = data.read_dataset(prompts, "prompt", g.adapter, g.on_bad_rows, quarantine)
    if g.limit:
        rows = rows.limit(g.limit)
    sources = data.source_names(storage.uri(f) or f for f in prompts)  # keyed as read_dataset names them
    tagged = rows.map(vllm_generate.tokenize_prompt, fn_kwargs={"model": model_dir, "template": template,
                                                                "max_prompt_tokens": g.max_model_len - g.max_tokens,
                                                                "sources": sources})
    good, too_long = data.split_bad_rows(tagged, g.on_bad_rows, quarantine)
    m = good.count()
    # One block per actor call, so that the pool streams and a lost actor costs one call's retry.
    good = good.repartition(max(1, math.ceil(m / g.rows_per_call)))
    failures = engine_failures(out)
    target = out / "candidates"
    storage.remove(target)
    start = time.perf_counter()
    with progress.track(progress.label("generate", out), m, "prompts") as counter:
        candidates = vllm_generate.generate_dataset(good, model_dir, g, failures, counter)
        replaced = write_replacing_engines(candidates, target, failures, "generate", g.engine_restarts)
    seconds = time.perf_counter() - start

    per_prompt = g.n + g.greedy
    written = check_accounting(target, m * per_prompt, ("num_completion_tokens",))
    tokens = int(pc.sum(written["num_completion_tokens"]).as_py() or 0)
    counts = {"candidates": m * per_prompt, "prompts": m, "quarantined": bad + too_long,
              "engines_replaced": replaced, "completion_tokens": tokens,
              "seconds": round(seconds, 2), "completion_tokens_per_s": round(tokens / seconds, 1)}
    st.finish(counts, model_dir=model_dir)
    print(f"[generate] wrote {target}: {counts}")
    return target


def engine_failures(out: Path) -> str:
    """A stage's empty folder where its actors record failed engines (one file each, from any node)."""
    failures = storage.publish(out / "engine_failures")
    storage.remove(failures)
    return failures


def write_replacing_engines(rows, target: Path, failures: str, section: str, restarts: int) -> int:
    """Write ``rows`` (a dataset whose actors record failed engines in ``failures`` and are replaced)
    to ``target`` as Parquet, by the actors' nodes (into storage if remote); returns the number of
    engines replaced. When the actors gave up, the job stops with the engine's error in one line."""
    from rlhf_ray.generate import EngineFailed

    try:
        rows.write_parquet(storage.publish(target))
    except Exception as e:
        if failed := storage.read_texts(failures):
            raise EngineFailed(f"{target.parent}: vLLM engine failed ({len(failed)} failures; {section}.engine_restarts="
                               f"{restarts} allows {restarts} replacements); its error: {failed[-1]}") from e
        raise
    return len(storage.read_texts(failures))


def check_accounting(path: Path, expected: int, columns: tuple[str, ...] = ()):
    """The written rows' key columns and ``columns`` (a pyarrow Table on the driver's copy), after
    checking that there are ``expected`` rows and each (prompt_id, sample_idx) once; raises when a row
    was lost or repeated. Read on the driver: the stages that follow read its copy anyway, and a Ray
    Data groupby cost more than the whole stage on small runs."""
    import pyarrow.dataset as pads

    storage.pull(path)  # the driver's own copy, for the stages that read it with pandas
    table = pads.dataset(str(path), format="parquet").to_table(columns=["prompt_id", "sample_idx", *columns])
    unique = len(set(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist())))
    if table.num_rows != expected or unique != table.num_rows:
        raise RuntimeError(f"{path}: {table.num_rows} rows ({unique} distinct (prompt_id, sample_idx)), expected "
                           f"{expected}: rows lost or repeated")
    return table


def run(cfg: PipelineConfig) -> Path:
    model_dir = cfg.generate.model_dir or str(Path(cfg.run_dir) / "sft" / "model")
    return generate(cfg.generate, cfg.policy.template, model_dir, prompt_files(cfg), Path(cfg.run_dir) / "generate")
