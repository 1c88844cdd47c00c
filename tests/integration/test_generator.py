"""VLLMGenerator and its Engine (real vLLM on CPU, a tiny random model) outside Ray: concurrent calls
share one engine and each gets its own outputs back; aborted requests leave the running batch; failures
reach the waiting calls instead of hanging them.

Each check runs in a fresh process: vLLM's CPU platform walks every loaded module when it builds an
engine and trips over flask's context proxies, which the S3 test server (moto) leaves in this one."""
import multiprocessing
import threading

import pytest

from rlhf_ray.engines.generator import VLLMGenerator

pytestmark = pytest.mark.timeout(300)


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a spawned interpreter; its return value, or its exception raised here."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def concurrent_calls(model_dir: str) -> None:
    g = VLLMGenerator(model_dir, {"n": 2, "max_tokens": 64, "temperature": 1.0}, 512)
    prompts = {t: [[100 + t, 200 + i, 300] for i in range(3 + t)] for t in range(4)}
    got, errors = {}, []

    def call(t):
        try:
            got[t] = g.generate(prompts[t])
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(t,)) for t in prompts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors
    assert sorted(got) == sorted(prompts)
    for t, outs in got.items():
        assert [list(o.prompt_token_ids) for o in outs] == prompts[t]
        assert all(len(o.outputs) == 2 for o in outs)
    assert not g.engine._futures and not g.engine._new  # nothing left behind


def dropped_requests(model_dir: str) -> str:
    g = VLLMGenerator(model_dir, {"n": 2, "max_tokens": 8}, 512)
    engine = g.engine.llm.llm_engine

    def dropping_step():  # the engine forgets every request and produces nothing
        engine.abort_request(list(g.engine._futures))
        return []

    engine.step = dropping_step
    with pytest.raises(RuntimeError, match="vLLM engine failed") as failed:
        g.generate([[1, 2, 3, 4]] * 4)
    return str(failed.value.__cause__)


def aborted_request(model_dir: str) -> tuple[bool, int, bool]:
    import time

    from vllm import SamplingParams

    g = VLLMGenerator(model_dir, {"n": 1, "max_tokens": 8}, 512)
    engine = g.engine.llm.llm_engine
    long, short = SamplingParams(max_tokens=400, ignore_eos=True), SamplingParams(max_tokens=200, ignore_eos=True)
    keys, futures = g.engine.submit([([1, 2, 3], long), ([4, 5, 6], short)])
    while not engine.has_unfinished_requests():  # both are in the running batch
        time.sleep(0.01)
    g.engine.abort(keys[:1])  # its caller went away
    out = futures[1].result(timeout=120)
    return futures[0].done(), len(out.outputs[0].token_ids), engine.has_unfinished_requests()


def samples_and_greedy(model_dir: str) -> tuple[dict, list[str]]:
    import numpy as np

    batch = {"prompt_id": np.array(["a", "b"]), "prompt": np.array([[], []], dtype=object),
             "prompt_token_ids": [[100, 200, 300], [101, 201, 301, 401]], "answer": np.array(["x", "y"])}
    mixed = VLLMGenerator(model_dir, {"n": 2, "max_tokens": 12, "temperature": 1.0, "greedy": True}, 512)(batch)
    greedy = VLLMGenerator(model_dir, {"n": 1, "max_tokens": 12, "temperature": 0.0}, 512)(batch)
    return {k: np.asarray(v).tolist() for k, v in mixed.items() if k != "prompt"}, greedy["completion"].tolist()


def test_an_aborted_request_leaves_the_running_batch_and_the_others_finish(tiny_vllm_policy_dir):
    done, tokens, unfinished = in_fresh_process(aborted_request, str(tiny_vllm_policy_dir))
    assert (done, tokens, unfinished) == (False, 200, False)  # the 400-token request stopped early


def test_greedy_answers_come_from_the_sampling_engine_as_sample_n(tiny_vllm_policy_dir):
    rows, alone = in_fresh_process(samples_and_greedy, str(tiny_vllm_policy_dir))
    assert rows["prompt_id"] == ["a"] * 3 + ["b"] * 3
    assert rows["sample_idx"] == [0, 1, 2] * 2
    assert rows["greedy"] == [False, False, True] * 2
    assert rows["answer"] == ["x"] * 3 + ["y"] * 3  # other prompt columns ride along
    # the greedy row is what a temperature-0 engine answers alone
    assert [c for c, g in zip(rows["completion"], rows["greedy"]) if g] == alone


def test_concurrent_calls_each_get_their_own_prompts_back(tiny_vllm_policy_dir):
    in_fresh_process(concurrent_calls, str(tiny_vllm_policy_dir))


def test_a_request_the_engine_drops_fails_its_call_instead_of_hanging(tiny_vllm_policy_dir):
    cause = in_fresh_process(dropped_requests, str(tiny_vllm_policy_dir))
    assert "no output for requests ['0', '1', '2', '3']" in cause


def test_an_engine_that_cannot_load_fails_the_constructor(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        VLLMGenerator(str(tmp_path / "missing"), {"n": 2, "max_tokens": 8}, 256)


def engine_settings(model_dir: str) -> tuple[int, bool]:
    g = VLLMGenerator(model_dir, {"n": 1, "max_tokens": 8}, 512,
                      engine_kwargs={"max_num_seqs": 3, "enable_prefix_caching": False})
    config = g.engine.llm.llm_engine.vllm_config
    return config.scheduler_config.max_num_seqs, config.cache_config.enable_prefix_caching


def test_engine_kwargs_reach_vllm_and_a_misspelt_one_is_one_line(tiny_vllm_policy_dir):
    from rlhf_ray.config import ConfigError
    from rlhf_ray.engines.vllm_engine import check_engine_kwargs

    assert in_fresh_process(engine_settings, str(tiny_vllm_policy_dir)) == (3, False)
    check_engine_kwargs("generate.engine_kwargs", {"enable_prefix_caching": True, "quantization": "fp8"})
    with pytest.raises(ConfigError, match=r"^generate.engine_kwargs.enable_prefix_cachin: not a vLLM engine argument "
                                          r"\(did you mean enable_prefix_caching\?\)$"):
        check_engine_kwargs("generate.engine_kwargs", {"enable_prefix_cachin": True})
    with pytest.raises(ConfigError, match=r"^serve.engine_kwargs.max_model_len: set by this project; use max_model_len$"):
        check_engine_kwargs("serve.engine_kwargs", {"max_model_len": 4096})
