"""N completions per prompt with vLLM actor pools on Ray Data.

    python jobs/generate.py CONFIG [key=value ...]      (the same as: rlhf-ray generate CONFIG [key=value ...])
    ray job submit --working-dir . -- python jobs/generate.py CONFIG [key=value ...]

``python jobs/generate.py --help``: what it writes and every config key it reads.
"""
import sys

from rlhf_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
