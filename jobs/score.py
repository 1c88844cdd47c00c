"""Score candidates with a reward model (or an LLM judge) in a Ray Data actor pool.

    python jobs/score.py CONFIG [key=value ...]

Reads score.candidates (default RUN_DIR/generate/candidates) and writes RUN_DIR/score/scored/ (the
candidates + reward, score_tokens, score_padding) and manifest.json with scores/s and the padding
fraction. A finished stage with the same config, candidates and model is skipped.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from rlhf_ray import cluster, config, job, manifest, models, rewards, storage
from rlhf_ray.config import PipelineConfig, ScoreConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.generate import check_accounting  # noqa: E402


def rm_dir(cfg: PipelineConfig) -> str:
    """The reward model that scores: score.model_dir, else the run's own."""
    return cfg.score.model_dir or str(Path(cfg.run_dir) / "rm" / "model")


def stage(s: ScoreConfig, candidates: str, model_dir: str, out: Path) -> Path:
    """candidates → out/scored with the same rows and a reward column, scored as section ``s`` says."""
    import ray.data

    from rlhf_ray.score import score_dataset

    candidates, model_dir = storage.shared(candidates), storage.shared(model_dir)  # read on any node
    if s.scorer == "function":
        judged_by = [f for f in [rewards.source_file(s.function)] if f]  # an edited checker re-scores
    else:
        judged_by = [models.locate(model_dir)] if s.scorer != "judge" else []
    inputs = manifest.fingerprint([candidates] + judged_by)
    chash = config.config_hash({"score": s})
    if manifest.up_to_date(out, chash, inputs):
        print(f"[score] {out} is up to date (config {chash}); skipping")
        return out / "scored"
    cluster.connect()
    ds = ray.data.read_parquet(candidates)
    rows_in = ds.count()
    scored = score_dataset(ds, model_dir, s.template, s.max_len, s.batch_size, tuple(s.actors), s.rows_per_call,
                           s.threads, s.scorer, dataclasses.asdict(s.judge), s.cpus_per_actor, s.gpus_per_actor,
                           s.dtype, s.function)
    target = out / "scored"
    storage.remove(target)
    start = time.perf_counter()
    scored.write_parquet(storage.shared(target))
    seconds = time.perf_counter() - start

    done = check_accounting(target, rows_in)
    rows = rows_in
    real, pad = int(done.sum("score_tokens") or 0), int(done.sum("score_padding") or 0)
    counts = {"candidates": rows, "seconds": round(seconds, 2), "scores_per_s": round(rows / seconds, 2),
              "padding_fraction": round(pad / max(real + pad, 1), 4)}
    manifest.write(out, "score", {"score": config.to_dict(s)}, chash, inputs, counts,
                   model_dir=model_dir if s.scorer in ("rm", "vllm") else None)
    print(f"[score] wrote {target}: {counts}")
    return target


def run(cfg: PipelineConfig) -> Path:
    s = cfg.score
    candidates = s.candidates or str(Path(cfg.run_dir) / "generate" / "candidates")
    return stage(s, candidates, rm_dir(cfg), Path(cfg.run_dir) / "score")


if __name__ == "__main__":
    sys.exit(job.main("score", __doc__, run, sys.argv[1:]))
