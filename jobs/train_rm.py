"""Reward-model training on Ray Train: Bradley-Terry, margin, K-wise, Plackett-Luce, ORM or PRM.

    python jobs/train_rm.py CONFIG [key=value ...]      (the same as: rlhf-ray train-rm CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/train_rm.py CONFIG [key=value ...]

``python jobs/train_rm.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train-rm", *sys.argv[1:]]))
