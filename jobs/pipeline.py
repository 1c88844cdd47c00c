"""The whole path on one config: SFT → reward model → RM evaluation, each stage skipped when its
manifest is up to date, so an interrupted run resumes where it stopped.

    python jobs/pipeline.py jobs/configs/tiny.yaml [key=value ...]

Stages without data in the config are skipped (the reward model needs reward.data.train; the RM
evaluation needs eval_rm.pairs, bon_file or orm). Rejection sampling, best-of-N evaluation and the
run report join this job as they land.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (`python jobs/pipeline.py`), the repository root is not on the path; the stage jobs are.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import eval_rm, sft, train_rm  # noqa: E402
from rlhf_ray import job  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402


def run(cfg: PipelineConfig) -> None:
    sft.run(cfg)
    if cfg.reward.data.train:
        train_rm.run(cfg)
    e = cfg.eval_rm
    if e.pairs or e.bon_file or e.orm:
        eval_rm.run(cfg)


if __name__ == "__main__":
    sys.exit(job.main("pipeline", __doc__, run, sys.argv[1:]))
