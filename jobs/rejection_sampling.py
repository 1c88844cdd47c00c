"""Rejection sampling (RLHF book ch. 9): generate N per prompt → score → keep the best → SFT on them.

    python jobs/rejection_sampling.py CONFIG [key=value ...]

Each round r writes RUN_DIR/rs/round{r}/: generate/, score/, select/ (kept.jsonl, random.jsonl with
the matched random baseline, pairs.jsonl with best/worst preference pairs, manifest.json) and
top/sft/model (the new policy; random/sft/model for the baseline). With rs.rule_reward, the same
rounds scored by that rule instead of the RM go to RUN_DIR/rs_rule/round{r}/ (the upper reference). Round r+1 starts from round r's
policy. Every stage is skipped when its manifest matches, so a job interrupted anywhere resumes there.
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import rejection_sampling

if __name__ == "__main__":
    sys.exit(job.main("rejection_sampling", __doc__, rejection_sampling.run, sys.argv[1:]))
