"""Reward-model evaluation stage: pairwise accuracy per subset (RewardBench format), the best-of-N
protocol on the AlpacaEval candidates and ORM AUC → RUN_DIR/eval_rm/report.json."""
from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray import cluster, data, manifest, storage
from rlhf_ray.core import evaluation
from rlhf_ray.config import EvalRMConfig, PipelineConfig, ScoreConfig
from rlhf_ray.run_layout import RunDir


def _last(items: list, n: int) -> list:
    return items[-n:] if n else items


def pair_items(e) -> tuple[list[dict], list[str]]:
    rows = [r for f in data.expand_paths(e.pairs) for r in _tagged(f, "pairwise", e.pairs_adapter)]
    rows = _last(rows, e.pairs_limit)
    items = [{"key": f"{i}:{side}", "prompt": r["prompt"], "completion": r[side]}
             for i, r in enumerate(rows) for side in ("chosen", "rejected")]
    return items, [r["subset"] for r in rows]


def _tagged(path: str, kind: str, adapter: str | None):
    for r in data.read_records([path], kind, adapter):
        yield {**r, "subset": r.get("subset") or Path(path).name.split(".")[0]}


def bon_items(e) -> tuple[list[dict], list[list[float]]]:
    n_max, items, gold = max(e.bon_n), [], []
    records = [raw for line, raw, problem in data.iter_raw(e.bon_file) if problem is None]
    for i, rec in enumerate(records[: e.bon_limit or None]):
        prompt = [{"role": "user", "content": rec["instruction"]}]
        gold.append(rec["gpt4t_pref_vs_ref"][:n_max])
        items += [{"key": f"{i}:{j}", "prompt": prompt, "completion": c}
                  for j, c in enumerate(rec["candidates"][:n_max])]
    return items, gold


def orm_items(e) -> tuple[list[dict], list[int]]:
    rows = _last(list(data.read_records(data.expand_paths(e.orm), "orm", e.orm_adapter)), e.orm_limit)
    items = [{"key": str(i), "prompt": r["prompt"], "completion": r["completion"]}
             for i, r in enumerate(rows)]
    return items, [int(r["label"]) for r in rows]


def score(items: list[dict], model_dir: str, e: EvalRMConfig) -> dict[str, float]:
    import ray.data

    from rlhf_ray.engines.scorers import score_dataset

    s = ScoreConfig(template=e.template, max_len=e.max_len, batch_size=e.batch_size, actors=(1, e.actors),
                    threads=e.threads, gpus_per_actor=e.gpus_per_actor, dtype=e.dtype)
    ds = score_dataset(ray.data.from_items(items), model_dir, s)
    return {r["key"]: float(r["reward"]) for r in ds.select_columns(["key", "reward"]).iter_rows()}


def run(cfg: PipelineConfig, rm: str | Path | None = None) -> dict:
    """eval_rm's figures for eval_rm.model_dir, else ``rm``, else RUN_DIR/rm/model."""
    layout, e = RunDir(cfg.run_dir), cfg.eval_rm
    out = layout.eval_rm
    model_dir = storage.publish(e.model_dir or rm or layout.rm_model)  # scorer actors on any node
    cluster.connect()
    report: dict = {"model_dir": model_dir}
    if e.pairs:
        items, subsets = pair_items(e)
        s = score(items, model_dir, e)
        n = len(subsets)
        report["pairwise"] = evaluation.pairwise_by_subset(
            subsets, [s[f"{i}:chosen"] for i in range(n)], [s[f"{i}:rejected"] for i in range(n)])
    if e.bon_file:
        items, gold = bon_items(e)
        s = score(items, model_dir, e)
        rewards = [[s[f"{i}:{j}"] for j in range(len(g))] for i, g in enumerate(gold)]
        report["best_of_n"] = evaluation.best_of_n_protocol(rewards, gold, e.bon_n)
    if e.orm:
        items, labels = orm_items(e)
        s = score(items, model_dir, e)
        report["orm_auc"] = evaluation.auc([s[str(i)] for i in range(len(labels))], labels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    manifest.stage("eval_rm", out, {"eval_rm": e}, [*e.pairs, *([e.bon_file] if e.bon_file else []), *e.orm]).finish({})
    print(json.dumps(report, indent=2))
    return report

