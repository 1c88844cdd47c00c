"""Reward-model jobs on the shared local cluster with the embedded MiniLM backbone and real data."""
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from jobs import train_rm
from rlhf_ray import config, manifest
from rlhf_ray.config import PipelineConfig

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_bt_reward_model_on_hh_pairs(ray_cluster, shared_data, tmp_path):
    cfg = config.load(PipelineConfig, "jobs/configs/rm-hh.yaml", [
        f"run_dir={tmp_path}", f"reward.data.train=[{shared_data / 'hh_harmless_test.jsonl.gz'}]",
        "reward.data.eval_rows=32", "reward.data.limit=64", "reward.train.max_seq_len=128"])
    model_dir = train_rm.run(cfg)
    m = manifest.read(tmp_path / "rm")
    assert m["counts"]["train_rows"] == 64 and m["counts"]["eval_rows"] == 32 and m["counts"]["steps"] == 2
    assert 0.0 <= m["held_out"]["eval_accuracy"] <= 1.0 and "eval_accuracy_initial" in json.loads(
        (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()[0])
    stats = json.loads((model_dir / "reward_stats.json").read_text())
    assert stats["objective"] == "bt" and stats["reward_std"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 1


def test_orm_on_gsm8k_solutions(ray_cluster, shared_data, tmp_path):
    cfg = config.load(PipelineConfig, None, [
        f"run_dir={tmp_path}", "reward.objective=orm",
        f"reward.data.train=[{shared_data / 'gsm8k_example_model_solutions.jsonl.gz'}]",
        "reward.data.adapter=gsm8k_solutions", "reward.data.limit=64", "reward.data.eval_rows=32",
        "reward.train.max_seq_len=256", "reward.train.torch_threads=2"])
    model_dir = train_rm.run(cfg)
    held_out = manifest.read(tmp_path / "rm")["held_out"]
    assert 0.0 <= held_out["eval_auc"] <= 1.0
    assert AutoModelForTokenClassification.from_pretrained(model_dir).config.num_labels == 1
    assert torch.isfinite(torch.tensor(held_out["eval_loss"]))
