"""Experiment tracking: one run per job; each stage's config, figures, per-step curves and files in it.

A training stage's per-step figures reach the tracker while it trains (``log_step``: rank 0's reports,
which Ray Train's controller passes to the driver, ``train.runner.fit``); when a stage finishes
(``manifest.Stage.finish``) its config section is logged as params, its manifest counts and held-out
figures as metrics, any step not logged live from ``metrics.jsonl``, and its manifest and quarantine files
as artifacts. Only the driver talks to the tracker; no Ray worker does. The job prints its run and where
to browse it when it starts. Backends (``tracking.backend``):

- ``mlflow`` (default): a nested run per stage under the job's run, in ``tracking.uri``,
  ``MLFLOW_TRACKING_URI``, or a local file store in ``RUN_DIR/mlruns`` (browse it with a full ``mlflow``
  install: ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/tiny/mlruns``).
- ``wandb``: one W&B run (``tracking.experiment`` is the project); each stage's curves under its folder
  name with their own step axis (``WANDB_MODE=offline`` works without a network).
- ``tensorboard``: event files in ``RUN_DIR/tensorboard``, a tag per stage and figure.

A tracker that is missing, down or misconfigured costs one warning and no more tracking; it never fails
or holds up a run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

_state: dict = {"backend": None, "run_dir": None, "hub": "", "private": True, "live": {}}


def _guarded(fn):
    """Tracking errors become one warning, then tracking is off for the rest of the job."""
    def call(*args, **kwargs):
        if _state["backend"] is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any tracker failure is the tracker's, not the run's
            _state["backend"] = None
            warnings.warn(f"experiment tracking is off for the rest of this job: {type(e).__name__}: {e}",
                          stacklevel=2)
            return None
    return call


@contextlib.contextmanager
def job(cfg, name: str):
    """The job's run for ``cfg.tracking`` (the parent of its stages'); a no-op when the backend is none."""
    t = cfg.tracking
    run_dir = Path(cfg.run_dir).absolute()
    _state.update(run_dir=run_dir, hub=t.push_to_hub, private=t.hub_private)
    if t.backend != "none":
        _state["backend"] = _BACKENDS[t.backend]()
        where = _guarded(lambda: _state["backend"].start(t, run_dir, t.run_name or name))()
        if where:
            print(f"[tracking] {where}", flush=True)
    try:
        yield
    finally:
        if _state["backend"] is not None:
            _guarded(lambda: _state["backend"].end())()
        _state.update(backend=None, run_dir=None, hub="", live={})


def live() -> bool:
    """Whether a tracker takes figures now (the training runner then streams its steps to ``log_step``)."""
    return _state["backend"] is not None


@_guarded
def log_step(out: Path, metrics: dict) -> None:
    """One training step's figures (rank 0's report) while the stage that writes ``out`` trains."""
    label = _label(out) or Path(out).name
    step = int(metrics["step"])
    _state["backend"].step(label, step, _step_figures(metrics))
    _state["live"][label] = max(step, _state["live"].get(label, 0))


@_guarded
def log_stage(name: str, out: Path, section: dict, manifest: dict) -> None:
    """A finished stage: its config, figures, per-step curves and files."""
    label = _label(out) or name  # rs/round1/top/sft
    figures = {**_flat(manifest.get("counts", {})), **_flat(manifest.get("held_out") or {}, "held_out"),
               **({"seconds": manifest["seconds"]} if "seconds" in manifest else {})}
    steps = out / "metrics.jsonl"
    rows = [json.loads(line) for line in steps.read_text().splitlines() if line.strip()] if steps.exists() else []
    logged = _state["live"].pop(label, 0)  # steps already streamed while the stage trained
    history = [(int(r["step"]), _step_figures(r)) for r in rows if int(r["step"]) > logged]
    files = [out / f for f in ("manifest.json", "quarantine.jsonl", "quarantine_eval.jsonl") if (out / f).exists()]
    _state["backend"].stage(name, label, _flat(section), {k: float(v) for k, v in figures.items() if _number(v)},
                            history, files)


def _label(out: Path) -> str | None:
    try:
        return Path(out).absolute().relative_to(_state["run_dir"]).as_posix()
    except (TypeError, ValueError):
        return None


def hub_repo(prefix: str, model_dir: Path) -> str:
    """The hub repo of a model folder: ``org/tiny`` and RUN_DIR/rs/round1/top/sft/model → ``org/tiny-rs-round1-top-sft``."""
    label = (_label(model_dir) or Path(model_dir).parent.name).removesuffix("/model").replace("/", "-")
    return f"{prefix}-{label}"


def push(model_dir: Path) -> str | None:
    """With ``tracking.push_to_hub``, uploads a finished model folder (weights, tokenizer, model card) to
    its own hub repo (created private unless ``tracking.hub_private=false``). A hub that cannot be
    reached or refuses costs one warning with the command that uploads it later; the run goes on."""
    if not _state["hub"]:
        return None
    repo = hub_repo(_state["hub"], model_dir)
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, private=_state["private"], exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(model_dir), commit_message="rlhf_ray")
    except Exception as e:  # noqa: BLE001 - the model is saved; an upload can be done later
        warnings.warn(f"push_to_hub: {model_dir} was not uploaded to {repo} ({type(e).__name__}: {str(e)[:300]}); "
                      f"upload it with: huggingface-cli upload {repo} {model_dir}", stacklevel=2)
        return None
    print(f"[hub] uploaded {model_dir} to https://huggingface.co/{repo}", flush=True)
    return repo


@_guarded
def log_artifacts(paths: list[Path]) -> None:
    """Files of the job's run (the report and its figures)."""
    _state["backend"].artifacts(paths)


