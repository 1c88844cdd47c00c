"""Instruction tuning (SFT) on Ray Train.

    python jobs/sft.py CONFIG [key=value ...]
    ray job submit --working-dir . -- python jobs/sft.py jobs/configs/tiny.yaml

Writes RUN_DIR/sft/: model/ (HF folder: safetensors, tokenizer, chat template), metrics.jsonl,
quarantine.jsonl (bad rows, if any), manifest.json. A finished stage with the same config and inputs
is skipped; an interrupted one resumes from its last checkpoint.
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import sft

if __name__ == "__main__":
    sys.exit(job.main("sft", __doc__, sft.run, sys.argv[1:]))
