"""Instruction tuning (SFT) on Ray Train.

    python jobs/sft.py CONFIG [key=value ...]
    ray job submit --working-dir . -- python jobs/sft.py jobs/configs/tiny.yaml

Writes RUN_DIR/sft/: model/ (HF folder: safetensors, tokenizer, chat template), metrics.jsonl,
quarantine.jsonl (bad rows, if any), manifest.json. A finished stage with the same config and inputs
is skipped; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from rlhf_ray import cluster, config, job, data, manifest, storage, tasks
from rlhf_ray.config import PipelineConfig


def sft_inputs(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """Training and eval files: the config's, or the generated task's when none are given."""
    d = cfg.sft.data
    if d.train:
        return data.expand_paths(d.train), data.expand_paths(d.eval) if d.eval else []
    if cfg.task.name == "arithmetic":
        return [tasks.task_files(cfg.task, cfg.run_dir)["sft"]], []
    raise config.ConfigError("sft.data.train is empty and no task is configured (task.name)")


def run(cfg: PipelineConfig) -> Path:
    from rlhf_ray.train import runner, sft

    # The starting policy by a name every node can read (a mirrored run folder's model by its URI).
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, name=storage.shared(cfg.policy.name)))
    out = Path(cfg.run_dir) / "sft"
    train_files, eval_files = sft_inputs(cfg)
    inputs = manifest.fingerprint(train_files + eval_files)
    section = {"policy": cfg.policy, "sft": cfg.sft}
    chash = config.config_hash(section)
    if manifest.up_to_date(out, chash, inputs):
        print(f"[sft] {out} is up to date (config {chash}); skipping")
        return out / "model"
    out.mkdir(parents=True, exist_ok=True)
    quarantine = out / "quarantine.jsonl"
    storage.remove(quarantine)

    cluster.connect()
    d = cfg.sft.data
    rows, bad_rows = data.read_dataset(train_files, "sft", d.adapter, d.on_bad_rows, quarantine)
    if d.limit:
        rows = rows.limit(d.limit)
    encoded, counts = sft.encode_dataset(rows, cfg.policy, cfg.sft, d.on_bad_rows, quarantine)
    if eval_files:
        eval_rows, _ = data.read_dataset(eval_files, "sft", d.adapter, d.on_bad_rows, None)
        eval_ds, _ = sft.encode_dataset(eval_rows, cfg.policy, cfg.sft, d.on_bad_rows, None)
    elif d.eval_rows:
        encoded, eval_ds = encoded.split_at_indices([encoded.count() - d.eval_rows])
    else:
        eval_ds = None

    result, plan = sft.fit(cfg, encoded, eval_ds, out)
    runner.export_checkpoint(result, out)
    counts = {"rows_quarantined": bad_rows, **counts, "train_rows": encoded.count(),
              "eval_rows": eval_ds.count() if eval_ds is not None else 0, "steps": plan.total_steps}
    manifest.write(out, "sft", config.to_dict(cfg), chash, inputs, counts,
                   final_metrics=result.metrics, model_dir=str(out / "model"))
    print(f"[sft] wrote {out / 'model'}: {counts}")
    return out / "model"


if __name__ == "__main__":
    sys.exit(job.main("sft", __doc__, run, sys.argv[1:]))
