"""The whole path on one config: SFT → reward model → (RM evaluation) → rejection sampling →
evaluation → report. Each stage is skipped when its manifest is up to date, so an interrupted run
resumes where it stopped.

    python jobs/pipeline.py jobs/configs/tiny.yaml [key=value ...]

SFT runs on sft.data.train or the generated task (without either, policy.name is used as the SFT
policy). The reward model trains on the SFT policy's own samples labelled by a checker
(reward.source=policy_samples), or on reward.data.train / the generated task's synthetic pairs; the
RM evaluation runs when eval_rm names data (pairs, bon_file or orm). Rejection sampling runs with the
RM, its matched random baseline and, with rs.rule_reward, the rule reward as the upper reference.
Writes RUN_DIR/report.html.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (`python jobs/pipeline.py`), the repository root is not on the path; the stage jobs are.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import eval_rm, evaluate, rejection_sampling, sft, train_rm  # noqa: E402
from rlhf_ray import job, report  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402


def run(cfg: PipelineConfig) -> Path:
    if cfg.sft.data.train or cfg.task.name != "none":
        policy = str(sft.run(cfg))
    else:
        policy = cfg.policy.name  # an instruction-tuned model a user names: no SFT stage
    train_rm.run(cfg, policy)
    e = cfg.eval_rm
    if e.pairs or e.bon_file or e.orm:
        eval_rm.run(cfg)
    finals = rejection_sampling.run(cfg, policy) if cfg.rs.rounds else {}
    evaluate.run(cfg, {"sft": policy, **finals})
    out = report.build(cfg.run_dir, cfg.rs.rounds)
    print(f"[pipeline] report: {out}")
    return out


if __name__ == "__main__":
    sys.exit(job.main("pipeline", __doc__, run, sys.argv[1:]))
