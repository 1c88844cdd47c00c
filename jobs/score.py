"""Score candidates with a reward model, an LLM judge or a rule in a Ray Data actor pool.

    python jobs/score.py CONFIG [key=value ...]      (the same as: rlhf-ray score CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/score.py CONFIG [key=value ...]

``python jobs/score.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
