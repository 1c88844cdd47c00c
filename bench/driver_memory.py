"""Peak RSS of the generation job's driver as the prompt count grows 10×: each size runs the real
generate stage (Ray Data + vLLM actor, a tiny random-weight model so that the run stays short) in its
own driver process, which reports its own peak. Flat means prompts and candidates stream through the
cluster instead of the driver.

    .venv/bin/python bench/driver_memory.py [--prompts 200 2000] [--n 2] [--max-tokens 8]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/, the script's own folder)

CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
from rlhf_ray.stages import generation
from rlhf_ray import config_load
from rlhf_ray.config import PipelineConfig
cfg = config_load.load(PipelineConfig, None, {overrides!r})
start = time.perf_counter()
generation.run(cfg)
print("RESULT", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
"""


def tiny_model(path: Path) -> str:
    from rlhf_ray import models

    tok = models.load_tokenizer(models.local_path("default"))
    models.save_policy(models.tiny_causal_lm(tok, hidden_size=128, layers=2, heads=2), tok, path)
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--out", default=str(common.RESULTS / "driver_memory.json"))
    args = p.parse_args()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = {**common.machine(), "n": args.n, "max_tokens": args.max_tokens, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "model")
        for m in args.prompts:
            overrides = [f"run_dir={tmp}/run{m}", "task.name=arithmetic", "task.sft_rows=0", f"task.prompt_rows={m}",
                         f"generate.model_dir={model}", f"generate.n={args.n}", f"generate.max_tokens={args.max_tokens}",
                         "generate.max_model_len=256", "generate.rows_per_call=100"]
            out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), overrides=overrides)],
                                 env=env, capture_output=True, text=True, timeout=1800)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
            if line is None:
                raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
            rss_kb, secs = line.split()[1:]
            res["runs"][str(m)] = {"driver_peak_rss_mb": int(rss_kb) / 1024, "seconds": float(secs),
                                   "candidates": m * args.n}
            print(f"{m} prompts: driver peak RSS {int(rss_kb) / 1024:.0f} MB, {float(secs):.0f} s", flush=True)
    sizes = [str(m) for m in args.prompts]
    res["rss_ratio_largest_vs_smallest"] = (res["runs"][sizes[-1]]["driver_peak_rss_mb"]
                                            / res["runs"][sizes[0]]["driver_peak_rss_mb"])
    print(f"driver peak RSS ×{res['rss_ratio_largest_vs_smallest']:.2f} for {args.prompts[-1] // args.prompts[0]}× the prompts")
    common.write(args.out, res)


if __name__ == "__main__":
    main()
