"""The two reward models the README's RM configs train, trained and evaluated end to end: Bradley-Terry
on HH-harmless (rlhf_ray/configs/rm-hh.yaml), then scored with the AlpacaEval best-of-16 protocol; the GSM8K
outcome RM (rm-hh.yaml's settings with the overrides below), then its AUC on the held-out solutions.

    .venv/bin/python bench/rm_runs.py [--run-dir runs/bench-rm] [--bon-limit 200]

Writes bench/results/rm_runs.json: each run's counts, held-out figures and evaluation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)
from rlhf_ray import config_load, manifest  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402
from rlhf_ray.stages import reward_model, rm_eval  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def runs(bon_limit: int) -> dict[str, tuple[str, list[str]]]:
    return {
        "hh_bt_minilm": ("rm-hh.yaml", [f"reward.data.train=[{DATA / 'hh_harmless_test.jsonl.gz'}]",
                                        f"eval_rm.bon_file={DATA / 'alpacaeval_bon16_tulu2dpo13b_compact.jsonl.gz'}",
                                        f"eval_rm.bon_limit={bon_limit}"]),
        # An outcome RM on the GSM8K model solutions; its held-out rows are the file's last 400.
        "gsm8k_orm_minilm": ("rm-hh.yaml", [
            "run_dir=runs/rm-gsm8k-orm", "reward.objective=orm", "reward.data.adapter=gsm8k_solutions",
            f"reward.data.train=[{DATA / 'gsm8k_example_model_solutions.jsonl.gz'}]", "reward.data.eval_rows=400",
            "reward.data.limit=2000", "reward.train.lr=1e-4", "reward.train.max_seq_len=256",
            f"eval_rm.orm=[{DATA / 'gsm8k_example_model_solutions.jsonl.gz'}]", "eval_rm.orm_limit=400"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/bench-rm")
    ap.add_argument("--bon-limit", type=int, default=200, help="AlpacaEval prompts scored (805 in the file)")
    ap.add_argument("--out", default=str(common.RESULTS / "rm_runs.json"))
    args = ap.parse_args()
    out = common.machine()
    for name, (cfg_file, evals) in runs(args.bon_limit).items():
        run_dir = Path(args.run_dir).resolve() / name
        cfg = config_load.load(PipelineConfig, ROOT / "rlhf_ray" / "configs" / cfg_file, [f"run_dir={run_dir}", *evals])
        with common.timed() as t:
            reward_model.run(cfg)
        report = rm_eval.run(cfg)
        m = manifest.read(run_dir / "rm")
        out[name] = {"config": f"rlhf_ray/configs/{cfg_file}", "overrides": evals, "train_seconds": round(t["seconds"], 1),
                     "counts": m["counts"], "held_out": m["held_out"],
                     "evaluation": {k: v for k, v in report.items() if k != "model_dir"}}
    common.write(args.out, out, {str(Path(args.run_dir).resolve()): "RUN_DIR", str(DATA): "../shared/data"})


if __name__ == "__main__":
    main()
