"""Reward-model training on Ray Train: Bradley-Terry, margin, K-wise, Plackett-Luce, ORM or PRM.

    python jobs/train_rm.py CONFIG [key=value ...]

With reward.source=policy_samples it first samples the SFT policy on the RM's prompts and labels the
samples with reward.samples.checker (RUN_DIR/rm_data/: generate/, label/, train.jsonl, eval.jsonl).
Writes RUN_DIR/rm/: model/ (HF *ForSequenceClassification or *ForTokenClassification folder, plus
reward_stats.json with the eval set's reward mean and std), metrics.jsonl, quarantine.jsonl,
manifest.json with held-out accuracy (pairs), AUC (ORM) or step accuracy (PRM).
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import reward_model

if __name__ == "__main__":
    sys.exit(job.main("train_rm", __doc__, reward_model.run, sys.argv[1:]))
