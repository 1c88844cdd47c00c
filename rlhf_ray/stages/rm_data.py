"""Labelled policy samples for a reward model (``reward.source: policy_samples``): the policy answers the RM's
prompts, the checker labels each answer (as a function scorer), and RUN_DIR/rm_data/{train,eval}.jsonl hold
correct-vs-incorrect pairs (bt, margin) or labelled rows (orm), split by prompt."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from rlhf_ray import config, data, manifest, tasks
from rlhf_ray.config import PipelineConfig, ScoreConfig
from rlhf_ray.core import selection
from rlhf_ray.run_layout import RunDir
from rlhf_ray.stages import generation, scoring


def run(cfg: PipelineConfig, policy: str) -> tuple[list[str], list[str]]:
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
        prompts = [tasks.task_files(cfg.task, RunDir(cfg.run_dir).data)["rm_prompts"]]
    else:
        raise config.ConfigError("reward.source=policy_samples needs reward.samples.prompts or a task (task.name)")
    out = RunDir(cfg.run_dir).rm_data
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
