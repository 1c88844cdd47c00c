"""Artifact manifests: config, its hash, inputs, package version and row counts; resume checks."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rlhf_ray import config_load

MANIFEST = "manifest.json"
ATTEMPT = "attempt.json"   # the config and inputs of the stage's latest start
RESUMABLE = "ray_train"    # what a training stage resumes from (rlhf_ray.train.runner.fit)


def fingerprint(paths) -> dict[str, str]:
    """Content hash of each input file (folders: of every file inside), so a changed input re-runs a stage.

    Keyed by the storage URI where there is one, so that a mirror on another node matches.
    """
    from rlhf_ray import data, storage

    out = {}
    for name in map(str, paths):
        p = data.hub_folder(name) if data.is_hub(name) else Path(storage.local(name))
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        out[storage.uri(name) or name] = h.hexdigest()[:16]
    return out


def _version() -> str:
    try:
        return version("rlhf_ray")
    except PackageNotFoundError:
        return "unknown"


def write(out_dir: str | Path, stage: str, config: dict, config_hash: str, inputs: dict, counts: dict,
          **extra) -> dict:
    m = {"stage": stage, "config_hash": config_hash, "inputs": inputs, "counts": counts,
         "package_version": _version(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "config": config, **extra}
    path = Path(out_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=2, default=str))
    tmp.rename(path)  # a stage counts as done only once its manifest is whole
    from rlhf_ray import storage

    storage.push(out_dir)  # a remote run folder gets the finished stage (no-op for local ones)
    return m


def read(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def up_to_date(out_dir: str | Path, config_hash: str, inputs: dict) -> bool:
    m = read(out_dir)
    return m is not None and m["config_hash"] == config_hash and m["inputs"] == inputs


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage's resume bookkeeping: the config ``section`` it receives (hashed and recorded whole, so
    what decides "up to date" is exactly what the stage was given) and the fingerprints of its inputs."""
    name: str
    out: Path
    section: dict
    inputs: dict
    started: float = dataclasses.field(default_factory=time.time)  # the stage's own wall time goes in its manifest

    @property
    def config_hash(self) -> str:
        return config_load.config_hash(self.section)

    def up_to_date(self) -> bool:
        if not up_to_date(self.out, self.config_hash, self.inputs):
            return False
        print(f"[{self.name}] {self.out} is up to date (config {self.config_hash}); skipping")
        return True

    def begin(self) -> Path:
        """The stage's folder, made, without a previous attempt's quarantine files (``quarantine.jsonl``
        for training or input rows, ``quarantine_eval.jsonl`` for eval rows); returns the first's path.

        Training resumes from its checkpoints only after an attempt with this config and these inputs:
        Ray Train restores whatever run its folder holds, and a finished run of another config (its final
        checkpoint already past this plan's last step) was exported as this one's model untrained."""
        from rlhf_ray import storage

        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("quarantine.jsonl", "quarantine_eval.jsonl"):
            storage.remove(self.out / name)
        attempt = json.dumps({"config_hash": self.config_hash, "inputs": self.inputs}, sort_keys=True)
        record = storage.uri(self.out / ATTEMPT) or str(self.out / ATTEMPT)
        if storage.read_text(record) != attempt:
            storage.remove(self.out / RESUMABLE)
            storage.write_text(record, attempt)
        return self.out / "quarantine.jsonl"

    def finish(self, counts: dict, **extra) -> dict:
        from rlhf_ray import tracking

        section = config_load.plain(self.section)
        m = write(self.out, self.name, section, self.config_hash, self.inputs, counts,
                  seconds=round(time.time() - self.started, 1), **extra)
        tracking.log_stage(self.name, self.out, section, m)
        return m


def stage(name: str, out: str | Path, section: dict, input_paths) -> Stage:
    """The bookkeeping of stage ``name`` writing ``out`` from ``section`` and the files ``input_paths``."""
    return Stage(name, Path(out), section, fingerprint(input_paths))
