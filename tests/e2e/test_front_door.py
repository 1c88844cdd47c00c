"""The front door as a user meets it: the pipeline job with the tiny config's *relative* run folder,
started from the repository root, then `make run`'s exact command line in CI's conditions on the same
run folder (every stage is up to date, so it resumes to the report). Small overrides keep it short."""
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
# Four SFT steps teach the answer format, so the policy answers some questions right and some wrong,
# which the labelled-sample reward model needs (the untrained policy rambles and is almost never right).
# Lean: no random baseline or rule-reward chain (each a Ray stage; unit and job tests cover them).
SMALL = ["task.sft_rows=32", "task.rm_rows=8", "task.prompt_rows=8", "task.eval_rows=8",
         "sft.train.epochs=2", "reward.samples.n=8", "reward.samples.eval_prompts=2", "reward.train.epochs=1",
         "generate.n=4", "generate.max_tokens=16", "rs.baseline=false", "rs.rule_reward=", "rs.train.epochs=1",
         "eval.bon_n=[1,2,4]", "eval.policy_samples=2", "eval.n_boot=1000"]


@pytest.fixture
def relative_run_dir():
    name = f"runs/pytest-front-door-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(REPO / name, ignore_errors=True)


def test_pipeline_with_a_relative_run_dir_then_make_run(ray_cluster, relative_run_dir, monkeypatch):
    import mlflow
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # the session's cluster
    job = subprocess.run([sys.executable, "jobs/pipeline.py", "rlhf_ray/configs/tiny.yaml", f"run_dir={relative_run_dir}",
                          *SMALL], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-5000:]
    root = REPO / relative_run_dir
    results = json.loads((root / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"sft", "rs"} and all(p["prompts"] == 8 for p in results["policies"].values())
    d = results["comparisons"]["rs - sft"]["gold"]
    assert d["lo"] <= d["estimate"] <= d["hi"] and d["prompts"] == 8
    assert results["verdict"].startswith("The RS policy")
    rm_data = json.loads((root / "rm_data" / "manifest.json").read_text())["counts"]
    assert rm_data["samples"] == 64 and rm_data["train_rows"] > 0
    assert all(0 <= p["greedy_gold"] <= 1 for p in results["policies"].values())  # from the sampling engine
    page = (root / "report.html").read_text()
    assert "sft_loss.png" in page and "no SFT metrics" not in page and "gap closed" in page
    # The run's MLflow store: the job's run, a nested run per stage, the SFT loss curve, the report.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(f"file://{root}/mlruns")
    runs = mlflow.search_runs(experiment_names=["rlhf_ray"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert list(parent["tags.mlflow.runName"]) == ["pipeline"]
    stages = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert {"sft", "rm", "rm_data"} <= set(stages["tags.stage"]) and len(stages) == len(runs) - 1
    sft = stages[stages["tags.stage"] == "sft"]["run_id"].iloc[0]
    assert len(mlflow.MlflowClient().get_metric_history(sft, "loss")) >= 1
    assert "report.html" in [f.path for f in mlflow.MlflowClient().list_artifacts(parent["run_id"].iloc[0])]
    # The console: a progress line per long stage, training lines once, none of Ray Data's progress blocks.
    assert f"[generate {relative_run_dir}/rs/round1] 8/8 prompts (100%)" in job.stdout
    assert f"[score {relative_run_dir}/rs/round1] 32/32 candidates (100%)" in job.stdout
    assert "Running Dataset" not in job.stdout + job.stderr
    assert "Reporting training result" not in job.stdout + job.stderr  # Ray Train's full metrics per step
    steps = re.findall(r"\[\w+\] step \d+/\d+ .*", job.stdout)  # after Ray's worker prefix
    assert any(s.startswith("[sft] step 1/") for s in steps) and any(s.startswith("[reward] step 1/") for s in steps)
    assert len(steps) == len(set(steps)), steps  # each step shown once

    # `make run` as the README writes it, with CI's environment (no RAY_ADDRESS: it starts its own Ray).
    ci_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ci_env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_AUTH_MODE="disabled")
    config = " ".join(["rlhf_ray/configs/tiny.yaml", f"run_dir={relative_run_dir}", *SMALL])
    make = subprocess.run(["make", "run", f"CONFIG={config}"], cwd=REPO, env=ci_env, capture_output=True, text=True,
                          timeout=500)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-5000:]
    assert f"{root / 'rm'} is up to date" in make.stdout and "[pipeline] report:" in make.stdout
