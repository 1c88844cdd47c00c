"""Evaluate policies on held-out prompts: sampled answers scored by the proxy (the reward model) and,

    python jobs/evaluate.py CONFIG [key=value ...]      (the same as: rlhf-ray evaluate CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/evaluate.py CONFIG [key=value ...]

``python jobs/evaluate.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