@_guarded
def log_metrics(metrics: dict, prefix: str = "") -> None:
    """Figures of the job's run (the evaluation's results, flattened)."""
    _state["backend"].metrics({k: float(v) for k, v in _flat(metrics, prefix).items() if _number(v)})


class _MLflow:
    def start(self, t, run_dir: Path, name: str) -> None:
        # Fail fast instead of retrying a dead server for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = t.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"file://{run_dir}/mlruns"
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it in maintenance mode
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating a new experiment" before a job's output
        self.mlflow = mlflow
        self.env_uri = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri exports it; end() puts it back
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment(t.experiment)
        run = mlflow.start_run(run_name=name)
        self.client, self.experiment_id, self.parent, self.stages = mlflow.MlflowClient(), experiment.experiment_id, \
            run.info.run_id, {}
        browse = f"MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {uri}" if uri.startswith("file:") else uri
        return f"mlflow run {run.info.run_id} ({name}, experiment {t.experiment}); browse: {browse}"

    def _stage_run(self, label: str) -> str:
        """The stage's nested run under the job's, made at its first live step or at its finish."""
        if label not in self.stages:
            run = self.client.create_run(self.experiment_id, run_name=label, tags={"mlflow.parentRunId": self.parent})
            self.stages[label] = run.info.run_id
        return self.stages[label]

    def _metrics(self, run_id: str, curve: list) -> None:
        for i in range(0, len(curve), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=curve[i:i + 1000])

    def step(self, label, step, values) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics(self._stage_run(label), [Metric(k, v, now, step) for k, v in values.items()])

    def stage(self, name, label, params, figures, history, files) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id, now = self._stage_run(label), int(time.time() * 1000)
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(run_id, params=items[i:i + 100])
        self.client.log_batch(run_id, tags=[RunTag("stage", name)])
        self._metrics(run_id, [Metric(k, v, now, 0) for k, v in figures.items()]
                      + [Metric(k, v, now, step) for step, values in history for k, v in values.items()])
        for f in files:
            self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id)
        del self.stages[label]

    def artifacts(self, paths) -> None:
        for p in paths:
            self.mlflow.log_artifact(str(p))

    def metrics(self, figures: dict) -> None:
        self.mlflow.log_metrics(figures)

    def end(self) -> None:
        for run_id in self.stages.values():  # a stage that streamed steps and then failed
            self.client.set_terminated(run_id, "FAILED")
        self.mlflow.end_run()
        if self.env_uri is None:  # the next job in this process must not log into this one's store
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self.env_uri


class _WandB:
    def start(self, t, run_dir: Path, name: str) -> None:
        import wandb

        self.wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=t.experiment, name=name, dir=str(run_dir), reinit="create_new")
        self.axes: set[str] = set()
        return f"wandb run {self.run.id} ({name}, project {t.experiment}): {self.run.url or run_dir / 'wandb'}"

    def step(self, label, step, values) -> None:
        if label not in self.axes:
            self.run.define_metric(f"{label}/*", step_metric=f"{label}/step")  # each stage its own step axis
            self.axes.add(label)
        self.run.log({f"{label}/step": step, **{f"{label}/{k}": v for k, v in values.items()}})

    def stage(self, name, label, params, figures, history, files) -> None:
        self.run.config.update({label: params}, allow_val_change=True)
        for step, values in history:
            self.step(label, step, values)
        self.run.summary.update({f"{label}/{k}": v for k, v in figures.items()})
        for f in files:
            self.run.save(str(f), base_path=str(f.parent.parent), policy="now")

    def artifacts(self, paths) -> None:
        for p in paths:
            self.run.save(str(p), base_path=str(p.parent), policy="now")

    def metrics(self, figures: dict) -> None:
        self.run.summary.update(figures)

    def end(self) -> None:
        self.run.finish()


class _TensorBoard:
    def start(self, t, run_dir: Path, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard" / name))
        return f"tensorboard events in {run_dir / 'tensorboard' / name}; browse: tensorboard --logdir {run_dir / 'tensorboard'}"

    def step(self, label, step, values) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{label}/{k}", v, step)
        self.writer.flush()

    def stage(self, name, label, params, figures, history, files) -> None:
        self.writer.add_text(f"{label}/config", json.dumps(params, indent=1))
        for step, values in history:
            self.step(label, step, values)
        for k, v in figures.items():
            self.writer.add_scalar(f"{label}/{k}", v, 0)
        self.writer.flush()

    def artifacts(self, paths) -> None:  # event files hold scalars and text; the report stays in the run folder
        pass

    def metrics(self, figures: dict) -> None:
        for k, v in figures.items():
            self.writer.add_scalar(k, v, 0)

    def end(self) -> None:
        self.writer.close()


_BACKENDS = {"mlflow": _MLflow, "wandb": _WandB, "tensorboard": _TensorBoard}


def _step_figures(row: dict) -> dict[str, float]:
    """A metrics.jsonl row's numbers, but its step."""
    return {k: float(v) for k, v in row.items() if k != "step" and _number(v)}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat(v, key))
        else:
            out[key] = v if _number(v) else str(v)[:500]  # MLflow's param values are bounded
    return out
