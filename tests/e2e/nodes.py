"""Ray nodes on this machine for the end-to-end tests: a head and worker nodes started with `ray start
--block` on loopback (each its own process group and temp dir, stopped or killed by PID), as separate
machines would be."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from rlhf_ray import models

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_cache(path: Path) -> Path:
    # Each node has its own cache, with the embedded policy already converted (as a node image would).
    path.mkdir()
    (path / "smollm2-135m-instruct").symlink_to(models.default_policy_dir())
    return path


def node_ports() -> list[str]:
    # The session's own cluster already holds Ray's default ports: every node here gets free ones.
    return [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port")]


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # --block keeps each node in the foreground: terminating its process group stops that node.
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                             "--disable-usage-stats", *node_ports(), *args],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def kill(proc: subprocess.Popen) -> None:
    """A machine lost: SIGKILL to the node's process group and to every process below it (Ray's workers
    start sessions of their own), nothing shut down in order."""
    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    os.killpg(proc.pid, signal.SIGKILL)
    for p in below:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def _raise():
    raise OSError("not yet")


def alive_nodes(address: str, env: dict) -> int:
    out = subprocess.run([str(BIN / "ray"), "list", "nodes", f"--address={address}", "--format=json"],
                         env=env, capture_output=True, text=True, timeout=60)
    return sum(n["state"] == "ALIVE" for n in json.loads(out.stdout or "[]"))


def wait_for(check, proc, log: Path, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            check()
            return
        except (OSError, ValueError):
            assert proc.poll() is None, log.read_text()
            time.sleep(1)
    pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")


class Nodes:
    """A head (``head_cpus``) and worker nodes added with ``add``; ``close`` stops what is left."""

    def __init__(self, folder: Path, head_cpus: int, env: dict | None = None, head_resources: dict | None = None):
        self.folder, self.port, dash = folder, free_port(), free_port()
        # No drain on SIGTERM: killing the head's process group takes its GCS down too, and the drain call
        # then waited out its whole 30 s before the node stopped.
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    **(env or {})}
        self.address, self.gcs = f"http://127.0.0.1:{dash}", f"127.0.0.1:{self.port}"
        self.procs, self.temps, self.workers = [], [], []
        head_env = {**self.env, "RLHF_RAY_CACHE": str(node_cache(folder / "head_cache"))}
        self.head = start(["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                           f"--num-cpus={head_cpus}", f"--ray-client-server-port={free_port()}",
                           *([f"--resources={json.dumps(head_resources)}"] if head_resources else [])], head_env,
                          folder / "head.log")
        self.procs.append(self.head)
        wait_for(lambda: urllib.request.urlopen(f"{self.address}/api/version", timeout=2), self.head,
                 folder / "head.log")

    def add(self, cpus: int) -> subprocess.Popen:
        """A worker node, once it is alive in the cluster."""
        n = len(self.workers)
        # Its own temp dir, as a second machine has: sharing the head's, the worker's runtime-env agent
        # unpacks a job's working_dir again over the one the driver runs in, and the driver's cwd is gone.
        # (Short, in /tmp: Ray's socket paths under it must stay within 107 characters.)
        self.temps.append(tempfile.mkdtemp(prefix="rw"))
        cache = self.folder / f"worker{n}_cache"
        env = {**self.env, "RLHF_RAY_CACHE": str(node_cache(cache))}
        log = self.folder / f"worker{n}.log"
        proc = start([f"--address={self.gcs}", f"--num-cpus={cpus}", f"--temp-dir={self.temps[-1]}"], env, log)
        self.procs.append(proc)
        self.workers.append(proc)
        alive = 1 + sum(p.poll() is None for p in self.workers)
        wait_for(lambda: alive_nodes(self.address, self.env) == alive or _raise(), proc, log)
        return proc

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                stop(p)
        for t in self.temps:
            shutil.rmtree(t, ignore_errors=True)
