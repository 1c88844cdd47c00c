"""``vllm_engine.Engine``'s submit / step / abort protocol against a fake ``llm_engine`` (vLLM's step loop is
tested by tests/integration with the real engine): outputs reach the right futures, aborted requests leave
the batch, and an engine that fails fails every waiting request instead of leaving it waiting."""
import threading
from types import SimpleNamespace

import pytest

from rlhf_ray.engines.actor_pool import EngineError
from rlhf_ray.engines.vllm_engine import Engine


class FakeLLMEngine:
    """Finishes one request per step, in the order added; a request whose params say ``hold`` runs until
    aborted; ``fail_at`` makes that step raise, ``drop`` loses every request silently."""

    def __init__(self, fail_at: int | None = None, drop: bool = False):
        self.running, self.steps, self.aborted = [], 0, []
        self.fail_at, self.drop = fail_at, drop
        self.lock = threading.Lock()

    def add_request(self, key, prompt, params):
        self.running.append((key, prompt["prompt_token_ids"], params))

    def abort_request(self, keys):
        self.aborted += keys
        self.running = [r for r in self.running if r[0] not in keys]

    def step(self):
        self.steps += 1
        if self.fail_at == self.steps:
            raise RuntimeError("CUDA error: an illegal memory access")
        if self.drop:
            self.running = []
            return []
        done = next((r for r in self.running if r[2] != "hold"), None)
        if done is None:
            return []
        self.running.remove(done)
        return [SimpleNamespace(request_id=done[0], finished=True, text=f"out{done[1]}")]

    def has_unfinished_requests(self):
        return bool(self.running)


def engine(fake):
    return Engine(lambda: SimpleNamespace(llm_engine=fake))


def test_every_request_gets_its_own_output_in_order():
    e = engine(FakeLLMEngine())
    outs = e.generate([([1], "p"), ([2], "p"), ([3], "p")])
    assert [o.text for o in outs] == ["out[1]", "out[2]", "out[3]"] and e.in_flight() == 0


def test_an_aborted_request_leaves_the_batch_and_the_rest_finish():
    fake = FakeLLMEngine()
    e = engine(fake)
    keys, (held,) = e.submit([([9], "hold")])
    e.abort(keys)
    (out,) = e.generate([([1], "p")])
    assert out.text == "out[1]" and fake.aborted == keys and e.aborted == 1 and e.in_flight() == 0
    assert not held.done()  # nobody waits for it any more


def test_a_failing_step_fails_every_waiting_request_and_later_submits():
    e = engine(FakeLLMEngine(fail_at=1))
    futures = e.submit([([1], "hold"), ([2], "hold")])[1]
    for f in futures:
        with pytest.raises(EngineError) as err:
            f.result(timeout=10)
        assert "illegal memory access" in str(err.value.__cause__)
    with pytest.raises(EngineError):
        e.submit([([3], "p")])


def test_an_engine_that_drops_requests_fails_them_instead_of_leaving_them_waiting():
    e = engine(FakeLLMEngine(drop=True))
    (future,) = e.submit([([1], "p")])[1]
    with pytest.raises(EngineError) as err:
        future.result(timeout=10)
    assert "no output for requests ['0']" in str(err.value.__cause__)


def test_an_engine_that_cannot_load_raises_its_error():
    def load():
        raise ValueError("model folder not found")

    with pytest.raises(ValueError, match="model folder not found"):
        Engine(load)
