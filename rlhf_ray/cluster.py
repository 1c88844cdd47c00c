"""Connecting a job to Ray."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path


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

    It listens on loopback only: no other machine joins a job's own cluster, and its GCS, raylet, workers
    and agents need not be reachable from the network. Ray turns a loopback node address into the
    machine's outward one unless multi-node clusters are off (its macOS/Windows mode, read from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported, so set on the already imported module too).
    A cluster other machines join is started with ``ray start --head`` and given as RAY_ADDRESS.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", dashboard_host="127.0.0.1", dashboard_port=port, _node_ip_address="127.0.0.1")


def unshared_nodes(run_dir: str) -> list[str]:
    """The alive nodes (by IP) that do not see the local folder ``run_dir`` as this node wrote it: a
    marker written here is looked for by a task pinned to each node. Empty on a one-node cluster or a
    file system every node mounts."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return []
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".rlhf_ray_shared_{uuid.uuid4().hex}"
    marker.write_text(marker.name)
    try:
        sees = ray.remote(num_cpus=0)(_sees)
        answers = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                           .remote(str(marker)) for n in nodes], timeout=120)
    finally:
        marker.unlink()
    return [n["NodeManagerAddress"] for n, seen in zip(nodes, answers) if not seen]


def _sees(path: str) -> bool:
    p = Path(path)
    return p.is_file() and p.read_text() == p.name


def check_run_dir(run_dir: str) -> None:
    """A local run folder on a cluster of several nodes must be one they all see (a shared mount);
    otherwise checkpoints, candidates and models land on whichever node wrote them."""
    import ray

    from rlhf_ray.config import ConfigError

    connect()
    if not ray.cluster_resources().get("CPU"):
        raise ConfigError(f"run_dir={run_dir} is a local folder and this Ray cluster has no CPUs yet: its work runs on "
                          f"nodes the autoscaler adds, which cannot be checked to see it. Use a storage URI "
                          f"(s3://BUCKET/run, gs://BUCKET/run)")
    missing = unshared_nodes(run_dir)
    if missing:
        raise ConfigError(f"run_dir={run_dir} is a folder that nodes {', '.join(missing)} of this Ray cluster do not "
                          f"see: what they write would stay on their disks. Use a storage URI (s3://BUCKET/run, "
                          f"gs://BUCKET/run) or a file system every node mounts at that path")
