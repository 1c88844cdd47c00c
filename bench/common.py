"""What every benchmark shares: a timer, and one writer for bench/results/*.json that records the
command reproducing the file and refuses machine paths (a run folder is written as RUN_DIR)."""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
_MACHINE_PATH = re.compile(r'"(/(?:tmp|home|root|work|Users|var|private)/[^"]*)"')


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t["seconds"]``: wall time of the block."""
    t = {"seconds": float("nan")}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["seconds"] = time.perf_counter() - start


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__}


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name and whether it has AMX, which vLLM's bf16 kernels use: timings depend on both."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown")
    return f"{name}, {'with' if 'amx_bf16' in text else 'without'} AMX"


def write(out: str | Path, result: dict, names: dict[str, str] | None = None) -> Path:
    """``result`` with the reproducing command first and each folder of ``names`` under its name (a run
    folder as RUN_DIR), written to ``out``; raises if an absolute machine path is left in it."""
    script = Path(sys.argv[0]).resolve()
    command = " ".join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else script.name,
                        *sys.argv[1:]])
    text = json.dumps({"command": command, **result}, indent=2, default=str)
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(str(path), name)
    text = text.replace(str(ROOT) + "/", "")
    left = _MACHINE_PATH.findall(text)
    if left:
        print(text)  # the measurement is not lost
        raise ValueError(f"{out}: machine paths left in the result: {left[:3]}")
    Path(out).write_text(text + "\n")
    print(f"[bench] wrote {out}")
    return Path(out)
