"""Instruction tuning (SFT) on Ray Train.

    python jobs/sft.py CONFIG [key=value ...]      (the same as: rlhf-ray sft CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/sft.py CONFIG [key=value ...]

``python jobs/sft.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
