"""The tiny pipeline (`make run`'s config, rlhf_ray/configs/tiny.yaml) end to end, measured: wall time,
the evaluation's results with their intervals, the selections, and the reward model trained on the
SFT policy's labelled samples against one trained on the task's synthetic pairs (the other
``reward.source``), both scored on the same held-out SFT candidates.

    .venv/bin/python bench/tiny_pipeline.py [--run-dir runs/bench-tiny] [key=value ...]

Writes bench/results/tiny_pipeline_results.json (paths relative to the run folder). A run folder that
already holds finished stages (``make run``'s runs/tiny) is resumed, and its wall time then says so
(``resumed``); every stage's own wall time comes from its manifest either way.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)
from rlhf_ray import config_load, manifest
from rlhf_ray.core import evaluation, rewards, selection  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402
from rlhf_ray.stages import pipeline, reward_model, scoring  # noqa: E402


def synthetic_rm(cfg: PipelineConfig, candidates: Path) -> dict:
    """The same RM recipe on the task's synthetic pairs; its held-out accuracy and best-of-N curve on
    the SFT policy's held-out candidates."""
    import pandas as pd

    other = dataclasses.replace(cfg, run_dir=str(Path(cfg.run_dir) / "compare_synthetic_rm"),
                                reward=dataclasses.replace(cfg.reward, source="files",
                                                           data=dataclasses.replace(cfg.reward.data, eval_rows=32)))
    model_dir = reward_model.run(other, str(Path(cfg.run_dir) / "sft" / "model"))
    scored = scoring.score(cfg.score, str(candidates), str(model_dir), Path(other.run_dir) / "score")
    df = pd.read_parquet(scored)
    df = df[~df.greedy]  # the sampled answers only: the greedy one is not a best-of-N candidate
    n = max(cfg.eval.bon_n)
    _, proxy = selection.reward_matrix(df.prompt_id, df.sample_idx, df.reward, n)
    gold_fn = rewards.load(cfg.eval.gold)
    gold = [gold_fn(p, c, r) for p, c, r in zip(df.prompt, df.completion, df.to_dict("records"))]
    _, gold = selection.reward_matrix(df.prompt_id, df.sample_idx, gold, n)
    return {"held_out": manifest.read(Path(other.run_dir) / "rm")["held_out"],
            "best_of_n": evaluation.best_of_n_curve(proxy, gold, cfg.eval.bon_n, cfg.eval.n_boot)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/bench-tiny")
    ap.add_argument("--out", default=str(common.RESULTS / "tiny_pipeline_results.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = config_load.load(PipelineConfig, ROOT / "rlhf_ray" / "configs" / "tiny.yaml", [f"run_dir={args.run_dir}", *args.overrides])
    root = Path(cfg.run_dir)
    resumed = (root / "sft" / "manifest.json").exists()
    with common.timed() as t:
        pipeline.run(cfg)
    wall = t["seconds"]
    results = json.loads((root / "eval" / "results.json").read_text())
    # Each stage's own wall time, as the pipeline recorded it (a resumed run keeps its first run's).
    stages = {str(m.parent.relative_to(root)): json.loads(m.read_text()).get("seconds")
              for m in sorted(root.rglob("manifest.json"))
              if not {"compare_synthetic_rm", "mlruns"} & set(m.parts)}  # mlruns: MLflow's copies of them
    out = {
        "config": "rlhf_ray/configs/tiny.yaml", "overrides": args.overrides, **common.machine(),
        "pipeline_wall_clock_s": round(wall, 1), "resumed": resumed,
        "stage_seconds": stages, "stage_seconds_total": round(sum(v or 0 for v in stages.values()), 1),
        "results": results,
        "rm": {"policy_samples": {"data": manifest.read(root / "rm_data")["counts"] if cfg.reward.source == "policy_samples" else None,
                                  "held_out": manifest.read(root / "rm")["held_out"]},
               "synthetic_pairs": synthetic_rm(cfg, root / "eval" / "sft" / "generate" / "candidates")},
        "selection": {chain: manifest.read(root / chain / f"round{cfg.rs.rounds}" / "select")["counts"]
                      for chain in ("rs", "rs_rule") if (root / chain).exists()},
    }
    common.write(args.out, out, {str(root): "RUN_DIR"})
    print(f"[bench] pipeline {wall:.0f} s; {results.get('verdict', '')}")


if __name__ == "__main__":
    main()
