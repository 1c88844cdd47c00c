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
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import pipeline

if __name__ == "__main__":
    sys.exit(job.main("pipeline", __doc__, pipeline.run, sys.argv[1:]))
