"""SFT stage: conversations → a chat model trained on Ray Train (HF folder, metrics, manifest)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_ray import cluster, config, data, manifest, model_card, models, storage, tasks, tracking
from rlhf_ray.config import DataConfig, ModelConfig, PipelineConfig, ScalingConfig, SFTConfig, TrainConfig
from rlhf_ray.run_layout import MODEL, RunDir, finetuned_model


def sft_inputs(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """Training and eval files: the config's, or the generated task's when none are given."""
    d = cfg.sft.data
    if d.train:
        return data.expand_paths(d.train), data.expand_paths(d.eval) if d.eval else []
    if cfg.task.name != "none":
        return [tasks.task_files(cfg.task, RunDir(cfg.run_dir).data)["sft"]], []
    raise config.ConfigError("sft.data.train is empty and no task is configured (task.name)")


def train(policy: ModelConfig, section: SFTConfig, train_files: list[str], eval_files: list[str], out: Path) -> Path:
    """Train ``out``/model from ``policy`` on the conversation files, as ``section`` says; returns the model
    folder (skipped when out's manifest matches, resumed when it was interrupted)."""
    from rlhf_ray.train import runner, sft

    # The starting policy by a name every node can read (a mirrored run folder's model by its URI).
    policy = dataclasses.replace(policy, name=storage.publish(policy.name))
    st = manifest.stage("sft", out, {"policy": policy, "sft": section}, train_files + eval_files)
    if st.up_to_date():
        return out / MODEL
    d, t = section.data, section.train
    models.check_template(policy, t.mask, t.template_check, "sft.train.template_check",
                   [(f"{r.file}:{r.line}", r.row["messages"]) for r in data.first_rows(train_files, "sft", d.adapter)])
    quarantine = st.begin()

    cluster.connect()
    rows, bad_rows = data.read_dataset(train_files, "sft", d.adapter, d.on_bad_rows, quarantine)
    if d.limit:
        rows = rows.limit(d.limit)
    encoded, counts = sft.encode_dataset(rows, policy, section, d.on_bad_rows, quarantine)
    eval_counts = {}
    if eval_files:  # bad eval rows are quarantined (and counted) apart from the training rows
        eval_quarantine = out / "quarantine_eval.jsonl"
        eval_rows, bad_eval = data.read_dataset(eval_files, "sft", d.adapter, d.on_bad_rows, eval_quarantine)
        eval_ds, encoded_eval = sft.encode_dataset(eval_rows, policy, section, d.on_bad_rows, eval_quarantine)
        eval_counts = {"eval_rows_quarantined": bad_eval,
                       "eval_quarantined_after_tokenization": encoded_eval["quarantined_after_tokenization"]}
    elif d.eval_rows:
        encoded, eval_ds = data.hold_out(encoded, d.eval_rows, "sft.data.eval_rows")
    else:
        eval_ds = None

    result, plan = sft.fit(policy, section, encoded, eval_ds, out)
    runner.export_checkpoint(result, out)
    counts = {"rows_quarantined": bad_rows, **counts, "train_rows": encoded.count(),
              "eval_rows": eval_ds.count() if eval_ds is not None else 0, **eval_counts, "steps": plan.total_steps}
    model_card.write(out / MODEL, "sft", policy.name, train_files + eval_files, counts, result.metrics or {},
                     st.config_hash)
    st.finish(counts, final_metrics=result.metrics, model_dir=str(out / MODEL))
    tracking.push(out / MODEL)
    print(f"[sft] wrote {out / MODEL}: {counts}")
    return out / MODEL


def run(cfg: PipelineConfig) -> Path:
    """Train RUN_DIR/sft/model from cfg.policy on the SFT files (or the task's); returns the model folder."""
    return train(cfg.policy, cfg.sft, *sft_inputs(cfg), RunDir(cfg.run_dir).sft)


def finetune(policy: ModelConfig, conversations: Path, reading: DataConfig, t: TrainConfig, s: ScalingConfig,
             out: Path) -> str:
    """SFT of ``policy`` on the ``conversations`` rejection sampling selected (read as ``reading`` says, trained
    as ``t`` and ``s`` say) into ``out`` (its policy: ``run_layout.finetuned_model(out)``)."""
    d = dataclasses.replace(reading, train=(str(conversations),), eval=(), eval_rows=0, limit=0)
    return str(train(policy, SFTConfig(data=d, train=t, scaling=s), data.expand_paths(d.train), [],
                     finetuned_model(out).parent))
