"""Reward-model jobs on the shared local cluster with the embedded MiniLM backbone (and a tiny chat model
for the process RM) and real data."""
import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from rlhf_ray.stages import reward_model
from rlhf_ray import config, config_load, manifest
from rlhf_ray.config import PipelineConfig

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.mark.slow  # MiniLM on real HH pairs; the job's logic on tiny models: the tests below
def test_bt_reward_model_on_hh_pairs(ray_cluster, shared_data, tmp_path):
    cfg = config_load.load(PipelineConfig, "rlhf_ray/configs/rm-hh.yaml", [
        f"run_dir={tmp_path}", f"reward.data.train=[{shared_data / 'hh_harmless_test.jsonl.gz'}]",
        "reward.data.eval_rows=32", "reward.data.limit=64", "reward.train.max_seq_len=128"])
    model_dir = reward_model.run(cfg)
    m = manifest.read(tmp_path / "rm")
    assert m["counts"]["train_rows"] == 64 and m["counts"]["eval_rows"] == 32 and m["counts"]["steps"] == 2
    assert 0.0 <= m["held_out"]["eval_accuracy"] <= 1.0 and "eval_accuracy_initial" in json.loads(
        (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()[0])
    stats = json.loads((model_dir / "reward_stats.json").read_text())
    assert stats["objective"] == "bt" and stats["reward_std"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 1


@pytest.mark.slow  # real GSM8K solutions; a token-head RM on a tiny model: test_a_process_rm_on_the_tiny_model...
def test_orm_on_gsm8k_solutions(ray_cluster, shared_data, tmp_path):
    cfg = config_load.load(PipelineConfig, None, [
        f"run_dir={tmp_path}", "reward.objective=orm",
        f"reward.data.train=[{shared_data / 'gsm8k_example_model_solutions.jsonl.gz'}]",
        "reward.data.adapter=gsm8k_solutions", "reward.data.limit=64", "reward.data.eval_rows=32",
        "reward.train.max_seq_len=256", "reward.train.torch_threads=2"])
    model_dir = reward_model.run(cfg)
    held_out = manifest.read(tmp_path / "rm")["held_out"]
    assert 0.0 <= held_out["eval_auc"] <= 1.0
    assert AutoModelForTokenClassification.from_pretrained(model_dir).config.num_labels == 1
    assert torch.isfinite(torch.tensor(held_out["eval_loss"]))


def test_bt_reward_model_on_the_policys_labelled_samples(ray_cluster, policy_dir, tmp_path):
    from rlhf_ray.core import rewards

    cfg = config_load.load(PipelineConfig, None, [
        f"run_dir={tmp_path}", "task.name=arithmetic", "task.sft_rows=0", "task.rm_rows=12", "task.prompt_rows=0",
        "task.eval_rows=0", "task.operands=[1,9]", "reward.source=policy_samples", "reward.samples.n=8", "reward.samples.pairs_per_prompt=2",
        "reward.samples.eval_prompts=3", "generate.max_tokens=32", "generate.max_model_len=256",
        "reward.train.epochs=1", "reward.train.max_seq_len=128", "reward.train.global_batch_size=8",
        "reward.train.micro_batch_size=8"])
    model_dir = reward_model.run(cfg, str(policy_dir))
    counts = manifest.read(tmp_path / "rm_data")["counts"]
    assert counts["prompts"] == 12 and counts["samples"] == 96 and 0 < counts["correct_fraction"] < 1
    rows = {name: [json.loads(l) for l in (tmp_path / "rm_data" / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "eval")}
    assert rows["train"] and len(rows["train"]) + len(rows["eval"]) <= 2 * counts["prompts_with_both"]
    for r in rows["train"] + rows["eval"]:  # chosen: what the checker accepts; rejected: what it does not
        answer = str(eval(r["prompt"][0]["content"].removeprefix("What is ").rstrip("?")))
        assert rewards.final_number(r["prompt"], r["chosen"][0]["content"], {"answer": answer}) == 1.0
        assert rewards.final_number(r["prompt"], r["rejected"][0]["content"], {"answer": answer}) == 0.0
    eval_prompts = {r["prompt"][0]["content"] for r in rows["eval"]}
    assert not eval_prompts & {r["prompt"][0]["content"] for r in rows["train"]}  # split by prompt
    m = manifest.read(tmp_path / "rm")
    assert m["counts"]["train_rows"] == len(rows["train"]) and m["counts"]["eval_rows"] == len(rows["eval"])
    assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_labels == 1

    # The checker must say correct or incorrect: a reward model is not trained on anything else.
    with pytest.raises(config.ConfigError, match="trains bt, margin or orm"):
        reward_model.run(config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "reward.source=policy_samples",
                                                        "reward.objective=kwise"]))


def test_a_process_rm_on_the_tiny_model_is_scored_and_evaluated(ray_cluster, shared_data, tiny_vllm_policy_dir, tmp_path):
    """A PRM (3 labels per step) trained on a tiny chat model is scored by the scoring stage
    (jobs/score.py) and evaluated by the RM evaluation stage (jobs/eval_rm.py) with one sequence score."""
    import numpy as np
    import pandas as pd

    from rlhf_ray.stages import rm_eval, scoring

    solutions = shared_data / "gsm8k_example_model_solutions.jsonl.gz"
    cfg = config_load.load(PipelineConfig, None, [
        f"run_dir={tmp_path}", "reward.objective=prm", f"reward.model.name={tiny_vllm_policy_dir}",
        f"reward.data.train=[{solutions}]", "reward.data.adapter=gsm8k_prm", "reward.data.limit=24",
        "reward.data.eval_rows=8", "reward.train.max_seq_len=384", "reward.train.global_batch_size=8",
        "reward.train.micro_batch_size=8", "reward.train.torch_threads=2"])
    model_dir = reward_model.run(cfg)
    assert AutoModelForTokenClassification.from_pretrained(model_dir).config.num_labels == 3
    assert 0.0 <= manifest.read(tmp_path / "rm")["held_out"]["eval_step_accuracy"] <= 1.0

    rows = [{"prompt_id": f"p{i}", "sample_idx": j, "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
             "completion": f"Step 1: {i} + 1 = {i + 1 + j}.\nThe answer is {i + 1 + j}.", "finish_reason": "stop"}
            for i in range(4) for j in range(2)]
    pd.DataFrame(rows).to_parquet(tmp_path / "candidates.parquet")
    scored = pd.read_parquet(scoring.score(dataclasses.replace(cfg.score, model_dir=str(model_dir)),
                                           str(tmp_path / "candidates.parquet"), str(model_dir), tmp_path / "score"))
    assert len(scored) == 8 and np.isfinite(scored.reward).all() and ((0 <= scored.reward) & (scored.reward <= 1)).all()

    report = rm_eval.run(config_load.load(PipelineConfig, None, [
        f"run_dir={tmp_path}", f"eval_rm.model_dir={model_dir}", f"eval_rm.orm=[{solutions}]", "eval_rm.orm_limit=16",
        "eval_rm.max_len=384"]))
    assert 0.0 <= report["orm_auc"] <= 1.0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_workers_train_one_model_whose_held_out_figures_the_manifest_reports(ray_cluster, tiny_policy_dir,
                                                                                 tmp_path, strategy):
    """jobs/train_rm.py with 2 Ray Train workers: the saved model, evaluated in one process on the eval
    file, gives the held-out figures the job gathered over both ranks (before the fix, each rank trained
    its own model and the figures mixed them)."""
    from rlhf_ray import models
    from rlhf_ray.cli import job
    from rlhf_ray.core import objectives as rm
    from rlhf_ray.train.reward import evaluate

    words = ["apple", "river", "stone", "cloud", "green", "quiet", "seven", "paper"]
    rows = [{"prompt": [{"role": "user", "content": f"Say a word about {w}."}],
             "chosen": [{"role": "assistant", "content": f"{w.capitalize()} is lovely, thank you."}],
             "rejected": [{"role": "assistant", "content": "No."}]} for w in words * 5]
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    run_dir = tmp_path / "run"
    argv = [None, f"run_dir={run_dir}", f"reward.model.name={tiny_policy_dir}", f"reward.data.train=[{train}]",
            f"reward.data.eval=[{held}]", "reward.scaling.num_workers=2", f"reward.scaling.strategy={strategy}",
            "reward.train.global_batch_size=8", "reward.train.micro_batch_size=2", "reward.train.lr=1e-3",
            "reward.train.max_seq_len=64", "tracking.backend=none"]
    assert job.main("train_rm", "", reward_model.run, argv) == 0
    m = manifest.read(run_dir / "rm")
    assert m["counts"]["steps"] == 4 and m["counts"]["eval_rows"] == 8
    progress = [json.loads((run_dir / "rm" / "workers" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["step"] for p in progress] == [4, 4] and progress[0]["pid"] != progress[1]["pid"]

    model_dir = run_dir / "rm" / "model"
    tok = models.load_tokenizer(str(model_dir))
    model = models.load_reward_model(str(model_dir), "bt", tok)
    initial = models.load_reward_model(str(tiny_policy_dir), "bt", tok)
    assert not torch.equal(model.backbone.score.weight, initial.backbone.score.weight)  # it trained
    encoded = [rm.encode_row(r, "bt", tok, None, 64) for r in rows[32:]]
    batch = rm.collate(encoded, "bt", tok.pad_token_id)
    alone = evaluate(model, [{"batch": batch}], "bt", "cpu")
    for key in ("eval_loss", "eval_accuracy", "eval_margin", "eval_chosen_mean", "eval_rejected_mean"):
        assert m["held_out"][key] == pytest.approx(alone[key], rel=1e-4, abs=1e-4), key
