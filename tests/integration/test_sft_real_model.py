"""SFT of the real embedded SmolLM2-135M on the Self-Instruct seed tasks lowers held-out loss."""
import json

import pytest

from rlhf_ray import config_load, manifest
from rlhf_ray.config import PipelineConfig
from rlhf_ray.stages import sft

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def test_smollm2_sft_on_seed_tasks_lowers_held_out_loss(ray_cluster, shared_data, tmp_path):
    cfg = config_load.load(PipelineConfig, "rlhf_ray/configs/sft-alpaca.yaml", [
        f"run_dir={tmp_path}", f"sft.data.train=[{shared_data / 'alpaca_seed_tasks.jsonl'}]", "sft.data.adapter=alpaca_seed",
        "sft.data.limit=64", "sft.data.eval_rows=16", "sft.train.max_seq_len=256"])
    sft.run(cfg)
    metrics = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    before, after = metrics[0]["eval_loss_initial"], metrics[-1]["eval_loss"]
    print(f"held-out loss {before:.4f} -> {after:.4f} over {len(metrics)} steps")
    assert after < before
    assert manifest.read(tmp_path / "sft")["counts"]["eval_rows"] == 16
