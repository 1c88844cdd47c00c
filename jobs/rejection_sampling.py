"""Rejection sampling (RLHF book ch. 9): generate N per prompt → score → keep the best → SFT on them.

    python jobs/rejection_sampling.py CONFIG [key=value ...]      (the same as: rlhf-ray rs CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/rejection_sampling.py CONFIG [key=value ...]

``python jobs/rejection_sampling.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["rs", *sys.argv[1:]]))
