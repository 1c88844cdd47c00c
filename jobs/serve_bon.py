"""Serve best-of-N: an OpenAI-compatible endpoint on Ray Serve (generator, scorer, ingress).

    python jobs/serve_bon.py CONFIG [key=value ...]      (the same as: rlhf-ray serve CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/serve_bon.py CONFIG [key=value ...]

``python jobs/serve_bon.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
