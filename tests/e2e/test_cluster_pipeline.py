"""The tiny pipeline through `ray job submit` on a two-node Ray cluster started on loopback (its own
processes, stopped by PID), with its run folder in object storage (a local S3 endpoint) and a cache
folder per node: work lands on both nodes, the worker node reads models from storage; the job, stopped
during scoring and submitted again with the head's mirror wiped, resumes from storage without redoing
generation and writes its report there."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nodes import BIN, Nodes, free_port, start, stop, wait_for  # tests/e2e
from rlhf_ray import storage
from rlhf_ray.core import chat

pytestmark = pytest.mark.timeout(1800)  # two pipeline runs of ~12 Ray stages on 2 cores
REPO = Path(__file__).resolve().parents[2]
# Lean: the synthetic-pair RM, no baseline or rule-reward chain, no greedy eval (test_front_door runs those).
SMALL = ["reward.source=files", "reward.train.lr=3e-4", "task.sft_rows=16", "task.prompt_rows=8", "task.eval_rows=8",
         "sft.train.epochs=1", "reward.data.eval_rows=4", "reward.train.epochs=1", "generate.n=4", "generate.max_tokens=24",
         "rs.baseline=false", "rs.rule_reward=", "rs.train.epochs=1", "eval.bon_n=[1,2,4]", "eval.policy_samples=2",
         "eval.greedy=false", "eval.n_boot=1000"]


@pytest.fixture
def two_nodes(tmp_path, s3_server):
    # The S3 endpoint's AWS_* variables come from the environment (tests/conftest.py).
    nodes = Nodes(tmp_path, head_cpus=1)
    try:
        nodes.add(cpus=3)
        yield nodes.address, {**nodes.env, "RLHF_RAY_TEST_GCS": nodes.gcs}
    finally:
        nodes.close()


def ray_job(env, *args, timeout=900):
    cmd = [str(BIN / "ray"), "job", *args]
    for _ in range(6):
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        # The job API answers before the head's job agent is up (slower when another cluster runs).
        if "No available agent to submit job" not in out.stdout + out.stderr:
            return out
        time.sleep(5)
    return out


def test_pipeline_job_on_two_nodes_with_storage_resumes_after_a_stop_during_scoring(two_nodes, tmp_path,
                                                                                     s3_bucket):
    address, env = two_nodes
    run = f"{s3_bucket}/run"
    entry = ["--", "python", "jobs/pipeline.py", "rlhf_ray/configs/tiny.yaml", f"run_dir={run}", *SMALL]
    first = ray_job(env, "submit", f"--address={address}", "--submission-id=tiny-1", "--no-wait", "--working-dir", ".",
                    *entry)
    assert first.returncode == 0, first.stderr
    generated = f"{run}/rs/round1/generate/manifest.json"
    deadline = time.time() + 900
    checked = time.time()
    while not storage.exists(generated) and time.time() < deadline:
        if time.time() - checked > 15:  # a job that failed early fails the test now, with its log
            status = ray_job(env, "status", f"--address={address}", "tiny-1").stdout
            assert "RUNNING" in status or "PENDING" in status, ray_job(env, "logs", f"--address={address}",
                                                                       "tiny-1").stdout[-4000:]
            checked = time.time()
        time.sleep(0.5)
    assert storage.exists(generated), ray_job(env, "logs", f"--address={address}", "tiny-1").stdout[-4000:]
    time.sleep(3)  # scoring starts right after generation; its actor alone takes ~10 s to load
    stopped = ray_job(env, "stop", f"--address={address}", "tiny-1")
    assert stopped.returncode == 0, stopped.stderr
    assert not storage.exists(f"{run}/rs/round1/score/manifest.json"), "scoring finished before the stop"
    generated_at = json.loads(storage.read_text(generated))["finished_at"]
    shutil.rmtree(tmp_path / "head_cache" / "runs")  # the next driver starts from storage alone

    second = ray_job(env, "submit", f"--address={address}", "--submission-id=tiny-2", "--working-dir", ".", *entry)
    assert second.returncode == 0 and "succeeded" in second.stdout, second.stdout[-4000:] + second.stderr[-2000:]
    assert "/rs/round1/generate is up to date" in second.stdout
    assert json.loads(storage.read_text(generated))["finished_at"] == generated_at
    results = json.loads(storage.read_text(f"{run}/eval/results.json"))
    assert set(results["policies"]) == {"sft", "rs"} and set(results["best_of_n"]) == {"1", "2", "4"}
    assert "<tr><td>4</td>" in storage.read_text(f"{run}/report.html")  # the best-of-N table's N=4 row
    # Actors and Train workers on the worker node read the run's models from storage, into its own cache.
    fetched = {json.loads((d / ".listing.json").read_text())["uri"]
               for d in (tmp_path / "worker0_cache" / "fetched").iterdir()}
    assert fetched & {f"{run}/sft/model", f"{run}/rm/model"}, fetched

    actors = json.loads(subprocess.run(
        [str(BIN / "ray"), "list", "actors", f"--address={address}", "--format=json", "--limit=10000", "--detail"],
        env=env, capture_output=True, text=True, timeout=120).stdout)
    assert len({a["node_id"] for a in actors if a["node_id"]}) == 2, "all work ran on one node"

    # The SFT output loads with transformers and answers in the chat format.
    model_dir = storage.local(f"{run}/sft/model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    question = "Which of these is a fruit: saw, plum, egypt, violin? Answer with one word."
    prompt = chat.render_prompt([{"role": "user", "content": question}], tok)
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                         eos_token_id=chat.end_of_turn_ids(tok), pad_token_id=tok.pad_token_id)
    text = tok.decode(gen[0, len(prompt):], skip_special_tokens=False)
    assert text.endswith("<|im_end|>") and any(ch.isalpha() for ch in text.removesuffix("<|im_end|>")), text


TRAIN_BESIDE = """
import time
import ray.train
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from rlhf_ray import cluster

