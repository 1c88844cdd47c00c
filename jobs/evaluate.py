"""Evaluate policies on held-out prompts with the proxy (reward model) and, where the prompts carry a
gold answer, the gold reward: the SFT policy's best-of-N curve, the rejection-sampling policy and its
matched random baseline.

    python jobs/evaluate.py CONFIG [key=value ...]

Writes RUN_DIR/eval/{sft,rs,random}/ (generate/, score/) and RUN_DIR/eval/results.json.
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
from rlhf_ray import data, evaluation, job, selection, storage, tasks  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402


def eval_prompts(cfg: PipelineConfig) -> list[str]:
    if cfg.eval.prompts:
        return data.expand_paths(cfg.eval.prompts)
    return [tasks.task_files(cfg.task, cfg.run_dir)["eval"]]


def sample(cfg: PipelineConfig, policy: str, n: int, out: Path):
    """n samples per held-out prompt, scored: (prompt ids, proxy matrix, gold matrix or None)."""
    import pandas as pd

    e = cfg.eval
    gen_cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, n=n, adapter=e.adapter, limit=e.limit))
    candidates = generate_job.stage(gen_cfg, policy, eval_prompts(cfg), out / "generate")
    rm = score_job.rm_dir(cfg)
    df = pd.read_parquet(score_job.stage(cfg, str(candidates), rm, out / "score"))
    ids, proxy = selection.reward_matrix(df.prompt_id, df.sample_idx, df.reward, n)
    if "answer" not in df:
        return proxy, None
    _, gold = selection.reward_matrix(df.prompt_id, df.sample_idx,
                                      [tasks.gold_reward(c, a) for c, a in zip(df.completion, df.answer)], n)
    return proxy, gold


def summary(proxy: np.ndarray, gold: np.ndarray | None) -> dict:
    """Mean proxy and gold reward of one sample (the policy itself)."""
    return {"proxy": float(np.nanmean(proxy)), "gold": float(np.nanmean(gold)) if gold is not None else None,
            "prompts": int(proxy.shape[0]), "samples_per_prompt": int(proxy.shape[1])}


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray | None, ns) -> dict:
    """For each N: mean proxy of the RM's pick among each prompt's first N samples and, with a gold
    reward, the pick's gold and the oracle (``evaluation.best_of_n_protocol``, as eval_rm reports it)."""
    protocol = evaluation.best_of_n_protocol(proxy, gold, ns) if gold is not None else {}
    out = {}
    for n in ns:
        picks = [selection.best_of_n(row[:n]) for row in proxy]
        g = protocol.get(n, {})
        out[str(n)] = {"proxy": float(np.mean([row[p] for row, p in zip(proxy, picks)])),
                       "gold": g.get("rm_pick"), "gold_oracle": g.get("oracle"), "gold_random": g.get("random")}
    return out


def _policies_in(root: Path, rounds: int) -> dict[str, str]:
    """The run folder's SFT policy and, when they exist, the last round's RS and baseline policies."""
    found = {"sft": root / "sft" / "model", "rs": root / "rs" / f"round{rounds}" / "top" / "sft" / "model",
             "random": root / "rs" / f"round{rounds}" / "random" / "sft" / "model"}
    return {k: str(p) for k, p in found.items() if k == "sft" or p.exists()}


def run(cfg: PipelineConfig, policies: dict[str, str] | None = None) -> dict:
    root = Path(cfg.run_dir)
    policies = policies or _policies_in(root, cfg.rs.rounds)
    results: dict = {"policies": {}}
    for name, policy in policies.items():
        n = max(cfg.eval.bon_n) if name == "sft" else cfg.eval.policy_samples
        proxy, gold = sample(cfg, policy, n, root / "eval" / name)
        results["policies"][name] = {"model": storage.uri(policy) or policy, **summary(proxy, gold)}
        if name == "sft":
            results["best_of_n"] = best_of_n_curve(proxy, gold, cfg.eval.bon_n)
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "results.json").write_text(json.dumps(results, indent=2))
    print(f"[eval] {json.dumps(results)}")
    return results


if __name__ == "__main__":
    sys.exit(job.main("evaluate", __doc__, lambda cfg: run(cfg), sys.argv[1:]))
