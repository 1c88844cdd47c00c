"""Scoring stage: candidates → the same rows with a reward, from a reward model, LLM judge or rule."""
from __future__ import annotations

import time
from pathlib import Path

import pyarrow.compute as pc

from rlhf_ray import cluster, manifest, models, progress, storage
from rlhf_ray.core import rewards
from rlhf_ray.config import PipelineConfig, ScoreConfig
from rlhf_ray.run_layout import SCORED, RunDir


def score(s: ScoreConfig, candidates: str, model_dir: str, out: Path) -> Path:
    """candidates → out/scored with the same rows and a reward column, scored as section ``s`` says."""
    import ray.data

    from rlhf_ray.engines import actor_pool
    from rlhf_ray.engines.scorers import check_score_gpus, score_dataset

    candidates, model_dir = storage.publish(candidates), storage.publish(model_dir)  # read on any node
    if s.scorer == "function":
        judged_by = [f for f in [rewards.source_file(s.function)] if f]  # an edited checker re-scores
    else:
        judged_by = [models.expand_name(model_dir)] if s.scorer != "judge" else []
    st = manifest.stage("score", out, {"score": s}, [candidates] + judged_by)
    if st.up_to_date():
        return out / SCORED
    check_score_gpus(s)
    cluster.connect()
    ds = ray.data.read_parquet(candidates)
    rows = ds.count()
    failures = actor_pool.failures_folder(out)
    target = out / SCORED
    storage.remove(target)
    start = time.perf_counter()
    with progress.track(progress.label("score", out), rows, "candidates") as counter:
        scored = score_dataset(ds, model_dir, s, failures, counter)
        replaced = actor_pool.write_replacing_engines(scored, target, failures, "score", s.engine_restarts)
    seconds = time.perf_counter() - start

    done = actor_pool.check_accounting(target, rows, ("score_tokens", "score_padding"))
    real, pad = (int(pc.sum(done[c]).as_py() or 0) for c in ("score_tokens", "score_padding"))
    counts = {"candidates": rows, "engines_replaced": replaced, "seconds": round(seconds, 2), "scores_per_s": round(rows / seconds, 2),
              "padding_fraction": round(pad / max(real + pad, 1), 4)}
    st.finish(counts, model_dir=model_dir if s.scorer in ("rm", "vllm") else None)
    print(f"[score] wrote {target}: {counts}")
    return target


def run(cfg: PipelineConfig) -> Path:
    s = cfg.score
    layout = RunDir(cfg.run_dir)
    # The reward model that scores: score.model_dir, else the run's own.
    return score(s, s.candidates or str(layout.candidates), s.model_dir or str(layout.rm_model), layout.score)
