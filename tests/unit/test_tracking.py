"""Experiment tracking into real stores (MLflow, W&B offline, TensorBoard): a run per job, each stage's
params, figures, per-step curves and files; a tracker that cannot be reached costs one warning, not the run."""
import json
import warnings

import pytest

from rlhf_ray import config_load, manifest, tracking
from rlhf_ray.config import PipelineConfig
from wandb_offline import wandb_logged  # tests/


def finish_a_stage(run_dir):
    st = manifest.stage("sft", run_dir / "sft", {"sft": {"train": {"lr": 1e-4, "mask": "final_turn"}}}, [])
    st.begin()
    (run_dir / "sft" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 2.0 / s, "lr": 1e-4}) + "\n" for s in (1, 2, 3)))
    st.finish({"train_rows": 96, "steps": 3}, held_out={"eval_loss": 0.7})


def test_a_job_run_holds_a_nested_run_per_stage_with_params_figures_curves_and_files(tmp_path):
    import mlflow

    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}"])
    with tracking.job(cfg, "pipeline"):
        finish_a_stage(tmp_path)
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    runs = mlflow.search_runs(experiment_names=["rlhf_ray"]).set_index("tags.mlflow.runName")
    assert sorted(runs.index) == ["pipeline", "sft"]
    stage = runs.loc["sft"]
    assert stage["tags.mlflow.parentRunId"] == runs.loc["pipeline", "run_id"]
    assert stage["params.sft.train.lr"] == "0.0001" and stage["params.sft.train.mask"] == "final_turn"
    assert stage["metrics.train_rows"] == 96 and stage["metrics.held_out.eval_loss"] == 0.7
    history = mlflow.MlflowClient().get_metric_history(stage["run_id"], "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    files = [f.path for f in mlflow.MlflowClient().list_artifacts(stage["run_id"])]
    assert files == ["manifest.json"]


def test_an_unreachable_tracker_warns_once_and_the_job_goes_on(tmp_path):
    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.uri=http://127.0.0.1:9"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.job(cfg, "pipeline"):
            finish_a_stage(tmp_path)
            finish_a_stage(tmp_path)
    tracked = [w for w in caught if "experiment tracking is off" in str(w.message)]
    assert len(tracked) == 1
    assert manifest.read(tmp_path / "sft")["counts"]["steps"] == 3  # the stage itself finished


def test_tracking_off_writes_no_store(tmp_path):
    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.backend=none"])
    with tracking.job(cfg, "pipeline"):
        finish_a_stage(tmp_path)
    assert not (tmp_path / "mlruns").exists()


def test_wandb_offline_holds_each_stages_curve_on_its_own_step_axis_and_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.backend=wandb"])
    with tracking.job(cfg, "pipeline"):
        finish_a_stage(tmp_path)
    history, summary = wandb_logged(tmp_path)
    curve = {r["sft/step"]: r["sft/loss"] for r in history if "sft/loss" in r}
    assert curve == {1: 2.0, 2: 1.0, 3: pytest.approx(2 / 3)}
    assert summary["sft/train_rows"] == 96 and summary["sft/held_out.eval_loss"] == 0.7


def test_tensorboard_event_files_hold_each_stages_curve_and_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.backend=tensorboard"])
    with tracking.job(cfg, "pipeline"):
        finish_a_stage(tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "pipeline"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("sft/loss")] == [(1, 2.0), (2, 1.0), (3, 0.6667)]
    assert events.Scalars("sft/train_rows")[0].value == 96


def test_a_second_job_in_the_same_process_logs_into_its_own_run_folder(tmp_path):
    import mlflow

    for name in ("first", "second"):
        cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path / name}"])
        with tracking.job(cfg, name):
            finish_a_stage(tmp_path / name)
    for name in ("first", "second"):
        mlflow.set_tracking_uri(f"file://{tmp_path / name}/mlruns")
        runs = mlflow.search_runs(experiment_names=["rlhf_ray"])
        assert sorted(runs["tags.mlflow.runName"]) == sorted([name, "sft"])


def test_each_trained_model_gets_its_own_hub_repo_named_after_its_stage(tmp_path):
    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.backend=none",
                                             "tracking.push_to_hub=org/tiny"])
    with tracking.job(cfg, "pipeline"):
        assert tracking.hub_repo("org/tiny", tmp_path / "sft" / "model") == "org/tiny-sft"
        assert tracking.hub_repo("org/tiny", tmp_path / "rs/round1/top/sft/model") == "org/tiny-rs-round1-top-sft"


def test_a_hub_that_cannot_be_reached_costs_a_warning_with_the_command_that_uploads_later(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    model = tmp_path / "rm" / "model"
    model.mkdir(parents=True)
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    cfg = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.backend=none",
                                             "tracking.push_to_hub=org/tiny"])
    with tracking.job(cfg, "pipeline"), pytest.warns(UserWarning) as caught:
        assert tracking.push(model) is None
    assert len(caught) == 1
    assert f"upload it with: huggingface-cli upload org/tiny-rm {model}" in str(caught[0].message)
    with tracking.job(config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}", "tracking.backend=none"]), "pipeline"):
        assert tracking.push(model) is None  # no push_to_hub: nothing is tried
