"""SFT through Ray Train on the shared local cluster: artifacts, resume, worker failure."""
import gzip
import json
import os
import signal
import threading
import time

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_ray import config_load, manifest, tracking

from rlhf_ray.cli import job
from rlhf_ray.core import chat
from rlhf_ray.config import PipelineConfig
from rlhf_ray.stages import sft
from wandb_offline import wandb_logged  # tests/

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def tiny_cfg(run_dir, policy, *extra):
    return config_load.load(PipelineConfig, "rlhf_ray/configs/tiny.yaml", [
        f"run_dir={run_dir}", f"policy.name={policy}", "sft.train.cpu_bf16=false", "sft.train.lr=3e-3",
        "sft.train.micro_batch_size=4", "sft.train.global_batch_size=8", "task.sft_rows=48", *extra])


def test_sft_job_writes_a_loadable_chat_model_and_skips_when_up_to_date(ray_cluster, tiny_policy_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(tmp_path, tiny_policy_dir, "sft.data.eval_rows=8", "sft.train.epochs=2",
                   "tracking.backend=tensorboard")
    with tracking.job(cfg, "sft"):  # as jobs/sft.py runs it
        model_dir = sft.run(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "sft"))
    events.Reload()
    assert [e.step for e in events.Scalars("sft/loss")] == list(range(1, 11))
    m = manifest.read(tmp_path / "sft")
    assert m["counts"]["train_rows"] == 40 and m["counts"]["eval_rows"] == 8 and m["counts"]["steps"] == 10
    metrics = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    assert [r["step"] for r in metrics] == list(range(1, 11))
    assert metrics[-1]["loss"] < metrics[0]["loss"] and "eval_loss" in metrics[-1]
    assert all(r["padding_fraction"] == 0 for r in metrics)   # packed
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tok.chat_template and (model_dir / "model.safetensors").exists()
    prompt = chat.render_prompt([{"role": "user", "content": "What is 12 + 30?"}], tok)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                         eos_token_id=chat.end_of_turn_ids(tok), pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(prompt)
    card = ModelCard.load(model_dir / "README.md")  # the folder describes itself, with the manifest's figures
    assert "sft" in card.data.tags and '"train_rows": 40' in card.text and m["config_hash"] in card.text
    # Same config and inputs: the stage is skipped (no new metrics written).
    before = (tmp_path / "sft" / "manifest.json").stat().st_mtime
    sft.run(cfg)
    assert (tmp_path / "sft" / "manifest.json").stat().st_mtime == before
    # Another config trains afresh: not resumed from the 2-epoch run's final checkpoint (past this plan's end).
    trained = model.state_dict()
    sft.run(tiny_cfg(tmp_path, tiny_policy_dir, "sft.data.eval_rows=8", "sft.train.epochs=1"))
    assert [json.loads(line)["step"] for line in open(tmp_path / "sft" / "metrics.jsonl")] == list(range(1, 6))
    again = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(again[k], trained[k]) for k in trained), "the other config's weights were exported"


def test_steps_reach_the_tracker_while_the_stage_trains(ray_cluster, tiny_policy_dir, tmp_path, monkeypatch, capsys):
    import time

    import mlflow

    live, finished = [], []
    log_step, log_stage = tracking.log_step, tracking.log_stage
    monkeypatch.setattr(tracking, "log_step", lambda out, m: (live.append((m["step"], time.time())), log_step(out, m)))
    monkeypatch.setattr(tracking, "log_stage", lambda *a: (finished.append(time.time()), log_stage(*a)))
    cfg = tiny_cfg(tmp_path, tiny_policy_dir, "sft.train.epochs=1")
    with tracking.job(cfg, "sft"):
        sft.run(cfg)
    assert "[tracking] mlflow run " in capsys.readouterr().out
    # Every step was handed to the tracker by the driver before the stage finished, in order.
    logged = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    assert [s for s, _ in live] == [r["step"] for r in logged] == list(range(1, 7))
    assert max(t for _, t in live) <= finished[0]
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    runs = mlflow.search_runs(experiment_names=["rlhf_ray"])
    (stage,) = [r for _, r in runs.iterrows() if r["tags.stage"] == "sft"]  # the job's own run is named sft too
    history = mlflow.MlflowClient().get_metric_history(stage["run_id"], "loss")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], pytest.approx(r["loss"])) for r in logged]
    assert stage["status"] == "FINISHED" and stage["params.sft.train.lr"] == "0.003"


