"""Best-of-N serving overhead, loopback only, bounded in count and time: p50/p99 latency and requests/s
of best-of-N (sample N, score, pick) vs plain generation of the same N candidates, for each N, in one
run against one app (SmolLM2 policy, MiniLM reward model). Requests alternate between the two modes
so that machine noise hits both alike.

    .venv/bin/python bench/serve_bon.py [--ns 1 2 4 8] [--requests 8] [--concurrency 4] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import socket
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

from rlhf_ray import config_load  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(12, 30), (45, 17), (88, 11), (23, 59), (64, 36), (71, 28)]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, i: int, n: int, bon: bool, max_tokens: int) -> float:
    body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "n": n,
            "max_tokens": max_tokens, "temperature": 1.0, "best_of_n": bon}
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    r.raise_for_status()
    return time.perf_counter() - start


def latency(url: str, n: int, count: int, max_tokens: int) -> dict:
    lat: dict[str, list[float]] = {"best_of_n": [], "plain": []}
    for i in range(count):
        for mode in (("best_of_n", True), ("plain", False)) if i % 2 else (("plain", False), ("best_of_n", True)):
            lat[mode[0]].append(request(url, i, n, mode[1], max_tokens))
    return {k: {"p50_s": float(np.percentile(v, 50)), "p99_s": float(np.percentile(v, 99))} for k, v in lat.items()}


def throughput(url: str, n: int, count: int, concurrency: int, bon: bool, max_tokens: int) -> float:
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: request(url, i, n, bon, max_tokens), range(count)))
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default=str(common.RESULTS / "serve_bon.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from rlhf_ray.serve.app import build

    port = free_port()
    cfg = config_load.load(PipelineConfig, None, ["serve.policy=default", "serve.reward_model=default-rm",
                                             f"serve.port={port}", "serve.max_model_len=1024", "serve.max_prompt_tokens=512",
                                             "serve.scorer.num_cpus=1", "serve.generator.num_cpus=1"])
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(cfg), name="best-of-n", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    request(url, 0, 2, True, 8)  # warm-up
    res = {"device": "cpu", **common.machine(), "policy": "SmolLM2-135M-Instruct", "rm": "all-MiniLM-L6-v2",
           "max_tokens": args.max_tokens, "requests": args.requests, "concurrency": args.concurrency, "by_n": {}}
    for n in args.ns:
        r = latency(url, n, args.requests, args.max_tokens)
        r["overhead_p50"] = r["best_of_n"]["p50_s"] / r["plain"]["p50_s"] - 1
        r["best_of_n_requests_per_s"] = throughput(url, n, args.requests, args.concurrency, True, args.max_tokens)
        r["plain_requests_per_s"] = throughput(url, n, args.requests, args.concurrency, False, args.max_tokens)
        res["by_n"][str(n)] = r
        print(f"N={n}: p50 best-of-N {r['best_of_n']['p50_s']:.3f}s vs plain {r['plain']['p50_s']:.3f}s "
              f"(overhead {r['overhead_p50']:+.1%}), p99 {r['best_of_n']['p99_s']:.3f}s vs {r['plain']['p99_s']:.3f}s, "
              f"{r['best_of_n_requests_per_s']:.2f} vs {r['plain_requests_per_s']:.2f} req/s", flush=True)
    serve.shutdown()
    ray.shutdown()
    common.write(args.out, res)


if __name__ == "__main__":
    main()
