"""Rejection sampling (RLHF book ch. 9): generate N per prompt → score → keep the best → SFT on them.

    python jobs/rejection_sampling.py CONFIG [key=value ...]

Each round r writes RUN_DIR/rs/round{r}/: generate/, score/, select/ (kept.jsonl, random.jsonl with
the matched random baseline, pairs.jsonl with best/worst preference pairs, manifest.json) and
top/sft/model (the new policy; random/sft/model for the baseline). With rs.rule_reward, the same
rounds scored by that rule instead of the RM go to RUN_DIR/rs_rule/round{r}/ (the upper reference). Round r+1 starts from round r's
policy. Every stage is skipped when its manifest matches, so a job interrupted anywhere resumes there.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import generate as generate_job  # noqa: E402
from jobs import score as score_job  # noqa: E402
from jobs import sft as sft_job  # noqa: E402
from rlhf_ray import config, job, manifest, rewards, selection  # noqa: E402
from rlhf_ray.config import PipelineConfig, ScoreConfig  # noqa: E402


def select(cfg: PipelineConfig, scored: Path, out: Path, min_reward: float | None = None) -> dict[str, Path]:
    """Scored candidates → kept / random-baseline conversations and best/worst pairs (jsonl); with
    ``min_reward``, candidates scoring below it are never kept."""
    import pandas as pd

    rs = cfg.rs
    chash = config.config_hash({**{k: getattr(rs, k) for k in ("strategy", "top_k", "dedup", "drop_truncated", "seed")},
                                "min_reward": min_reward})
    inputs = manifest.fingerprint([scored])
    paths = {name: out / f"{name}.jsonl" for name in ("kept", "random", "pairs")}
    if manifest.up_to_date(out, chash, inputs):
        print(f"[select] {out} is up to date; skipping")
        return paths
    df = pd.read_parquet(scored).reset_index(drop=True)  # positions, whatever index the files carry
    ids, r = selection.reward_matrix(df.prompt_id, df.sample_idx, df.reward)
    cell = {(p, j): i for i, (p, j) in enumerate(zip(df.prompt_id, df.sample_idx))}
    usable = r.copy()
    # One pick per prompt never repeats a completion, and its random baseline must draw as the policy
    # samples, repeats included (without them it drew less often the modal, more often right, answer).
    if rs.dedup and rs.strategy != "top_per_prompt":
        texts = [[df.completion[cell[(p, j)]] if (p, j) in cell else "" for j in range(r.shape[1])] for p in ids]
        usable[~selection.dedup_mask(texts)] = np.nan
    if rs.drop_truncated:
        truncated = df.finish_reason == "length"
        for p, j in zip(df.prompt_id[truncated], df.sample_idx[truncated]):
            usable[ids.index(p), j] = np.nan
    if min_reward is not None:
        usable[r < min_reward] = np.nan
    if rs.strategy == "top_per_prompt":
        kept, rand = selection.top_per_prompt(usable), selection.random_per_prompt(usable, rs.seed)
    else:
        k = rs.top_k or len(ids)
        kept, rand = selection.top_k_overall(usable, k), selection.random_k_overall(usable, k, rs.seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = lambda picks: [df.iloc[cell[(ids[i], j)]] for i, j in picks]  # noqa: E731
    _write(paths["kept"], [_conversation(x) for x in rows(kept)])
    _write(paths["random"], [_conversation(x) for x in rows(rand)])
    pairs = selection.best_worst_pairs(usable)
    _write(paths["pairs"], [_pair(df.iloc[cell[(ids[i], b)]], df.iloc[cell[(ids[i], w)]]) for i, b, w in pairs])
    counts = {"prompts": len(ids), "candidates": int(np.isfinite(r).sum()), "usable": int(np.isfinite(usable).sum()),
              "kept": len(kept), "random": len(rand), "pairs": len(pairs),
              "reward_mean_all": float(np.nanmean(r)), "reward_mean_kept": _mean(rows(kept), "reward"),
              "reward_mean_random": _mean(rows(rand), "reward")}
    if "answer" in df:
        gold_fn = rewards.load(cfg.eval.gold)  # once, not per row
        gold = lambda x: gold_fn(list(x.prompt), x.completion, x.to_dict())  # noqa: E731
        counts.update(gold_mean_all=float(np.mean([gold(x) for _, x in df.iterrows()])),
                      gold_mean_kept=float(np.mean([gold(x) for x in rows(kept)] or [np.nan])),
                      gold_mean_random=float(np.mean([gold(x) for x in rows(rand)] or [np.nan])))
    manifest.write(out, "select", config.to_dict(cfg.rs), chash, inputs, counts)
    print(f"[select] {out}: {counts}")
    return paths


def _mean(rows, key: str) -> float:
    return float(np.mean([x[key] for x in rows])) if rows else float("nan")


def _conversation(row) -> dict:
    return {"messages": [*map(dict, row.prompt), {"role": "assistant", "content": row.completion}],
            "prompt_id": row.prompt_id, "reward": float(row.reward)}


def _pair(best, worst) -> dict:
    return {"prompt": [*map(dict, best.prompt)], "chosen": [{"role": "assistant", "content": best.completion}],
            "rejected": [{"role": "assistant", "content": worst.completion}],
            "margin": float(best.reward - worst.reward)}


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r, default=str) + "\n" for r in rows)


def finetune(cfg: PipelineConfig, policy: str, conversations: Path, run_dir: Path) -> str:
    """SFT with the SFT job's code, initialised from ``policy``, on the selected conversations."""
    sft_cfg = dataclasses.replace(
        cfg, run_dir=str(run_dir), policy=dataclasses.replace(cfg.policy, name=policy),
        sft=dataclasses.replace(cfg.sft, data=dataclasses.replace(cfg.sft.data, train=(str(conversations),),
                                                                  eval=(), eval_rows=0, limit=0),
                                train=cfg.rs.train, scaling=cfg.rs.scaling))
    return str(sft_job.run(sft_cfg))


