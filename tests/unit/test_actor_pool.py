"""The engine-failure protocol generation and scoring share (``engines.actor_pool``), without Ray: what an
actor does when its engine fails, and the driver's check that no row was lost or repeated. Replacing a
real actor (its process exits) is tested on Ray in tests/integration/test_generate_score.py."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_ray.engines import actor_pool
from rlhf_ray.engines.actor_pool import EngineError, EngineFailed, PoolActor


class Counter:
    def __init__(self):
        self.added = []
        self.add = self

    def remote(self, n):
        self.added.append(n)


class Flaky(PoolActor):
    def __init__(self, fail: bool, **kwargs):
        super().__init__(**kwargs)
        self.fail = fail

    def work(self, batch):
        if self.fail:
            raise EngineError("vLLM engine failed") from RuntimeError("CUDA error: device lost")
        return {"x": batch["x"]}, len(batch["x"])


def test_a_working_actor_returns_its_rows_and_counts_its_units():
    progress = Counter()
    assert Flaky(False, progress=progress)({"x": [1, 2, 3]}) == {"x": [1, 2, 3]}
    assert progress.added == [3]


def test_without_a_failures_folder_the_engine_error_is_raised():
    with pytest.raises(EngineError):
        Flaky(True)({"x": [1]})


def test_past_the_restarts_the_engines_own_error_fails_the_stage_and_is_recorded(tmp_path):
    failures = str(tmp_path / "engine_failures")
    with pytest.raises(EngineFailed, match="RuntimeError: CUDA error: device lost"):
        Flaky(True, failures=failures, restarts=0)({"x": [1]})
    records = list((tmp_path / "engine_failures").iterdir())
    assert len(records) == 1 and records[0].read_text() == "RuntimeError: CUDA error: device lost"


def write(path, ids):
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt_id": [p for p, _ in ids], "sample_idx": [s for _, s in ids]}), path / "0.parquet")


def test_accounting_refuses_a_lost_or_repeated_row(tmp_path):
    write(tmp_path / "ok", [("a", 0), ("a", 1), ("b", 0), ("b", 1)])
    assert actor_pool.check_accounting(tmp_path / "ok", 4).num_rows == 4
    write(tmp_path / "lost", [("a", 0), ("a", 1), ("b", 0)])
    with pytest.raises(RuntimeError, match=r"3 rows \(3 distinct \(prompt_id, sample_idx\)\), expected 4"):
        actor_pool.check_accounting(tmp_path / "lost", 4)
    write(tmp_path / "repeated", [("a", 0), ("a", 1), ("b", 0), ("b", 0)])
    with pytest.raises(RuntimeError, match=r"4 rows \(3 distinct"):
        actor_pool.check_accounting(tmp_path / "repeated", 4)
