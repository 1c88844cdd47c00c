"""The whole path on one config: SFT → reward model → (RM evaluation) → rejection sampling →

    python jobs/pipeline.py CONFIG [key=value ...]      (the same as: rlhf-ray pipeline CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/pipeline.py CONFIG [key=value ...]

``python jobs/pipeline.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
