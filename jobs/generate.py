"""N completions per prompt with vLLM actor pools on Ray Data.

    python jobs/generate.py CONFIG [key=value ...]

Reads generate.prompts (or the generated task's prompts), renders each in generation-prompt mode,
and writes RUN_DIR/generate/: candidates/ (Parquet: prompt_id, sample_idx, prompt, completion,
num_prompt_tokens, num_completion_tokens, finish_reason, plus the prompt rows' other columns such as
a gold answer), quarantine.jsonl (bad or too-long prompts) and manifest.json. A finished stage with the
same config, model and prompts is skipped.
"""
import sys

from rlhf_ray.cli import job
from rlhf_ray.stages import generation

if __name__ == "__main__":
    sys.exit(job.main("generate", __doc__, generation.run, sys.argv[1:]))
