"""Run the GPU checks (tests/gpu/test_gpu.py) and write what they measured to bench/results/gpu_check.json,
naming the GPU, driver, CUDA and torch. Needs only torch and transformers (pytest is not required: the
GPU machine may not have it), no Ray, no vLLM, no network.

    python tests/gpu/check.py                 # on the GPU machine (make gpu-check)
    python tests/gpu/check.py --device cpu    # a smoke run of the check itself, written beside it in /tmp

Exits 1 when a check fails, 2 when there is no CUDA device to check.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def machine() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "host": platform.node()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                    cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args.add_argument("--out", default=None, help="default: bench/results/gpu_check.json (cuda), /tmp (cpu)")
    a = args.parse_args()
    os.environ["RLHF_RAY_GPU_CHECK_DEVICE"] = a.device
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    # gpu_common, the tests' shared rows, and rlhf_ray from the checkout (not installed there)
    sys.path[:0] = [str(HERE), str(HERE.parent), str(ROOT)]
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else (ROOT / "bench" / "results" / "gpu_check.json" if a.device == "cuda"
                                     else Path(tempfile.gettempdir()) / "gpu_check_cpu_smoke.json")
    import gpu_common
    import test_gpu

    outcomes, started = {}, time.perf_counter()
    for name, fn in inspect.getmembers(test_gpu, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != test_gpu.__name__:
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            kwargs = {"tmp_path": Path(tmp)} if "tmp_path" in inspect.signature(fn).parameters else {}
            try:
                fn(**kwargs)
                status, detail = "passed", None
            except BaseException as e:  # noqa: BLE001 - pytest.skip raises its own exception type
                if type(e).__name__ == "Skipped":
                    status, detail = "skipped", str(e)
                else:
                    status, detail = "failed", "".join(traceback.format_exception(e))[-4000:]
        outcomes[name] = {"status": status, "seconds": round(time.perf_counter() - t0, 2),
                          **({"detail": detail} if detail else {})}
        print(f"{status:7s} {outcomes[name]['seconds']:7.1f} s  {name}", flush=True)
        if status == "failed":
            print(detail, file=sys.stderr)
    record = {"script": "tests/gpu/check.py", "device": a.device, "machine": machine(),
              "seconds": round(time.perf_counter() - started, 1), "tests": outcomes, "measurements": gpu_common.RESULTS}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if any(o["status"] == "failed" for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
