"""Rejection sampling stages (RLHF book ch. 9): generate N per prompt → score → select → SFT on the kept."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from rlhf_ray import manifest
from rlhf_ray.core import rewards, selection
from rlhf_ray.config import PipelineConfig, RSConfig, ScoreConfig
from rlhf_ray.run_layout import KEPT, Round, RunDir
from rlhf_ray.stages import generation, scoring
from rlhf_ray.stages.sft import finetune


def select(rs: RSConfig, gold: str, scored: Path, out: Path, min_reward: float | None = None) -> dict[str, Path]:
    """Scored candidates → kept / random-baseline conversations and best/worst pairs (jsonl); with
    ``min_reward``, candidates scoring below it are never kept. ``gold`` (module:callable) measures
    the picks where the candidates carry an answer."""
    import pandas as pd

    section = {"strategy": rs.strategy, "top_k": rs.top_k, "dedup": rs.dedup, "drop_truncated": rs.drop_truncated,
               "seed": rs.seed, "min_reward": min_reward}
    st = manifest.stage("select", out, section, [scored])
    paths = {"kept": out / KEPT, **{name: out / f"{name}.jsonl" for name in ("random", "pairs")}}
    if st.up_to_date():
        return paths
    df = pd.read_parquet(scored).reset_index(drop=True)  # positions, whatever index the files carry
    ids, r = selection.reward_matrix(df.prompt_id, df.sample_idx, df.reward)
    cell = {(p, j): i for i, (p, j) in enumerate(zip(df.prompt_id, df.sample_idx))}
    at = lambda column, missing: [[df[column][cell[(p, j)]] if (p, j) in cell else missing  # noqa: E731
                                   for j in range(r.shape[1])] for p in ids]
    if rs.strategy == "top_k_overall" and rs.top_k > int(np.isfinite(r).sum()):
        raise ValueError(f"rs.top_k={rs.top_k}: only {int(np.isfinite(r).sum())} scored candidates in {scored}; "
                         f"keep fewer, or sample more (generate.n, generate.prompts)")
    usable, kept, rand = selection.choose(
        r, rs.strategy, rs.top_k, rs.seed, texts=at("completion", "") if rs.dedup else None,
        truncated=np.array(at("finish_reason", "")) == "length" if rs.drop_truncated else None,
        min_reward=min_reward)
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
        gold_fn = rewards.load_batched(gold)  # once, not per row
        values = lambda xs: gold_fn([list(x.prompt) for x in xs], [x.completion for x in xs],  # noqa: E731
                                    [x.to_dict() for x in xs])
        counts.update(gold_mean_all=float(np.mean(values([x for _, x in df.iterrows()]))),
                      gold_mean_kept=float(np.mean(values(rows(kept)) or [np.nan])),
                      gold_mean_random=float(np.mean(values(rows(rand)) or [np.nan])))
    st.finish(counts)
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


def run(cfg: PipelineConfig, policy: str | None = None, rm: str | None = None) -> dict[str, str]:
    """All rounds from ``policy`` (default: generate.model_dir, else RUN_DIR/sft/model), scored by ``rm``
    (default: score.model_dir, else RUN_DIR/rm/model); returns the final policies {"rs": ..., "random": ...,
    "rs_rule": ...} (the latter two with rs.baseline and rs.rule_reward)."""
    layout = RunDir(cfg.run_dir)
    start = policy or cfg.generate.model_dir or str(layout.sft_model)
    rm = cfg.score.model_dir or rm or str(layout.rm_model)
    prompts = generation.prompt_files(cfg)
    policy, random_policy, rule_policy = start, None, start
    for r in range(1, cfg.rs.rounds + 1):
        out = layout.rs_round(r)
        candidates = generation.generate(cfg.generate, cfg.policy.template, policy, prompts, out.generate)
        scored = scoring.score(cfg.score, str(candidates), rm, out.score)
        picked = select(cfg.rs, cfg.eval.gold, scored, out.select)
        if cfg.rs.baseline:
            random_policy = _finetune(cfg, policy, picked["random"], out.random)
        if cfg.rs.rule_reward:
            rule_policy = rule_round(cfg, rule_policy, candidates if r == 1 else None, prompts, layout.rule_round(r))
        policy = _finetune(cfg, policy, picked["kept"], out.top)
    return {"rs": policy, **({"random": random_policy} if random_policy else {}),
            **({"rs_rule": rule_policy} if cfg.rs.rule_reward else {})}


def _finetune(cfg: PipelineConfig, policy: str, conversations: Path, out: Path) -> str:
    """The SFT stage on selected conversations, from ``policy``, with rs.train and rs.scaling."""
    return finetune(dataclasses.replace(cfg.policy, name=policy), conversations, cfg.sft.data, cfg.rs.train,
                    cfg.rs.scaling, out)


def rule_round(cfg: PipelineConfig, policy: str, candidates: Path | None, prompts: list[str], out: Round) -> str:
    """One round of RS with the rule reward (rs.rule_reward) as the scorer: the upper reference an RM's
    RS is measured against. Round 1 reuses the RM chain's candidates (the same policy sampled them)."""
    if candidates is None:
        candidates = generation.generate(cfg.generate, cfg.policy.template, policy, prompts, out.generate)
    rule = ScoreConfig(scorer="function", function=cfg.rs.rule_reward, rows_per_call=cfg.score.rows_per_call,
                       actors=cfg.score.actors)
    # STaR / RFT keep only the answers the rule accepts.
    scored = scoring.score(rule, str(candidates), "", out.score)
    picked = select(cfg.rs, cfg.eval.gold, scored, out.select, cfg.rs.rule_min)
    return _finetune(cfg, policy, picked["kept"], out.top)
