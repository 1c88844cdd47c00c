"""Reward-model training on Ray Train: Bradley-Terry, margin, K-wise, Plackett-Luce, ORM or PRM.

    python jobs/train_rm.py CONFIG [key=value ...]

Writes RUN_DIR/rm/: model/ (HF *ForSequenceClassification or *ForTokenClassification folder, plus
reward_stats.json with the eval set's reward mean and std), metrics.jsonl, quarantine.jsonl,
manifest.json with held-out accuracy (pairs), AUC (ORM) or step accuracy (PRM).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from rlhf_ray import cluster, config, job, data, manifest, storage, tasks
from rlhf_ray.config import PipelineConfig


def encode_dataset(rows, cfg: PipelineConfig, quarantine: Path | None):
    """Rows → token columns of the objective (materialised), and how many failed to encode."""
    r = cfg.reward
    params = {"objective": r.objective, "model": dataclasses.asdict(r.model), "max_len": r.train.max_seq_len}
    return data.split_bad_rows(rows.map(_encode, fn_kwargs=params), r.data.on_bad_rows, quarantine)


def _encode(row: dict, objective: str, model: dict, max_len: int) -> dict:
    from rlhf_ray import models
    from rlhf_ray.train import reward

    tok = reward._tokenizer(models.resolve(model["name"]), model["template"], model["trust_remote_code"])
    where = {"file": row.get("_file"), "line": row.get("_line")}
    try:
        return {**reward.encode_row(row, objective, tok, model["template"], max_len), **where,
                "field": None, "reason": None}
    except data.BadRecord as e:
        return {**_empty(objective), **where, "field": e.field, "reason": e.reason}


def _empty(objective: str) -> dict:
    # Same columns as a good row, so that Arrow blocks of good and bad rows share one schema.
    if objective in ("bt", "margin"):
        return {"chosen_ids": [], "rejected_ids": [], "margin": 0.0}
    if objective in ("kwise", "plackett_luce"):
        return {"completion_ids": [], "ranking": []}
    if objective == "orm":
        return {"input_ids": [], "completion_mask": [], "label": 0}
    return {"input_ids": [], "step_labels": []}


def with_backbone(cfg: PipelineConfig) -> PipelineConfig:
    """``reward.model.name: sft`` starts the RM from the run's SFT policy, as InstructGPT does. The
    backbone is named so that every node can read it (a mirrored run folder's model by its URI)."""
    name = cfg.reward.model.name
    name = storage.shared(Path(cfg.run_dir) / "sft" / "model" if name == "sft" else name)
    model = dataclasses.replace(cfg.reward.model, name=name)
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, model=model))


def run(cfg: PipelineConfig) -> Path:
    from rlhf_ray.train import reward, runner

    cfg = with_backbone(cfg)
    r, out = cfg.reward, Path(cfg.run_dir) / "rm"
    if r.data.train:
        train_files = data.expand_paths(r.data.train)
    elif cfg.task.name != "none":
        train_files = [tasks.task_files(cfg.task, cfg.run_dir)["pairs"]]
    else:
        raise config.ConfigError("reward.data.train is empty and no task is configured (task.name)")
    eval_files = data.expand_paths(r.data.eval) if r.data.eval else []
    is_folder = storage.is_remote(r.model.name) or Path(r.model.name).is_dir()
    backbone = [r.model.name] if is_folder else []  # a new SFT policy retrains the RM
    inputs = manifest.fingerprint(train_files + eval_files + backbone)
    chash = config.config_hash({"reward": r})
    if manifest.up_to_date(out, chash, inputs):
        print(f"[rm] {out} is up to date (config {chash}); skipping")
        return out / "model"
    out.mkdir(parents=True, exist_ok=True)
    quarantine = out / "quarantine.jsonl"
    storage.remove(quarantine)

    cluster.connect()
    kind = reward.ROW_KIND[r.objective]
    rows, bad_rows = data.read_dataset(train_files, kind, r.data.adapter, r.data.on_bad_rows, quarantine)
    if eval_files:
        eval_rows, _ = data.read_dataset(eval_files, kind, r.data.adapter, r.data.on_bad_rows, None)
    elif r.data.eval_rows:
        rows, eval_rows = rows.split_at_indices([rows.count() - r.data.eval_rows])
    else:
        eval_rows = None
    if r.data.limit:
        rows = rows.limit(r.data.limit)
    train_ds, bad_encoded = encode_dataset(rows, cfg, quarantine)
    eval_ds = encode_dataset(eval_rows, cfg, None)[0] if eval_rows is not None else None

    result, plan = reward.fit(cfg, train_ds, eval_ds, out)
    model_dir = runner.export_checkpoint(result, out)
    final = result.metrics or {}
    stats = {k: final[k] for k in ("reward_mean", "reward_std") if k in final}
    (model_dir / "reward_stats.json").write_text(json.dumps({"objective": r.objective, **stats}, indent=2))
    counts = {"rows_quarantined": bad_rows, "quarantined_after_tokenization": bad_encoded,
              "train_rows": train_ds.count(), "eval_rows": eval_ds.count() if eval_ds is not None else 0,
              "steps": plan.total_steps}
    held_out = {k: v for k, v in final.items() if k.startswith("eval_")}
    manifest.write(out, "rm", config.to_dict(cfg), chash, inputs, counts, held_out=held_out,
                   model_dir=str(model_dir))
    print(f"[rm] wrote {model_dir}: {counts} {held_out}")
    return model_dir


if __name__ == "__main__":
    sys.exit(job.main("train_rm", __doc__, run, sys.argv[1:]))
