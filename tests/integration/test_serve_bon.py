"""The best-of-N Serve app on the shared cluster (real vLLM on CPU, a real reward model), queried with
the official openai client and raw HTTP: the pick, auth, limits, malformed bodies, overload, a crash."""
import concurrent.futures as cf
import json
import math
import os
import signal
import socket
import time

import httpx
import numpy as np
import pytest

from rlhf_ray import config_load
from rlhf_ray.config import PipelineConfig

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
KEY = "test-key-123"
ASK = [{"role": "user", "content": "What is 12 + 30?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(ray_cluster, tiny_vllm_policy_dir, tiny_vllm_rm_dir):
    from ray import serve

    from rlhf_ray.serve.app import build

    port = free_port()
    cfg = config_load.load(PipelineConfig, None, [
        f"serve.policy={tiny_vllm_policy_dir}", f"serve.reward_model={tiny_vllm_rm_dir}", f"serve.port={port}",
        "serve.max_candidates=8", "serve.max_tokens=64", "serve.max_prompt_tokens=400", "serve.max_model_len=512",
        "serve.max_ongoing_requests=1", "serve.max_queued_requests=1", "serve.scorer.num_cpus=0.5",
        "serve.max_messages=8", "serve.max_request_bytes=20000", "serve.read_timeout_s=2"])
    os.environ[cfg.serve.api_key_env] = KEY
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(cfg), name="best-of-n", route_prefix="/")
    except BaseException:
        serve.shutdown()  # a half-deployed app would hold the shared cluster's CPUs for every later test
        raise
    finally:
        del os.environ[cfg.serve.api_key_env]
    yield f"http://127.0.0.1:{port}", cfg
    serve.shutdown()


def post(url, body, key=KEY, timeout=120):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


def test_openai_client_gets_the_best_candidate_and_every_score(endpoint, tiny_vllm_rm_dir):
    from openai import OpenAI

    from rlhf_ray.engines.scorers import RewardScorer

    url, cfg = endpoint
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == [cfg.serve.model_name]
    r = client.chat.completions.create(model=cfg.serve.model_name, messages=ASK, max_tokens=12, temperature=1.0,
                                       extra_body={"best_of": 4})
    bon = r.model_extra["best_of_n"]
    assert len(r.choices) == 1 and len(bon["rewards"]) == len(bon["candidates"]) == 4
    assert bon["chosen_index"] == int(np.argmax(bon["rewards"]))
    assert r.choices[0].message.content == bon["candidates"][bon["chosen_index"]]
    # The rewards are the reward model's own scores of these candidates.
    direct = RewardScorer(str(tiny_vllm_rm_dir)).score([ASK] * 4, [[{"role": "assistant", "content": c}]
                                                                   for c in bon["candidates"]])
    np.testing.assert_allclose(bon["rewards"], direct, atol=1e-5)
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    # n choices of best_of candidates: the top n by reward, best first.
    top = client.chat.completions.create(model=cfg.serve.model_name, messages=ASK, n=2, max_tokens=8,
                                         extra_body={"best_of": 4})
    order = np.argsort(-np.asarray(top.model_extra["best_of_n"]["rewards"]), kind="stable")[:2]
    assert [c.message.content for c in top.choices] == [top.model_extra["best_of_n"]["candidates"][i] for i in order]
    plain = post(url, {"messages": ASK, "n": 3, "max_tokens": 8, "best_of_n": False}).json()
    assert len(plain["choices"]) == 3 and "best_of_n" not in plain
    # A client that always streams gets the chosen answer as chunks once it is picked.
    chunks = list(client.chat.completions.create(model=cfg.serve.model_name, messages=ASK, max_tokens=8,
                                                 stream=True, extra_body={"best_of": 2}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1].model_extra["best_of_n"]
    assert text == last["candidates"][last["chosen_index"]] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_the_sampling_fields_a_client_sends_are_done(endpoint):
    from openai import OpenAI

    url, cfg = endpoint
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    # stop: no candidate holds the stop string; max_completion_tokens bounds every candidate.
    r = client.chat.completions.create(model=cfg.serve.model_name, messages=ASK, stop=[" "], max_completion_tokens=6,
                                       extra_body={"best_of": 4})
    assert all(" " not in c for c in r.model_extra["best_of_n"]["candidates"])
    assert r.usage.completion_tokens <= 4 * 6
    # logprobs of the returned choice: one entry per token, with the top alternatives asked for.
    r = client.chat.completions.create(model=cfg.serve.model_name, messages=ASK, max_completion_tokens=5,
                                       logprobs=True, top_logprobs=2, frequency_penalty=1.0, presence_penalty=0.5)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == r.choices[0].message.content
    # What best-of-N cannot do is refused by name, as the client shows it.
    import openai

    with pytest.raises(openai.BadRequestError, match="tools: not supported"):
        client.chat.completions.create(model=cfg.serve.model_name, messages=ASK,
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])


def test_langchains_openai_chat_client_talks_to_the_endpoint(endpoint):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    url, cfg = endpoint
    llm = ChatOpenAI(base_url=f"{url}/v1", api_key=KEY, model=cfg.serve.model_name, max_tokens=8, max_retries=0)
    answer = llm.invoke([SystemMessage("Answer briefly."),
                         HumanMessage(content=[{"type": "text", "text": "What is 12 + 30?"}])])
    assert isinstance(answer.content, str) and answer.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(chunk.content for chunk in llm.stream("What is 12 + 30?"))
    assert isinstance(streamed, str)


@pytest.mark.parametrize("body,raw,key,status,needle", [
    # Every refusal is unit-tested (tests/unit/test_serve_api.py); these go through the HTTP proxy and the
    # app's error handlers: headers, raw bytes, a body over the limit, Starlette's own 404 and 405.
    ({"messages": "hi"}, None, None, 401, "API key"),
    (None, b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', KEY, 422, "not valid JSON in UTF-8"),
    ({"messages": [{"role": "user", "content": "x" * 30000}]}, None, KEY, 413, "max_request_bytes=20000"),
    ({"messages": ASK, "n": 9}, None, KEY, 400, "max_candidates=8"),
])
@pytest.mark.hostile_http
def test_bad_requests_get_a_status_and_openai_error_json(endpoint, body, raw, key, status, needle):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    r = httpx.post(f"{endpoint[0]}/v1/chat/completions", content=raw if raw is not None else json.dumps(body),
                   headers=headers, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and {"type", "param", "code"} <= set(error), error


@pytest.mark.hostile_http
def test_a_64kb_header_gets_431_in_openai_error_json(endpoint):
    # The HTTP proxy takes it; the app refuses it before reading the body.
    r = httpx.post(f"{endpoint[0]}/v1/chat/completions", json={"messages": ASK},
                   headers={"Authorization": f"Bearer {KEY}", "X-Padding": "a" * 65536}, timeout=60)
    assert r.status_code == 431 and "max_header_bytes=16384" in r.json()["error"]["message"], r.text


@pytest.mark.hostile_http
def test_an_unknown_path_or_method_is_answered_in_openai_error_json(endpoint):
    for r, status in ((httpx.get(f"{endpoint[0]}/v1/nothing", timeout=30), 404),
                      (httpx.get(f"{endpoint[0]}/v1/chat/completions", timeout=30), 405)):
        assert r.status_code == status and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_the_bearer_scheme_is_case_insensitive(endpoint):
    # The ingress holds only the key's digest (the fixture removed the key from the environment).
    r = httpx.post(f"{endpoint[0]}/v1/chat/completions", json={"messages": ASK, "n": 1, "max_tokens": 4},
                   headers={"Authorization": f"bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text


def test_llm_judge_scores_through_an_openai_compatible_endpoint(endpoint, monkeypatch):
    from rlhf_ray.engines.judge import JudgeScorer, OpenAIBackend

    url, cfg = endpoint
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    judge = JudgeScorer(OpenAIBackend(f"{url}/v1", cfg.serve.model_name, "JUDGE_TEST_KEY", max_tokens=16))
    ratings = judge.score([ASK, ASK], [[{"role": "assistant", "content": "42"}], [{"role": "assistant", "content": "41"}]])
    # The random-weight model rarely writes "[[n]]": a missing rating is NaN, never a made-up number.
    assert len(ratings) == 2 and all(math.isnan(r) or 1 <= r <= 10 for r in ratings)


def test_health_needs_no_key(endpoint):
    assert httpx.get(f"{endpoint[0]}/health", timeout=30).json() == {"status": "ok"}


@pytest.mark.hostile_http
def test_overload_is_answered_with_503_not_an_unbounded_queue(endpoint):
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(endpoint[0], {"messages": ASK, "n": 8, "max_tokens": 64}), range(16)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 1, codes
    refused = next(r for r in answers if r.status_code == 503).json()["error"]
    assert refused["type"] == "overloaded" and "max_queued_requests" in refused["message"]


@pytest.mark.hostile_http
def test_a_slow_client_gets_408_and_holds_no_slot(endpoint):
    host, port = endpoint[0].removeprefix("http://").split(":")
    slow = []
    for _ in range(3):  # more than max_ongoing + max_queued: none may block a normal request
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{".encode())
        slow.append(sock)
    start = time.time()
    assert httpx.get(f"{endpoint[0]}/health", timeout=30).status_code == 200 and time.time() - start < 1
    answers = []
    for sock in slow:
        sock.settimeout(30)
        answer = b""
        while not answer.endswith(b"}}") and (chunk := sock.recv(4096)):  # headers, then the JSON body
            answer += chunk
        answers.append(answer.decode())
        sock.close()
    assert all(a.startswith("HTTP/1.1 408") and "read_timeout_s=2" in a for a in answers), answers
    assert post(endpoint[0], {"messages": ASK, "n": 2, "max_tokens": 8}).status_code == 200


def test_requests_join_one_running_batch_and_a_cancelled_one_is_aborted(endpoint):
    from ray import serve

    from rlhf_ray import models
    from rlhf_ray.serve import api

    gen = serve.get_deployment_handle("Generator", app_name="best-of-n")
    s = endpoint[1].serve
    body = api.ChatRequest(messages=ASK, best_of=8, max_tokens=64, ignore_eos=True)
    request = {**api.engine_request(body, ASK, s, models.chat_tokenizer(s.policy), False), "n": 64, "max_tokens": 480}
    before = gen.info.remote().result()["aborted"]
    long = gen.generate.remote(request)
    deadline = time.time() + 30
    while gen.info.remote().result()["in_flight"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    short = gen.generate.remote({**request, "n": 1, "max_tokens": 4})
    assert len(short.result(timeout_s=60)) == 1  # answered while the long request still runs
    assert gen.info.remote().result()["in_flight"] == 1
    long.cancel()  # what Ray Serve does to the calls of a client that disconnected
    deadline = time.time() + 30
    while gen.info.remote().result()["aborted"] == before and time.time() < deadline:
        time.sleep(0.1)
    info = gen.info.remote().result()
    assert (info["aborted"], info["in_flight"]) == (before + 1, 0)


def test_the_endpoint_exports_prometheus_metrics_without_text(endpoint):
    import ray

    for _ in range(2):
        assert post(endpoint[0], {"messages": ASK, "n": 3, "max_tokens": 8}).status_code == 200
    assert post(endpoint[0], {"messages": ASK}, key="wrong").status_code == 401
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:  # Ray's agent exports what the replicas recorded every few seconds
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if 'rlhf_ray_requests_total{' in text and 'status="401"' in text and "rlhf_ray_chosen_reward" in text:
            break
        time.sleep(2)
    requests = {line.split("status=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("ray_rlhf_ray_requests_total{")}
    assert requests.get("200", 0) >= 2 and requests.get("401", 0) >= 1, requests
    for name in ("candidates", "generation_seconds", "scoring_seconds", "chosen_index"):
        assert f"ray_rlhf_ray_{name}_bucket" in text
    assert "ray_rlhf_ray_chosen_reward{" in text
    assert "12 + 30" not in text  # no prompt (or completion) text in the metrics


def test_a_crashed_generator_replica_is_restarted_and_the_endpoint_answers_again(endpoint):
    from ray import serve

    gen = serve.get_deployment_handle("Generator", app_name="best-of-n")
    pid = gen.info.remote().result()["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline, status = time.time() + 240, None
    while time.time() < deadline:
        try:
            status = post(endpoint[0], {"messages": ASK, "n": 2, "max_tokens": 8}, timeout=60).status_code
        except httpx.HTTPError:
            status = None
        if status == 200:
            break
        time.sleep(2)
    assert status == 200
    assert gen.info.remote().result()["pid"] != pid
