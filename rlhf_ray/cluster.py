"""Connecting a job to Ray."""
from __future__ import annotations

import logging
import os
import socket


def connect() -> None:
    """Join the cluster named by RAY_ADDRESS (set by `ray job submit`), else start a local one.

    A plain ``ray.init()`` would attach to whatever cluster the machine last started, stale or not.
    """
    import ray
    import ray.data

    # Ray Train reports block on the controller's poll; the default 2 s dominates short steps.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            start_local()
    # Rows keep file order through every stage: held-out splits ("the last N rows") and resumed
    # epochs then see the same rows on every run.
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # The long stages print their own progress line (progress.track); Ray Data's would add a block of
    # per-operator lines every few seconds per dataset where stdout is no terminal (job logs, CI, tee).
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
    # Ray Data's per-dataset INFO lines (execution plan, "finished in") go to its log file only
    # (RAY_SESSION/logs/ray-data); its warnings and errors still reach the console.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.WARNING)


def start_local() -> None:
    """Start a local cluster whose own processes can find it.

    Ray's processes that query cluster state (Ray Train's placement-group cleaner) look the cluster up
    by RAY_API_SERVER_ADDRESS, else by the machine's last `ray start`: a stale address printed a
    traceback per training stage, and a live other cluster answered "no such controller", upon which the
    cleaner removed this run's placement group and killed its training. The cluster's processes inherit
    this process's environment, so the dashboard's address is set before it starts.
    """
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", dashboard_host="127.0.0.1", dashboard_port=port)
