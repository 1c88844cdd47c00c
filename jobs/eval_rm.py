"""Reward-model evaluation: pairwise accuracy per subset (RewardBench format), the best-of-N protocol on
the AlpacaEval candidates, and ORM AUC.

    python jobs/eval_rm.py CONFIG [key=value ...]

Writes RUN_DIR/eval_rm/report.json and manifest.json.
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import rm_eval

if __name__ == "__main__":
    sys.exit(job.main("eval_rm", __doc__, rm_eval.run, sys.argv[1:]))
