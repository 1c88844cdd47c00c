"""Score candidates with a reward model (or an LLM judge) in a Ray Data actor pool.

    python jobs/score.py CONFIG [key=value ...]

Reads score.candidates (default RUN_DIR/generate/candidates) and writes RUN_DIR/score/scored/ (the
candidates + reward, score_tokens, score_padding) and manifest.json with scores/s and the padding
fraction. A finished stage with the same config, candidates and model is skipped.
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import scoring

if __name__ == "__main__":
    sys.exit(job.main("score", __doc__, scoring.run, sys.argv[1:]))
