"""One console line per long stage: rows done of the total, rate and time left, every ``EVERY_S`` seconds.

Ray Data's own progress output is off (``cluster.connect``): without a terminal (``ray job submit``,
``make run | tee``, CI) it logs a block of per-operator lines every few seconds for every dataset. Instead
the actors of a stage count the rows they finished into a ``Counter`` actor that a driver thread reads;
no library reports progress across a Ray Data actor pool to the driver, hence this small piece.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

EVERY_S = 20.0


def clock(seconds: float) -> str:
    """``75`` → ``1m15s``; ``3725`` → ``1h02m``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def line(stage: str, done: int, total: int, seconds: float, unit: str) -> str:
    """What a stage prints: ``[generate] 30/120 prompts (25%), 0.50 prompts/s, 3m00s left``."""
    done = min(done, total)  # a call retried after its actor died counts twice
    rate = done / seconds if seconds > 0 else 0.0
    left = clock((total - done) / rate) + " left" if rate > 0 else "starting"
    if done == total:
        left = f"done in {clock(seconds)}"
    return f"[{stage}] {done}/{total} {unit} ({done / max(total, 1):.0%}), {rate:.2f} {unit}/s, {left}"


def label(stage: str, out) -> str:
    """``generate`` writing into ``<cwd>/runs/tiny/rs/round1/generate`` → ``generate runs/tiny/rs/round1``."""
    where = os.path.dirname(str(out).rstrip("/"))
    try:
        if os.path.isabs(where) and not (rel := os.path.relpath(where)).startswith(".."):
            where = rel
    except OSError:  # the working directory is gone (a replaced `ray job submit` working_dir)
        pass
    return f"{stage} {where}"


class StepClock:
    """A training stage's console line every ``every`` steps (and the last, and any with held-out figures):
    the step of the total, loss, lr, held-out figures and time left, from this attempt's pace (a resumed
    run counts from the step it resumed at)."""

    def __init__(self, step: int, total: int, every: int):
        self.first, self.total, self.every, self.start = step, total, every, time.perf_counter()

    def line(self, stage: str, metrics: dict, now: float | None = None) -> str | None:
        step = metrics["step"]
        held_out = [k for k in metrics if k.startswith("eval")]
        if step % self.every and step != self.total and not held_out:
            return None
        seconds = (time.perf_counter() if now is None else now) - self.start
        pace = seconds / max(step - self.first, 1)
        shown = " ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", "lr", *held_out))
        left = f"{clock(pace * (self.total - step))} left" if step < self.total else f"done in {clock(seconds)}"
        return f"[{stage}] step {step}/{self.total} {shown}, {left}"


class Counter:
    """Rows finished by a stage's actors (they call ``add`` without waiting for it)."""

    def __init__(self):
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    def get(self) -> int:
        return self.done


@contextlib.contextmanager
def track(stage: str, total: int, unit: str, every_s: float = EVERY_S):
    """A ``Counter`` actor for the stage's actors (``counter.add.remote(rows)``), and a driver thread
    that prints ``line`` every ``every_s`` seconds and once at the end."""
    import ray

    counter = ray.remote(num_cpus=0)(Counter).remote()
    start, stop = time.perf_counter(), threading.Event()

    def show() -> None:
        try:
            done = ray.get(counter.get.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a progress line is never worth failing or holding up a stage
            return
        print(line(stage, done, total, time.perf_counter() - start, unit), flush=True)

    def loop() -> None:
        while not stop.wait(every_s):
            show()

    thread = threading.Thread(target=loop, name=f"{stage}-progress", daemon=True)
    thread.start()
    try:
        yield counter
        show()
    finally:
        stop.set()
        thread.join()
        ray.kill(counter)