def test_killed_worker_resumes_from_checkpoint_with_the_same_step_count(ray_cluster, tiny_policy_dir, tmp_path):
    cfg = tiny_cfg(tmp_path, tiny_policy_dir, "task.sft_rows=160", "sft.train.epochs=1", "sft.train.micro_batch_size=4",
                   "sft.train.global_batch_size=4", "sft.train.checkpoint_every=5", "sft.scaling.max_failures=2")
    progress = tmp_path / "sft" / "workers" / "rank0.json"
    killed = {}

    def kill_mid_run():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            try:
                state = json.loads(progress.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                state = {"step": 0}
            if 12 <= state["step"] < 30:
                os.kill(state["pid"], signal.SIGKILL)
                killed.update(state)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_mid_run, daemon=True)
    watcher.start()
    sft.run(cfg)
    watcher.join(timeout=5)
    assert killed, "the worker was never killed mid-run"
    steps = [json.loads(line)["step"] for line in open(tmp_path / "sft" / "metrics.jsonl")]
    assert steps[-1] == 40 and sorted(set(steps)) == list(range(1, 41))
    # The restarted worker went back to the last checkpoint (a multiple of 5) and repeated only what was lost.
    assert len(steps) > 40 and steps.count(killed["step"]) == 2
    kept = [torch.load(tmp_path / "sft" / "ray_train" / "sft" / c / "trainer_state.pt", weights_only=False)
            for c in _checkpoints(tmp_path)]
    assert [s["step"] for s in kept] == [35, 40] and manifest.read(tmp_path / "sft")["counts"]["steps"] == 40
    # Step 35's checkpoint can resume training; the final one carries no optimizer state.
    assert "optimizer" in kept[0] and "optimizer" not in kept[1]


def _checkpoints(tmp_path):
    return sorted(p.name for p in (tmp_path / "sft" / "ray_train" / "sft").iterdir()
                  if p.is_dir() and p.name.startswith("checkpoint"))


