"""The best-of-N endpoint against vLLM's own OpenAI server under load, loopback only, bounded in count
and time: the same policy (SmolLM2-135M-Instruct), the same requests (N candidates of max_tokens each,
``ignore_eos`` so that both sides generate the same number of tokens) sent with the ``openai`` client at
each concurrency; requests/s, completion tokens/s, p50/p99 latency. The endpoint also scores the N
candidates (MiniLM reward model) and answers with the best; the plain server returns all N.

    .venv/bin/python bench/serve_load.py [--n 4] [--max-tokens 32] [--concurrency 1 8 32] [--requests 8 24 64] [--threads 2]

The two servers run one after the other (never side by side on the same cores), each started here and
stopped by its PID (vLLM's server) or by serve.shutdown (the endpoint).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

from rlhf_ray import config_load, models  # noqa: E402
from rlhf_ray.config import PipelineConfig  # noqa: E402

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(12, 30), (45, 17), (88, 11), (23, 59), (64, 36), (71, 28)]]
MAX_MODEL_LEN = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(base_url: str, model: str, n: int, max_tokens: int, concurrency: int, count: int, extra: dict) -> dict:
    """``count`` requests, ``concurrency`` at a time: throughput and latency."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="bench", timeout=600, max_retries=0)

    def one(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], n=n,
            max_tokens=max_tokens, temperature=1.0, extra_body={"ignore_eos": True, **extra})
        return time.perf_counter() - start, r.usage.completion_tokens

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    lat = np.array([d[0] for d in done])
    tokens = sum(d[1] for d in done)
    return {"requests": count, "seconds": round(wall, 2), "requests_per_s": count / wall,
            "completion_tokens_per_s": tokens / wall, "completion_tokens": tokens,
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99))}


def run_levels(base_url: str, model: str, args, extra: dict) -> dict:
    load(base_url, model, args.n, 8, 1, 1, extra)  # warm-up
    out = {}
    for c, count in zip(args.concurrency, args.requests):
        out[str(c)] = r = load(base_url, model, args.n, args.max_tokens, c, count, extra)
        print(f"  concurrency {c}: {r['requests_per_s']:.2f} req/s, {r['completion_tokens_per_s']:.0f} tok/s, "
              f"p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s", flush=True)
    return out


def vllm_server(policy: str, args) -> dict:
    """vLLM's OpenAI server (its defaults, the CPU settings the project's engines use) on the policy."""
    port = free_port()
    # Its engine on as many threads as the endpoint's (vLLM serves on one unless OMP_NUM_THREADS says).
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", policy, "--served-model-name",
           "plain", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len",
           str(MAX_MODEL_LEN), "--enforce-eager", "--block-size", "32", "--seed", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 600
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with {proc.returncode}: {' '.join(cmd)}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        else:
            raise TimeoutError("vLLM's server did not come up within 600 s")
        print("vLLM OpenAI server (plain n):", flush=True)
        return run_levels(url, "plain", args, {})
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def endpoint(args) -> dict:
    import ray
    from ray import serve

    from rlhf_ray.serve.app import build

    port = free_port()
    cfg = config_load.load(PipelineConfig, None, [
        "serve.policy=default", "serve.reward_model=default-rm", f"serve.port={port}",
        f"serve.max_model_len={MAX_MODEL_LEN}", "serve.max_prompt_tokens=512", f"serve.max_candidates={args.n}",
        f"serve.max_ongoing_requests={max(args.concurrency)}", f"serve.max_queued_requests={max(args.concurrency)}",
        "serve.scorer.num_cpus=0.5", f"generate.threads={args.threads}"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(cfg), name="best-of-n", route_prefix="/")
        # The first request once the app is ready (its replicas warm themselves before they are), then
        # the warm levels.
        first = load(f"http://127.0.0.1:{port}", cfg.serve.model_name, args.n, args.max_tokens, 1, 1, {})
        print(f"best-of-N endpoint: first request {first['p50_s']:.2f} s after ready", flush=True)
        print("best-of-N endpoint (N candidates, scored, best returned):", flush=True)
        return {"first_request_s": first["p50_s"], **run_levels(f"http://127.0.0.1:{port}", cfg.serve.model_name, args, {})}
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, nargs="+", default=[8, 24, 64])
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each side's engine")
    p.add_argument("--out", default=str(common.RESULTS / "serve_load.json"))
    args = p.parse_args()
    if len(args.requests) != len(args.concurrency):
        p.error("--requests needs one count per --concurrency level")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    policy = models.local_path("default")
    plain = vllm_server(policy, args)
    bon = endpoint(args)
    ratio = {c: {"requests_per_s": bon[c]["requests_per_s"] / plain[c]["requests_per_s"],
                 "p50_overhead": bon[c]["p50_s"] / plain[c]["p50_s"] - 1} for c in plain}
    for c, r in ratio.items():
        print(f"concurrency {c}: best-of-N throughput {r['requests_per_s']:.2f}x plain, p50 {r['p50_overhead']:+.1%}")
    warm = bon[str(min(args.concurrency))]["p50_s"]
    ratio["first_request_over_warm_p50"] = bon["first_request_s"] / warm
    print(f"first request after ready: {bon['first_request_s']:.2f} s, {ratio['first_request_over_warm_p50']:.2f}x "
          f"the warm p50 at concurrency {min(args.concurrency)} (goal: within 1.2x)")
    common.write(args.out, {
        "device": "cpu", **common.machine(), "policy": "SmolLM2-135M-Instruct", "rm": "all-MiniLM-L6-v2",
        "n": args.n, "max_tokens": args.max_tokens, "threads": args.threads, "goal": "best-of-N requests/s >= 0.8x plain; p50 overhead <= 10% "
        "at concurrency 1; the first request after ready within 1.2x a warm one", "plain_vllm_server": plain, "best_of_n_endpoint": bon, "best_of_n_vs_plain": ratio})


if __name__ == "__main__":
    main()
