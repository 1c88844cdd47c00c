"""Reward-model stage: (the SFT policy's labelled samples →) preference or outcome rows → a reward model
trained on Ray Train, with held-out accuracy (pairs), AUC (ORM) or step accuracy (PRM)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from rlhf_ray import (cluster, config, data, manifest, model_card, models, objectives, selection, storage,
                      tasks, tracking)
from rlhf_ray.config import PipelineConfig, ScoreConfig
from rlhf_ray.stages import generation, scoring, sft


def encode_dataset(rows, cfg: PipelineConfig, quarantine: Path | None):
    """Rows → token columns of the objective (materialised), and how many failed to encode."""
    r = cfg.reward
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


def with_backbone(cfg: PipelineConfig) -> PipelineConfig:
    """``reward.model.name: sft`` starts the RM from the run's SFT policy, as InstructGPT does. The
    backbone is named so that every node can read it (a mirrored run folder's model by its URI)."""
    name = cfg.reward.model.name
    name = storage.publish(Path(cfg.run_dir) / "sft" / "model" if name == "sft" else name)
    model = dataclasses.replace(cfg.reward.model, name=name)
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, model=model))


def labelled_samples(cfg: PipelineConfig, policy: str) -> tuple[list[str], list[str]]:
    """``reward.source: policy_samples``: sample ``policy`` on the RM's prompts, label each sample with
    the checker (in the scoring stage, as a function scorer) and write RUN_DIR/rm_data/{train,eval}.jsonl:
    correct-vs-incorrect pairs (bt, margin) or labelled rows (orm), split by prompt."""
    import pandas as pd

    r, s = cfg.reward, cfg.reward.samples
    if r.objective not in ("bt", "margin", "orm"):
        raise config.ConfigError(f"reward.source=policy_samples trains bt, margin or orm reward models, "
                                 f"not reward.objective={r.objective}")
    if s.prompts:
        prompts = data.expand_paths(s.prompts)
    elif cfg.task.name != "none":
        prompts = [tasks.task_files(cfg.task, cfg.run_dir)["rm_prompts"]]
    else:
        raise config.ConfigError("reward.source=policy_samples needs reward.samples.prompts or a task (task.name)")
    out = Path(cfg.run_dir) / "rm_data"
    g = dataclasses.replace(cfg.generate, n=s.n, temperature=s.temperature, max_tokens=s.max_tokens or cfg.generate.max_tokens,
                            adapter=s.adapter, limit=s.limit, seed=s.seed)
    candidates = generation.generate(g, cfg.policy.template, policy, prompts, out / "generate")
    checker = ScoreConfig(scorer="function", function=s.checker, rows_per_call=cfg.score.rows_per_call,
                          actors=cfg.score.actors)
    labelled = scoring.score(checker, str(candidates), "", out / "label")

    files = {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    st = manifest.stage("rm_data", out, {"samples": s, "objective": r.objective}, [labelled])
    if st.up_to_date():
        return [str(files["train"])], [str(files["eval"])] if files["eval"].stat().st_size else []
    df = pd.read_parquet(labelled).reset_index(drop=True)
    ids, labels = selection.reward_matrix(df.prompt_id, df.sample_idx, df.reward)
    bad = ~np.isin(labels[np.isfinite(labels)], (0.0, 1.0))
    if bad.any():
        raise ValueError(f"reward.samples.checker {s.checker} must return 1.0 (correct) or 0.0 (incorrect); "
                         f"got {sorted(set(labels[np.isfinite(labels)][bad]))[:5]}")
    cell = {(p, j): i for i, (p, j) in enumerate(zip(df.prompt_id, df.sample_idx))}
    held = len(ids) - min(s.eval_prompts, len(ids))
    rows: dict[str, list] = {"train": [], "eval": []}
    if r.objective == "orm":
        for (p, j), i in cell.items():
            x = df.iloc[i]
            rows["train" if ids.index(p) < held else "eval"].append(
                {"prompt": [*map(dict, x.prompt)], "completion": x.completion, "label": int(x.reward)})
    else:
        for i, good, bad_j in selection.correct_incorrect_pairs(labels, s.pairs_per_prompt, s.seed):
            c, w = df.iloc[cell[(ids[i], good)]], df.iloc[cell[(ids[i], bad_j)]]
            rows["train" if i < held else "eval"].append(
                {"prompt": [*map(dict, c.prompt)], "chosen": [{"role": "assistant", "content": c.completion}],
                 "rejected": [{"role": "assistant", "content": w.completion}], "margin": 1.0})
    for name, path in files.items():
        with open(path, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in rows[name])
    finite = labels[np.isfinite(labels)]
    both = int(sum(np.nanmax(x) == 1 and np.nanmin(x) == 0 for x in labels))
    counts = {"prompts": len(ids), "samples": int(finite.size), "correct_fraction": float(finite.mean()),
              "prompts_with_both": both, "train_rows": len(rows["train"]), "eval_rows": len(rows["eval"])}
    st.finish(counts)
    print(f"[rm_data] wrote {out}: {counts}")
    if not rows["train"]:
        raise ValueError(f"reward.source=policy_samples: no training rows from {len(ids)} prompts ({counts}); "
                         "sample more (reward.samples.n) or at a higher temperature")
    return [str(files["train"])], [str(files["eval"])] if rows["eval"] else []


def run(cfg: PipelineConfig, policy: str | None = None) -> Path:
    """Train the reward model; with reward.source=policy_samples on ``policy``'s labelled samples
    (default RUN_DIR/sft/model)."""
    from rlhf_ray.train import reward, runner

    r = cfg.reward
    if r.source == "policy_samples":
        train_files, eval_files = labelled_samples(cfg, policy or str(Path(cfg.run_dir) / "sft" / "model"))
    elif r.data.train:
        train_files = data.expand_paths(r.data.train)
        eval_files = data.expand_paths(r.data.eval) if r.data.eval else []
    elif cfg.task.name != "none":
        train_files, eval_files = [tasks.task_files(cfg.task, cfg.run_dir)["pairs"]], []
    else:
        raise config.ConfigError("reward.data.train is empty and no task is configured (task.name)")
    cfg = with_backbone(cfg)
    r, out = cfg.reward, Path(cfg.run_dir) / "rm"
    is_folder = storage.is_remote(r.model.name) or Path(r.model.name).is_dir()
    backbone = [r.model.name] if is_folder else []  # a new SFT policy retrains the RM
    st = manifest.stage("rm", out, {"reward": r}, train_files + eval_files + backbone)
    if st.up_to_date():
        return out / "model"
    kind = objectives.OBJECTIVES[r.objective].row_kind
    adapter = r.data.adapter if r.source == "files" else None  # labelled samples are written in our format
    if r.model.template or getattr(models.chat_tokenizer(r.model.name, None, r.model.trust_remote_code),
                                   "chat_template", None):
        # A chat-model RM reads prompt + completion as one conversation whose final turn it scores: the
        # doctor's final-turn checks on the first rows, before any training. (Encoders without a
        # template, MiniLM, read plain "Role: content" text: objectives.texts.)
        sft.check_template(r.model, "final_turn", r.train.template_check, "reward.train.template_check",
                           [(f"{x.file}:{x.line}", c) for x in sft.first_rows(train_files, kind, adapter)
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
    train_ds, bad_encoded = encode_dataset(rows, cfg, quarantine)
    eval_ds, bad_eval_encoded = encode_dataset(eval_rows, cfg, eval_quarantine) if eval_rows is not None else (None, 0)

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