def test_bad_rows_are_quarantined_and_counted(ray_cluster, tiny_policy_dir, tmp_path, monkeypatch):
    data = tmp_path / "convs.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}
    lines = [json.dumps(good)] * 12 + ["{broken", json.dumps({"messages": [{"role": "user", "content": "Hi"}]}),
                                       json.dumps({"messages": [{"role": "user", "content": "x " * 400},
                                                                {"role": "assistant", "content": "ok"}]})]
    data.write_text("\n".join(lines) + "\n")
    held_out = tmp_path / "eval.jsonl"  # its bad rows are quarantined too, apart from the training rows'
    held_out.write_text("\n".join([json.dumps(good), "{broken", json.dumps(good), json.dumps(good)]) + "\n")
    cfg = tiny_cfg(tmp_path, tiny_policy_dir, f"sft.data.train=[{data}]", f"sft.data.eval=[{held_out}]",
                   "sft.train.max_seq_len=64", "tracking.backend=wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with tracking.job(cfg, "sft"):  # as jobs/sft.py runs it
        sft.run(cfg)
    counts = manifest.read(tmp_path / "sft")["counts"]
    history, summary = wandb_logged(tmp_path)  # the offline W&B run, read back
    assert [r["sft/step"] for r in history if "sft/loss" in r] == list(range(1, counts["steps"] + 1))
    assert summary["sft/rows_quarantined"] == 2
    assert counts["rows_quarantined"] == 2 and counts["quarantined_after_tokenization"] == 1
    assert counts["train_rows"] == 12
    bad = [json.loads(line) for line in open(tmp_path / "sft" / "quarantine.jsonl")]
    assert sorted(b["line"] for b in bad) == [13, 14, 15]
    assert any("no trained tokens left after truncation" in b["reason"] for b in bad)
    assert counts["eval_rows"] == 3 and counts["eval_rows_quarantined"] == 1
    assert [json.loads(line)["line"] for line in open(tmp_path / "sft" / "quarantine_eval.jsonl")] == [2]


def test_bad_rows_fail_the_job_with_file_line_and_field(ray_cluster, tiny_policy_dir, tmp_path, capsys):
    data = tmp_path / "convs.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "robot", "content": "Hi"}]}) + "\n")
    rc = job.main("sft", "", sft.run, ["rlhf_ray/configs/tiny.yaml", f"run_dir={tmp_path}", f"policy.name={tiny_policy_dir}",
                       f"sft.data.train=[{data}]", "sft.data.on_bad_rows=error"])
    assert rc == 1
    assert f"{data}:1: messages[0].role: unknown role 'robot'" in capsys.readouterr().err


def test_a_truncated_gzip_fails_the_job_in_one_line_naming_it_even_under_quarantine(ray_cluster, tiny_policy_dir,
                                                                                     tmp_path, capsys):
    data = tmp_path / "convs.jsonl.gz"
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    data.write_bytes(gzip.compress((good + "\n").encode() * 40)[:-30])
    rc = job.main("sft", "", sft.run, ["rlhf_ray/configs/tiny.yaml", f"run_dir={tmp_path}", f"policy.name={tiny_policy_dir}",
                                       f"sft.data.train=[{data}]", "sft.data.on_bad_rows=quarantine"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"sft: {data}: cannot be read: EOFError") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_workers_on_gloo_train_the_planned_steps(ray_cluster, tiny_policy_dir, tmp_path, strategy):
    cfg = tiny_cfg(tmp_path, tiny_policy_dir, "sft.scaling.num_workers=2", "sft.train.micro_batch_size=2",
                   "sft.train.global_batch_size=8", "sft.train.epochs=1", f"sft.scaling.strategy={strategy}")
    sft.run(cfg)
    # 48 rows over 2 workers, 8 sequences a step (2 per micro-batch × 2 accumulation × 2 workers).
    assert manifest.read(tmp_path / "sft")["counts"]["steps"] == 6
    progress = [json.loads((tmp_path / "sft" / "workers" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["step"] for p in progress] == [6, 6] and progress[0]["pid"] != progress[1]["pid"]
    metrics = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == list(range(1, 7)) and metrics[-1]["loss"] < metrics[0]["loss"]
    # The checkpoint holds the full weights (FSDP gathers its shards), and they moved.
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model")
    initial = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    assert all(a.shape == b.shape for a, b in zip(trained.parameters(), initial.parameters()))
    assert not torch.equal(trained.lm_head.weight, initial.lm_head.weight)


# FSDP2 with LoRA in the slow tier: the suite's time is kept for what nothing else covers.
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_lora_on_two_workers_saves_the_adapter_and_a_merged_model_vllm_stages_read(ray_cluster, tiny_policy_dir,
                                                                                   tmp_path, strategy):
    from peft import PeftModel

    cfg = tiny_cfg(tmp_path, tiny_policy_dir, "sft.scaling.num_workers=2", "sft.train.micro_batch_size=2",
                   "sft.train.epochs=1", "sft.train.lora_r=4", "sft.train.lr=0.05", "sft.train.gradient_checkpointing=true",
                   f"sft.scaling.strategy={strategy}")
    model_dir = sft.run(cfg)
    adapter = tmp_path / "sft" / "adapter"
    assert (adapter / "adapter_config.json").exists() and (model_dir / "model.safetensors").exists()
    assert manifest.read(tmp_path / "sft")["counts"]["steps"] == 6
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_policy_dir), adapter).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert (merged(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-4  # the adapters learned


def test_a_template_that_would_train_the_wrong_tokens_stops_the_job_before_training(tiny_policy_dir, tmp_path,
                                                                                     capsys):
    import trl

    qwen3 = os.path.join(os.path.dirname(trl.__file__), "chat_templates", "qwen3.jinja")
    data = tmp_path / "convs.jsonl"
    dialog = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
              {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    data.write_text(json.dumps({"messages": dialog}) + "\n")
    argv = ["rlhf_ray/configs/tiny.yaml", f"run_dir={tmp_path}", f"policy.name={tiny_policy_dir}",
            f"policy.template={qwen3}", f"sft.data.train=[{data}]"]
    assert job.main("sft", "", sft.run, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sft: {data}:1: chat template {qwen3} with mask=all_assistant: turns 1..")
    assert "mask: final_turn" in err and "template_check=warn" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()


def test_a_row_the_template_would_mask_wrongly_is_refused_or_quarantined_wherever_it_sits(ray_cluster, tiny_policy_dir,
                                                                                          tmp_path, capsys):
    """40 single-turn rows pass the preflight (it reads the first 32); the 3-turn row at line 41, which TRL's
    plain qwen3 would train only the last turn of, is refused by name, or quarantined and counted."""
    import trl

    qwen3 = os.path.join(os.path.dirname(trl.__file__), "chat_templates", "qwen3.jinja")
    one = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    three = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."},
             {"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "6."},
             {"role": "user", "content": "4 + 4?"}, {"role": "assistant", "content": "8, of course."}]
    data = tmp_path / "convs.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [one] * 40 + [three] + [one] * 7))
    argv = ["rlhf_ray/configs/tiny.yaml", f"run_dir={tmp_path / 'run'}", f"policy.name={tiny_policy_dir}",
            f"policy.template={qwen3}", f"sft.data.train=[{data}]", "sft.train.cpu_bf16=false",
            "sft.train.micro_batch_size=4", "sft.train.global_batch_size=8", "tracking.backend=none"]
    assert job.main("sft", "", sft.run, argv + ["sft.data.on_bad_rows=error"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sft: {data}:41: messages: 1 trained spans for 3 assistant turns"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "sft" / "metrics.jsonl").exists()

    assert job.main("sft", "", sft.run, argv + ["sft.data.on_bad_rows=quarantine"]) == 0
    m = manifest.read(tmp_path / "run" / "sft")
    assert m["counts"]["quarantined_after_tokenization"] == 1 and m["counts"]["train_rows"] == 47
    quarantined = [json.loads(line) for line in open(tmp_path / "run" / "sft" / "quarantine.jsonl")]
    assert [(q["line"], q["field"]) for q in quarantined] == [(41, "messages")]