def run(cfg: PipelineConfig, policy: str | None = None) -> dict[str, str]:
    """All rounds from ``policy`` (default: generate.model_dir, else RUN_DIR/sft/model); returns the
    final policies {"rs": ..., "random": ..., "rs_rule": ...} (the latter two with rs.baseline and
    rs.rule_reward)."""
    root = Path(cfg.run_dir)
    start = policy or cfg.generate.model_dir or str(root / "sft" / "model")
    rm = score_job.rm_dir(cfg)
    prompts = generate_job.prompt_files(cfg)
    policy, random_policy, rule_policy = start, None, start
    for r in range(1, cfg.rs.rounds + 1):
        out = root / "rs" / f"round{r}"
        candidates = generate_job.stage(cfg.generate, cfg.policy.template, policy, prompts, out / "generate")
        picked = select(cfg, score_job.stage(cfg.score, str(candidates), rm, out / "score"), out / "select")
        if cfg.rs.baseline:
            random_policy = finetune(cfg, policy, picked["random"], out / "random")
        if cfg.rs.rule_reward:
            rule_policy = rule_round(cfg, rule_policy, candidates if r == 1 else None, prompts, root / "rs_rule" / f"round{r}")
        policy = finetune(cfg, policy, picked["kept"], out / "top")
    return {"rs": policy, **({"random": random_policy} if random_policy else {}),
            **({"rs_rule": rule_policy} if cfg.rs.rule_reward else {})}


def rule_round(cfg: PipelineConfig, policy: str, candidates: Path | None, prompts: list[str], out: Path) -> str:
    """One round of RS with the rule reward (rs.rule_reward) as the scorer: the upper reference an RM's
    RS is measured against. Round 1 reuses the RM chain's candidates (the same policy sampled them)."""
    if candidates is None:
        candidates = generate_job.stage(cfg.generate, cfg.policy.template, policy, prompts, out / "generate")
    rule = ScoreConfig(scorer="function", function=cfg.rs.rule_reward, rows_per_call=cfg.score.rows_per_call,
                       actors=cfg.score.actors)
    # STaR / RFT keep only the answers the rule accepts.
    picked = select(cfg, score_job.stage(rule, str(candidates), "", out / "score"), out / "select", cfg.rs.rule_min)
    return finetune(cfg, policy, picked["kept"], out / "top")


if __name__ == "__main__":
    sys.exit(job.main("rejection_sampling", __doc__, run, sys.argv[1:]))
