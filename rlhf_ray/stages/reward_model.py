"""Reward-model stage: (the SFT policy's labelled samples →) preference or outcome rows → a reward model
trained on Ray Train, with held-out accuracy (pairs), AUC (ORM) or step accuracy (PRM)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf_ray import cluster, config, data, manifest, model_card, models, storage, tasks, tracking
from rlhf_ray.config import ModelConfig, PipelineConfig, RewardConfig
from rlhf_ray.core import objectives
from rlhf_ray.run_layout import MODEL, RunDir
from rlhf_ray.stages import rm_data


def encode_dataset(rows, r: RewardConfig, quarantine: Path | None):
    """Rows → token columns of the objective (materialised), and how many failed to encode."""
    params = {"objective": r.objective, "model": dataclasses.asdict(r.model), "max_len": r.train.max_seq_len}
    return data.split_bad_rows(rows.map(_encode, fn_kwargs=params), r.data.on_bad_rows, quarantine)


def _encode(row: dict, objective: str, model: dict, max_len: int) -> dict:
    tok = models.chat_tokenizer(model["name"], model["template"], model["trust_remote_code"])
    where = {"file": row.get("_file"), "line": row.get("_line")}
    try:
        return {**objectives.encode_row(row, objective, tok, model["template"], max_len), **where,
                "field": None, "reason": None}
    except data.BadRecord as e:
        return {**objectives.OBJECTIVES[objective].empty, **where, "field": e.field, "reason": e.reason}


def conversations(row: dict) -> list[list[dict]]:
    """The conversations a reward-model row is scored as: its prompt followed by each completion."""
    if "chosen" in row:
        return [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    if "ranking" in row:
        return [row["prompt"] + c for c in row["completions"]]
    if "completions" in row:  # a process RM's steps, one assistant turn
        return [row["prompt"] + [{"role": "assistant", "content": "\n".join(row["completions"])}]]
    return [row["prompt"] + row["completion"]]


def backbone(model: ModelConfig, sft_model: Path) -> ModelConfig:
    """``reward.model.name: sft`` starts the RM from the run's SFT policy, as InstructGPT does. The
    backbone is named so that every node can read it (a mirrored run folder's model by its URI)."""
    return dataclasses.replace(model, name=storage.publish(sft_model if model.name == "sft" else model.name))


def run(cfg: PipelineConfig, policy: str | None = None) -> Path:
    """Train RUN_DIR/rm/model; with reward.source=policy_samples on ``policy``'s labelled samples
    (default RUN_DIR/sft/model)."""
    r, layout = cfg.reward, RunDir(cfg.run_dir)
    if r.source == "policy_samples":
        train_files, eval_files = rm_data.run(cfg, policy or str(layout.sft_model))
    elif r.data.train:
        train_files = data.expand_paths(r.data.train)
        eval_files = data.expand_paths(r.data.eval) if r.data.eval else []
    elif cfg.task.name != "none":
        train_files, eval_files = [tasks.task_files(cfg.task, layout.data)["pairs"]], []
    else:
        raise config.ConfigError("reward.data.train is empty and no task is configured (task.name)")
    r = dataclasses.replace(r, model=backbone(r.model, layout.sft_model))
    return train(r, train_files, eval_files, layout.rm)


def train(r: RewardConfig, train_files: list[str], eval_files: list[str], out: Path) -> Path:
    """A reward model trained as section ``r`` says on ``train_files`` (held out: ``eval_files``, else
    ``r.data.eval_rows``) into ``out``/model; skipped when out's manifest matches."""
    from rlhf_ray.train import reward, runner

    is_folder = storage.is_remote(r.model.name) or Path(r.model.name).is_dir()
    backbone = [r.model.name] if is_folder else []  # a new SFT policy retrains the RM
    st = manifest.stage("rm", out, {"reward": r}, train_files + eval_files + backbone)
    if st.up_to_date():
        return out / MODEL
    kind = objectives.OBJECTIVES[r.objective].row_kind
    adapter = r.data.adapter if r.source == "files" else None  # labelled samples are written in our format
    if r.model.template or getattr(models.chat_tokenizer(r.model.name, None, r.model.trust_remote_code),
                                   "chat_template", None):
        # A chat-model RM reads prompt + completion as one conversation whose final turn it scores: the
        # doctor's final-turn checks on the first rows, before any training. (Encoders without a
        # template, MiniLM, read plain "Role: content" text: objectives.texts.)
        models.check_template(r.model, "final_turn", r.train.template_check, "reward.train.template_check",
                           [(f"{x.file}:{x.line}", c) for x in data.first_rows(train_files, kind, adapter)
                            for c in conversations(x.row)])
    quarantine = st.begin()

    cluster.connect()
    rows, bad_rows = data.read_dataset(train_files, kind, adapter, r.data.on_bad_rows, quarantine)
    eval_quarantine, bad_eval = out / "quarantine_eval.jsonl", 0  # eval rows are quarantined apart, and counted
    if eval_files:
        eval_rows, bad_eval = data.read_dataset(eval_files, kind, adapter, r.data.on_bad_rows, eval_quarantine)
    elif r.data.eval_rows:
        rows, eval_rows = data.hold_out(rows, r.data.eval_rows, "reward.data.eval_rows")
    else:
        eval_rows = None
    if r.data.limit:
        rows = rows.limit(r.data.limit)
    train_ds, bad_encoded = encode_dataset(rows, r, quarantine)
    eval_ds, bad_eval_encoded = encode_dataset(eval_rows, r, eval_quarantine) if eval_rows is not None else (None, 0)

    result, plan = reward.fit(r, train_ds, eval_ds, out)
    model_dir = runner.export_checkpoint(result, out)
    final = result.metrics or {}
    stats = {k: final[k] for k in ("reward_mean", "reward_std") if k in final}
    (model_dir / "reward_stats.json").write_text(json.dumps({"objective": r.objective, **stats}, indent=2))
    counts = {"rows_quarantined": bad_rows, "quarantined_after_tokenization": bad_encoded,
              "train_rows": train_ds.count(), "eval_rows": eval_ds.count() if eval_ds is not None else 0,
              "eval_rows_quarantined": bad_eval, "eval_quarantined_after_tokenization": bad_eval_encoded,
              "steps": plan.total_steps}
    held_out = {k: v for k, v in final.items() if k.startswith("eval_")}
    model_card.write(model_dir, "reward_model", r.model.name, train_files + eval_files, counts, final,
                     st.config_hash, r.objective)
    st.finish(counts, held_out=held_out, model_dir=str(model_dir))
    tracking.push(model_dir)
    print(f"[rm] wrote {model_dir}: {counts} {held_out}")
    return model_dir

