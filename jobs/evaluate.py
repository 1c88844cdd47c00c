"""Evaluate policies on held-out prompts: sampled answers scored by the proxy (the reward model) and,
where the prompts carry a gold answer, by the gold reward (``eval.gold``); one greedy answer per prompt
(``eval.greedy``); the SFT policy's best-of-N curve; paired bootstrap intervals for every comparison.

    python jobs/evaluate.py CONFIG [key=value ...]

Writes RUN_DIR/eval/<policy>/ (sampled/{generate,score}, greedy/generate), RUN_DIR/eval/results.json
and RUN_DIR/eval/per_prompt.json (each policy's per-prompt values, the bootstrap's input).
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import policy_eval

if __name__ == "__main__":
    sys.exit(job.main("evaluate", __doc__, policy_eval.run, sys.argv[1:]))
