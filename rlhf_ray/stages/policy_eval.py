"""Policy evaluation stage: held-out prompts answered by each policy (sampled, and greedy, from one
engine), scored by the proxy (the reward model) and the gold reward; the SFT policy's best-of-N curve;
paired bootstrap intervals for every comparison → RUN_DIR/eval/results.json and per_prompt.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from rlhf_ray import data, storage, tasks
from rlhf_ray.core import evaluation, rewards, selection, stats
from rlhf_ray.config import PipelineConfig
from rlhf_ray.run_layout import RunDir
from rlhf_ray.stages import generation, scoring

# Comparisons reported when both policies were evaluated: (better, worse), as the question a reader asks.
COMPARISONS = [("rs", "sft"), ("rs", "random"), ("rs_rule", "sft"), ("rs_rule", "rs"), ("random", "sft")]


def eval_prompts(cfg: PipelineConfig) -> list[str]:
    if cfg.eval.prompts:
        return data.expand_paths(cfg.eval.prompts)
    return [tasks.task_files(cfg.task, RunDir(cfg.run_dir).data)["eval"]]


def _gold_matrix(df, gold_fn, n: int) -> np.ndarray | None:
    if "answer" not in df:
        return None
    values = gold_fn([list(p) for p in df.prompt], list(df.completion), df.to_dict("records"))
    return selection.reward_matrix(df.prompt_id, df.sample_idx, values, n)[1]


def sample(cfg: PipelineConfig, policy: str, rm: str, n: int, out: Path) -> dict:
    """n samples per held-out prompt at generate.temperature (and, with eval.greedy, one greedy answer,
    from the same engine), scored: {"ids", "proxy", "gold"} matrices and, with eval.greedy,
    {"greedy_ids", "greedy_gold"} (gold entries None when the prompts carry no answer)."""
    import pandas as pd

    e = cfg.eval
    g = dataclasses.replace(cfg.generate, n=n, greedy=e.greedy, adapter=e.adapter, limit=e.limit)
    candidates = generation.generate(g, cfg.policy.template, policy, eval_prompts(cfg), out / "generate")
    df = pd.read_parquet(scoring.score(cfg.score, str(candidates), rm, out / "score"))
    gold_fn = rewards.load_batched(e.gold)
    sampled, greedy = df[~df.greedy].reset_index(drop=True), df[df.greedy].reset_index(drop=True)
    ids, proxy = selection.reward_matrix(sampled.prompt_id, sampled.sample_idx, sampled.reward, n)
    found = {"ids": ids, "proxy": proxy, "gold": _gold_matrix(sampled, gold_fn, n)}
    if e.greedy:
        greedy = greedy.assign(sample_idx=0)  # one column: the greedy answer
        gold = _gold_matrix(greedy, gold_fn, 1)
        found.update(greedy_ids=sorted(set(greedy.prompt_id)), greedy_gold=None if gold is None else gold[:, 0])
    return found


def _aligned(ids: list, values: np.ndarray, common: list) -> np.ndarray:
    where = {p: i for i, p in enumerate(ids)}
    return values[[where[p] for p in common]]


def run(cfg: PipelineConfig, policies: dict[str, str] | None = None, rm: str | None = None) -> dict:
    """Each of ``policies`` (name → model; default: those of the run folder) sampled on the held-out
    prompts and scored by ``rm`` (default: score.model_dir, else RUN_DIR/rm/model) and the gold reward."""
    layout = RunDir(cfg.run_dir)
    policies = policies or {k: str(p) for k, p in layout.final_policies(cfg.rs.rounds).items()
                            if k == "sft" or Path(p).exists()}
    rm = cfg.score.model_dir or rm or str(layout.rm_model)
    e = cfg.eval
    results: dict = {"policies": {}, "best_of_n": {}, "comparisons": {}}
    per_prompt: dict = {}
    for name, policy in policies.items():
        n = max(e.bon_n) if name == "sft" else e.policy_samples
        found = sample(cfg, policy, rm, n, layout.eval_samples(name))
        ids, proxy, gold = found["ids"], found["proxy"], found["gold"]
        entry = {"model": storage.uri(policy) or policy, "prompts": len(ids), "samples_per_prompt": n,
                 "proxy": float(np.nanmean(proxy)), "gold": None if gold is None else float(np.nanmean(gold))}
        per_prompt[name] = {"prompt_id": ids, "proxy": np.nanmean(proxy, axis=1).tolist()}
        if gold is not None:
            per_prompt[name]["gold"] = np.nanmean(gold, axis=1).tolist()
        if found.get("greedy_gold") is not None:
            entry["greedy_gold"] = float(found["greedy_gold"].mean())
            per_prompt[name]["greedy_gold"] = _aligned(found["greedy_ids"], found["greedy_gold"], ids).tolist()
        results["policies"][name] = entry
        if name == "sft":
            results["best_of_n"] = evaluation.best_of_n_curve(proxy, gold, e.bon_n, e.n_boot)
    results["comparisons"] = compare(per_prompt, e.n_boot)
    if "rs - sft" in results["comparisons"]:
        results["verdict"] = evaluation.verdict(results["comparisons"]["rs - sft"]["gold"], "The RS policy",
                                                "the SFT policy", "gold reward per sample")
    layout.eval.mkdir(parents=True, exist_ok=True)
    layout.results.write_text(json.dumps(results, indent=2))
    layout.per_prompt.write_text(json.dumps(per_prompt))
    print(f"[eval] {json.dumps(results['policies'])}")
    if "verdict" in results:
        print(f"[eval] {results['verdict']}")
    return results


def compare(per_prompt: dict, n_boot: int) -> dict:
    """Paired bootstrap intervals of the gold differences (sampled and greedy) for COMPARISONS, over
    the prompts both policies answered."""
    out = {}
    for a, b in COMPARISONS:
        if a not in per_prompt or b not in per_prompt or "gold" not in per_prompt[a]:
            continue
        common = sorted(set(per_prompt[a]["prompt_id"]) & set(per_prompt[b]["prompt_id"]))
        diffs = {}
        for metric in ("gold", "greedy_gold"):
            if metric in per_prompt[a] and metric in per_prompt[b]:
                x, y = (_aligned(per_prompt[k]["prompt_id"], np.asarray(per_prompt[k][metric]), common) for k in (a, b))
                diffs[metric] = stats.paired_difference(x, y, n_boot)
        out[f"{a} - {b}"] = diffs
    return out
