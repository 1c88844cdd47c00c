"""`ray job submit` of the SFT job to a head started on loopback (its own cluster, stopped by PID)."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_ray import chat, manifest

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    port, dash = free_port(), free_port()
    # The session's own cluster already holds Ray's default agent ports: give this head free ones.
    agent_ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    # --block keeps the head in the foreground: terminating this one process stops the whole cluster.
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
         *agent_ports],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(1)
    else:
        pytest.fail("the Ray head's job API did not come up:\n" + (tmp_path / "head.log").read_text())
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_ray_job_submit_sft_tiny_config(head, tmp_path):
    address, env = head
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={address}", "--working-dir", ".", "--",
           "python", "jobs/sft.py", "jobs/configs/tiny.yaml", f"run_dir={run_dir}"]
    for _ in range(6):
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
        # The job API answers before the head's job agent is up (slower when another cluster runs).
        if "No available agent to submit job" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in out.stdout
    model_dir = run_dir / "sft" / "model"
    assert manifest.read(run_dir / "sft")["counts"]["steps"] == 12
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = chat.render_prompt([{"role": "user", "content": "What is 21 + 34?"}], tok)
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                         eos_token_id=chat.end_of_turn_ids(tok), pad_token_id=tok.pad_token_id)
    text = tok.decode(gen[0, len(prompt):], skip_special_tokens=False)
    # Chat format: an answer that ends its turn with the end-of-turn token and mentions a number.
    assert text.endswith("<|im_end|>") and any(ch.isdigit() for ch in text), text
