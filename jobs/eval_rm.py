"""Reward-model evaluation: pairwise accuracy per subset (RewardBench format), the best-of-N protocol on

    python jobs/eval_rm.py CONFIG [key=value ...]      (the same as: rlhf-ray eval-rm CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/eval_rm.py CONFIG [key=value ...]

``python jobs/eval_rm.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["eval-rm", *sys.argv[1:]]))