def loop():
    for step in range(5):
        time.sleep(2)
        ray.train.report({"step": step})

cluster.connect()
DataParallelTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=1)).fit()
print("trained")
"""


@pytest.mark.timeout(300)
def test_a_job_that_starts_its_own_cluster_trains_beside_another_cluster_on_the_machine(tmp_path):
    # `ray start` records its cluster as the machine's latest. Ray Train's placement-group cleaner looked
    # the job's controller up there, found none, and removed the job's placement group mid-training.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    dash = free_port()
    other = start(["--head", f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                   "--num-cpus=1", f"--ray-client-server-port={free_port()}"], env, tmp_path / "other.log")
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2), other,
                 tmp_path / "other.log")
        job_env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        out = subprocess.run([sys.executable, "-c", TRAIN_BESIDE], cwd=REPO, env=job_env, capture_output=True,
                             text=True, timeout=240)
        assert out.returncode == 0 and "trained" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
        assert "placement group was removed" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-4000:]
    finally:
        stop(other)


def test_a_local_run_dir_is_probed_on_every_node(two_nodes, tmp_path):
    """The run_dir check of a job joining a cluster (cluster.unshared_nodes) runs a task pinned to each of
    the two nodes; both share this machine's disk, so both see the marker, and the marker is gone after."""
    _, env = two_nodes
    code = ("import json, ray, sys; from rlhf_ray import cluster; cluster.connect(); "
            "alive = sum(n['Alive'] for n in ray.nodes()); "
            "print(json.dumps({'alive': alive, 'missing': cluster.unshared_nodes(sys.argv[1])}))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True,
                         env={**env, "RAY_ADDRESS": env["RLHF_RAY_TEST_GCS"]}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"alive": 2, "missing": []}
    assert list((tmp_path / "run").iterdir()) == []  # the marker was removed

