"""Generation throughput on the same prompts, in one run: completion tokens/s of the Ray Data pipeline
(``generate_dataset``: one vLLM actor) vs the bare vLLM engine vs transformers ``generate`` with
``num_return_sequences=N``. Both vLLM sides start a process of their own (import, engine load) inside
the timed span and use all cores; transformers runs on one thread (on two, on a busy 2-core machine, it
collapses: ../shared/notes). Also records the driver's peak RSS.

    .venv/bin/python bench/generate_throughput.py [--prompts 256] [--n 8] [--max-tokens 64] [--hf-prompts 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

from rlhf_ray import models, tasks
from rlhf_ray.engines import generator, vllm_engine  # noqa: E402
from rlhf_ray.config import GenerateConfig, TaskConfig  # noqa: E402


def prompt_rows(count: int) -> list[dict]:
    task = TaskConfig(name="arithmetic", sft_rows=0, prompt_rows=count, eval_rows=0, seed=3)
    rows = [json.loads(line) for line in open(tasks.task_files(task, "/tmp/rlhf_ray_bench")["prompts"])]
    for i, r in enumerate(rows):
        r.update(_file="prompts.jsonl", _line=i + 1)
    return [generator.tokenize_prompt(r, "default", None, 10 ** 6) for r in rows]


def ray_pipeline(rows, sampling, args) -> dict:
    import ray

    # The actor gets both cores (Ray sets OMP_NUM_THREADS from num_cpus; with 1 the engine runs 1.8x
    # slower than the bare engine, which uses both); one more logical CPU lets read/write tasks run.
    ray.init(address="local", num_cpus=args.cpus_per_actor + 1, include_dashboard=False, log_to_driver=False)
    keep = ("prompt_id", "prompt", "prompt_token_ids")
    ds = ray.data.from_items([{k: r[k] for k in keep} for r in rows], override_num_blocks=max(1, len(rows) // args.rows_per_call))
    start = time.perf_counter()
    g = GenerateConfig(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                       max_tokens=sampling.max_tokens, seed=sampling.seed, max_model_len=1024,
                       rows_per_call=args.rows_per_call, cpus_per_actor=args.cpus_per_actor,
                       calls_per_actor=args.calls_per_actor)
    out = generator.generate_dataset(ds, "default", g).materialize()
    secs = time.perf_counter() - start
    tokens = int(out.sum("num_completion_tokens"))
    ray.shutdown()
    return {"seconds": secs, "completion_tokens": tokens, "tokens_per_s": tokens / secs}


def bare_engine(rows, sampling) -> dict:
    """All prompts in one ``LLM.generate`` call (the engine's best case), in a fresh process timed from its
    start: the pipeline's actor too starts a process, imports vLLM and loads the engine."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"token_ids": [r["prompt_token_ids"] for r in rows], "sampling": vars(sampling)}, f)
        f.flush()
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--bare-worker", f.name], capture_output=True, text=True,
                             check=True)
        secs = time.perf_counter() - start
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": secs, **res, "tokens_per_s": res["completion_tokens"] / secs}


def bare_worker(path: str) -> None:
    t0 = time.perf_counter()
    from vllm import SamplingParams

    job = json.loads(Path(path).read_text())
    s = generator.Sampling(**job["sampling"])
    t1 = time.perf_counter()
    llm = vllm_engine.load_llm("default", s.seed, max_model_len=1024)
    params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    t2 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": ids} for ids in job["token_ids"]], params, use_tqdm=False)
    t3 = time.perf_counter()
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    print(json.dumps({"completion_tokens": tokens, "import_s": t1 - t0, "engine_load_s": t2 - t1,
                      "generate_s": t3 - t2}))


def transformers_generate(rows, sampling, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    tok = models.load_tokenizer(models.local_path("default"))
    model = models.load_policy("default", dtype="bfloat16").eval()
    start, tokens = time.perf_counter(), 0
    for r in rows:  # one prompt per call: N return sequences share it, as vLLM's n does
        ids = torch.tensor([r["prompt_token_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_new_tokens=sampling.max_tokens, num_return_sequences=sampling.n,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, ids.shape[1]:]
        # Count up to and including the first end-of-turn token, as vLLM counts completion tokens.
        for seq in new.tolist():
            tokens += next((i + 1 for i, t in enumerate(seq) if t in (tok.eos_token_id, tok.pad_token_id)), len(seq))
    secs = time.perf_counter() - start
    return {"seconds": secs, "completion_tokens": tokens, "tokens_per_s": tokens / secs, "prompts": len(rows)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--hf-prompts", type=int, default=8)
    p.add_argument("--rows-per-call", type=int, default=16)
    p.add_argument("--calls-per-actor", type=int, default=4)
    p.add_argument("--cpus-per-actor", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(common.RESULTS / "generate_throughput.json"))
    p.add_argument("--bare-worker", help=argparse.SUPPRESS)  # internal: the bare engine's own process
    args = p.parse_args()
    if args.bare_worker:
        return bare_worker(args.bare_worker)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = prompt_rows(args.prompts)
    sampling = generator.Sampling(n=args.n, temperature=0.8, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    res = {"device": "cpu", **common.machine(), "model": "SmolLM2-135M-Instruct", "prompts": len(rows),
           "n": args.n, "max_tokens": args.max_tokens, "rows_per_call": args.rows_per_call,
           "calls_per_actor": args.calls_per_actor,
           "cpus_per_actor": args.cpus_per_actor,
           "ray_data_pipeline": ray_pipeline(rows, sampling, args),
           "bare_vllm": bare_engine(rows, sampling),
           "transformers_generate": transformers_generate(rows[: args.hf_prompts], sampling, threads=1)}
    res["pipeline_vs_bare"] = res["ray_data_pipeline"]["tokens_per_s"] / res["bare_vllm"]["tokens_per_s"]
    res["pipeline_vs_transformers"] = res["ray_data_pipeline"]["tokens_per_s"] / res["transformers_generate"]["tokens_per_s"]
    res["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Ray Data pipeline / bare vLLM = {res['pipeline_vs_bare']:.2f}x; "
          f"/ transformers generate = {res['pipeline_vs_transformers']:.2f}x (completion tokens/s)")
    common.write(args.out, res)


if __name__ == "__main__":
    main()
