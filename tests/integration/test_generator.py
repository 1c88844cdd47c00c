"""VLLMGenerator (real vLLM on CPU, a tiny random model) outside Ray: concurrent calls share one engine
and each gets its own outputs back; failures reach the waiting calls instead of hanging them."""
import threading

import pytest

from rlhf_ray.generate import VLLMGenerator

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def generator(tiny_vllm_policy_dir):
    return VLLMGenerator(str(tiny_vllm_policy_dir), {"n": 2, "max_tokens": 64, "temperature": 1.0}, 512)


def test_concurrent_calls_each_get_their_own_prompts_back(generator):
    prompts = {t: [[100 + t, 200 + i, 300] for i in range(3 + t)] for t in range(4)}
    got, errors = {}, []

    def call(t):
        try:
            got[t] = generator.generate(prompts[t])
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(t,)) for t in prompts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors
    for t, outs in got.items():
        assert [list(o.prompt_token_ids) for o in outs] == prompts[t]
        assert all(len(o.outputs) == 2 for o in outs)
    assert not generator._pending and not generator._finished  # nothing left behind


def test_a_request_the_engine_drops_fails_its_call_instead_of_hanging(tiny_vllm_policy_dir, monkeypatch):
    g = VLLMGenerator(str(tiny_vllm_policy_dir), {"n": 2, "max_tokens": 8}, 512)
    engine = g.llm.llm_engine

    def dropping_step():  # the engine forgets every request and produces nothing
        engine.abort_request(list(g._pending))
        return []

    monkeypatch.setattr(engine, "step", dropping_step)
    with pytest.raises(RuntimeError, match="vLLM engine failed") as failed:
        g.generate([[1, 2, 3, 4]] * 4)
    assert "no output for requests ['0', '1', '2', '3']" in str(failed.value.__cause__)


def test_an_engine_that_cannot_load_fails_the_constructor(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        VLLMGenerator(str(tmp_path / "missing"), {"n": 2, "max_tokens": 8}, 256)
