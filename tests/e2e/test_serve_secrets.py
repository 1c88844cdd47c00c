"""Where the endpoint's API key lives, read from the outside: the serve job starts its own local cluster
with the key in its environment, and /proc/<pid>/environ of every process on the machine holds it once
(the job's own, where the user put it): not the raylet, not the replicas, not Ray's workers. Every port
that job's processes listen on is on loopback."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def holding(secret: bytes) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if secret in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                pass
    return pids


def exposed(pid: int) -> list[str]:
    """What the process and its descendants listen on beyond loopback."""
    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            sockets = p.net_connections(kind="inet")
        except psutil.Error:  # gone meanwhile
            continue
        out += [f"{p.name()} (pid {p.pid}) on {c.laddr.ip}:{c.laddr.port}" for c in sockets
                if c.status == psutil.CONN_LISTEN and not (c.laddr.ip.removeprefix("::ffff:").startswith("127.")
                                                           or c.laddr.ip == "::1")]
    return out


def test_the_api_key_is_in_the_job_process_only_docs_are_off_and_ports_are_on_loopback(tiny_vllm_policy_dir, tiny_vllm_rm_dir, tmp_path):
    key = f"k-{uuid.uuid4().hex}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RLHF_RAY_API_KEY=key, RAY_AUTH_MODE="disabled")
    log = open(tmp_path / "serve.log", "w")
    job = subprocess.Popen([sys.executable, "jobs/serve_bon.py", "tiny", f"run_dir={tmp_path / 'run'}",
                            f"serve.policy={tiny_vllm_policy_dir}", f"serve.reward_model={tiny_vllm_rm_dir}",
                            f"serve.port={port}", "serve.max_model_len=512", "serve.max_tokens=64",
                            "serve.max_prompt_tokens=256", "serve.scorer.num_cpus=0.5", "tracking.backend=none"],
                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 420
        while "best-of-N on http" not in (tmp_path / "serve.log").read_text():
            assert job.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
            time.sleep(1)
        url = f"http://127.0.0.1:{port}"
        ok = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert ok.status_code == 200, ok.text  # the ingress checks the key it never held
        assert holding(f"RLHF_RAY_API_KEY={key}".encode()) == [job.pid]
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 404
        # Serve 2.60 binds each replica's inter-deployment gRPC server to [::]:0 itself (serve/_private/
        # replica.py, no setting): one such port per replica is upstream's; anything else is ours.
        ours = [e for e in exposed(job.pid) if not e.startswith("ray::ServeReplica:best-of-n:")]
        assert ours == [], "\n".join(ours)
    finally:
        os.killpg(job.pid, signal.SIGINT)  # the job stops its own cluster with it
        try:
            job.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
