"""Faults where the work is spread over nodes (a head and worker nodes on this machine, tests/e2e/nodes.py):
a worker node lost mid-run is replaced and the work goes on from where it was, losing and repeating
nothing it should not. Each test records how long recovery took (printed, and written to its folder)."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from nodes import Nodes, free_port, kill  # tests/e2e

pytestmark = pytest.mark.timeout(1200)
REPO = Path(__file__).resolve().parents[2]


def driver(nodes: Nodes, args: list[str], log: Path) -> subprocess.Popen:
    """A job's driver joined to the nodes' cluster, as `ray job submit` runs it on the head."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env={**nodes.env, "RAY_ADDRESS": nodes.gcs},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    return text


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being written
        return None


def weights(model_dir: Path) -> dict:
    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


def sft_args(run_dir: Path, policy: str) -> list[str]:
    # 160 rows over 2 workers, 2 rows each per step: 40 steps, a resumable checkpoint every 5.
    return ["jobs/sft.py", "rlhf_ray/configs/tiny.yaml", f"run_dir={run_dir}", f"policy.name={policy}",
            "tracking.backend=none", "task.sft_rows=160", "sft.train.epochs=1", "sft.train.cpu_bf16=false",
            "sft.train.lr=3e-3", "sft.train.micro_batch_size=2", "sft.train.global_batch_size=4",
            "sft.train.checkpoint_every=5", "sft.scaling.num_workers=2", "sft.scaling.placement_strategy=SPREAD",
            "sft.scaling.max_failures=2"]


def test_a_lost_node_of_two_sft_workers_resumes_from_the_last_checkpoint_to_the_same_model(tmp_path,
                                                                                           tiny_policy_dir):
    # The head takes one worker; the other can only go to a worker node (SPREAD would put it there anyway).
    nodes = Nodes(tmp_path, head_cpus=1)
    try:
        first = nodes.add(cpus=3)
        run = tmp_path / "faulted"
        job = driver(nodes, sft_args(run, tiny_policy_dir), tmp_path / "faulted.log")
        ranks = [run / "sft" / "workers" / f"rank{r}.json" for r in (0, 1)]
        deadline = time.time() + 600
        while (state := read_json(ranks[0])) is None or state["step"] < 12:
            assert job.poll() is None and time.time() < deadline, (tmp_path / "faulted.log").read_text()[-5000:]
            time.sleep(0.05)
        assert state["step"] < 35, "training ran past its last resumable checkpoint before the kill"
        pids = {read_json(r)["pid"] for r in ranks}
        killed_at, killed_step = time.time(), state["step"]
        kill(first)  # the node holding one rank, with that rank's worker and its Ray processes
        nodes.add(cpus=3)  # its replacement
        resumed_at = None
        while resumed_at is None and job.poll() is None:
            states = [read_json(r) for r in ranks]
            if all(s and s["pid"] not in pids and s["step"] > 0 for s in states):
                resumed_at = time.time()  # both new workers have taken a step
            time.sleep(0.05)
        finish(job, tmp_path / "faulted.log")

        reference = tmp_path / "reference"
        finish(driver(nodes, sft_args(reference, tiny_policy_dir), tmp_path / "reference.log"),
               tmp_path / "reference.log")
    finally:
        nodes.close()

    steps = [json.loads(line)["step"] for line in open(run / "sft" / "metrics.jsonl")]
    assert steps[-1] == 40 and sorted(set(steps)) == list(range(1, 41))
    assert len(steps) > 40, "no step was repeated: the workers were not restarted"
    # The restart went back to a checkpoint (a multiple of 5) at or before the step it was killed at.
    restart = steps[[i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]][0]] - 1
    assert restart % 5 == 0 and restart <= killed_step, (restart, killed_step)
    faulted, uninterrupted = weights(run / "sft" / "model"), weights(reference / "sft" / "model")
    assert faulted.keys() == uninterrupted.keys()
    diff = max((faulted[k].float() - uninterrupted[k].float()).abs().max().item() for k in faulted)
    assert diff <= 1e-6, f"the resumed model differs from the uninterrupted one by {diff}"
    record = {"killed_at_step": killed_step, "resumed_from_step": restart, "max_abs_weight_diff": diff,
              "recovery_s": round(resumed_at - killed_at, 1) if resumed_at else None}
    (tmp_path / "recovery.json").write_text(json.dumps(record))
    print("recovery:", record)
    assert resumed_at is not None


def test_the_generators_node_lost_under_load_is_503_replica_lost_then_answered_again_by_the_same_app(
        tmp_path, tiny_vllm_policy_dir, tiny_vllm_rm_dir):
    # The head holds the ingress, the scorer and the only HTTP proxy (nodes here share one machine, so one
    # port); the generator (1.5 CPUs) fits only on a worker node.
    nodes = Nodes(tmp_path, head_cpus=1, head_resources={"head": 2})
    port, log = free_port(), tmp_path / "serve.log"
    answers, stop_load = [], threading.Event()

    def load():
        while not stop_load.is_set() and len(answers) < 2000:
            sent = time.time()
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=180,
                               json={"messages": [{"role": "user", "content": "Hi"}], "n": 2, "max_tokens": 8})
                try:
                    answers.append((sent, r.status_code, r.json()))
                except ValueError:  # not JSON: an answer that did not come from the app
                    answers.append((sent, r.status_code, r.text))
            except httpx.HTTPError as e:
                answers.append((sent, None, repr(e)))

    try:
        worker = nodes.add(cpus=2)
        job = driver(nodes, ["jobs/serve_bon.py", "tiny", f"run_dir={tmp_path / 'run'}", "tracking.backend=none",
                             f"serve.policy={tiny_vllm_policy_dir}", f"serve.reward_model={tiny_vllm_rm_dir}",
                             f"serve.port={port}", "serve.max_model_len=512", "serve.max_tokens=64",
                             "serve.max_prompt_tokens=256", "serve.generator.num_cpus=1.5",
                             "serve.scorer.num_cpus=0.5", "serve.scorer.resources={head: 1}",
                             "serve.ingress.resources={head: 1}", "serve.proxy_location=HeadOnly"], log)
        deadline = time.time() + 420
        while "best-of-N on http" not in log.read_text():
            assert job.poll() is None and time.time() < deadline, log.read_text()[-5000:]
            time.sleep(1)
        clients = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for c in clients:
            c.start()
        while sum(status == 200 for _, status, _ in answers) < 8:
            assert time.time() < deadline, answers[-5:]
            time.sleep(0.2)
        killed_at = time.time()
        kill(worker)
        nodes.add(cpus=2)  # the replacement, where Serve starts a new Generator replica
        deadline = time.time() + 300
        while not any(sent > killed_at + 1 and status == 200 for sent, status, _ in list(answers)):
            assert job.poll() is None and time.time() < deadline, log.read_text()[-5000:]
            time.sleep(0.5)
        stop_load.set()
        for c in clients:
            c.join(timeout=200)
        assert job.poll() is None, "the serve job stopped"
    finally:
        stop_load.set()
        nodes.close()

    after = sorted((sent - killed_at, status, body) for sent, status, body in answers if sent > killed_at)
    lost = [(t, body) for t, status, body in after if status == 503]
    assert lost, "no request was answered 503 while the generator's node was gone"
    assert all(body["error"]["code"] == "replica_lost" and body["error"]["type"] == "server_error"
               for _, body in lost), lost[:3]
    assert {status for _, status, _ in after} <= {200, 503}, [a for a in after if a[1] not in (200, 503)][:3]
    back = min(t for t, status, _ in after if status == 200 and t > lost[-1][0])
    record = {"first_503_s": round(lost[0][0], 1), "last_503_s": round(lost[-1][0], 1), "answered_again_s": round(back, 1),
              "requests_after_kill": len(after), "replica_lost_503s": len(lost)}
    (tmp_path / "recovery.json").write_text(json.dumps(record))
    print("recovery (seconds after the kill, by when each request was sent):", record)


def parquet_rows(folder: Path) -> list[tuple[int, int]]:
    import pyarrow.dataset as pads

    table = pads.dataset(str(folder), format="parquet").to_table(columns=["prompt_id", "sample_idx"])
    return list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist()))


def kill_when_written(nodes: Nodes, worker, job, log: Path, folder: Path) -> dict:
    """Kills ``worker`` once the stage has written part of ``folder`` (some blocks, not all: the job is still
    running), then adds a replacement node; the stage's actors can only run on a worker node."""
    deadline = time.time() + 600
    while not list(folder.glob("*.parquet")):
        assert job.poll() is None and time.time() < deadline, log.read_text()[-5000:]
        time.sleep(0.05)
    written = len(list(folder.glob("*.parquet")))
    kill(worker)
    at = time.time()
    assert job.poll() is None, "the stage ended before its node was killed"
    replacement = nodes.add(cpus=2)
    return {"files_before_kill": written, "replacement_node_s": round(time.time() - at, 1), "killed_at": at,
            "replacement": replacement}


def test_a_worker_node_lost_during_generation_and_during_scoring_loses_and_repeats_no_row(
        tmp_path, tiny_vllm_policy_dir, tiny_vllm_rm_dir):
    # 64 prompts x 4 completions; the actors take 1.5 CPUs, which only a worker node (2) has.
    run = tmp_path / "run"
    common = ["rlhf_ray/configs/tiny.yaml", f"run_dir={run}", "tracking.backend=none", "task.prompt_rows=64"]
    nodes = Nodes(tmp_path, head_cpus=1)
    try:
        worker = nodes.add(cpus=2)
        log = tmp_path / "generate.log"
        job = driver(nodes, ["jobs/generate.py", *common, f"generate.model_dir={tiny_vllm_policy_dir}", "generate.n=4",
                             "generate.max_tokens=24", "generate.rows_per_call=4", "generate.cpus_per_actor=1.5",
                             "generate.threads=1"], log)
        generation = kill_when_written(nodes, job=job, worker=worker, log=log, folder=run / "generate" / "candidates")
        finish(job, log)
        generation["finished_s_after_kill"] = round(time.time() - generation.pop("killed_at"), 1)
        log = tmp_path / "score.log"
        job = driver(nodes, ["jobs/score.py", *common, f"score.model_dir={tiny_vllm_rm_dir}", "score.rows_per_call=8",
                             "score.batch_size=2", "score.cpus_per_actor=1.5", "score.threads=1"], log)
        scoring = kill_when_written(nodes, job=job, worker=generation.pop("replacement"), log=log,
                                    folder=run / "score" / "scored")
        scoring.pop("replacement")
        finish(job, log)
        scoring["finished_s_after_kill"] = round(time.time() - scoring.pop("killed_at"), 1)
    finally:
        nodes.close()

    generated, scored = parquet_rows(run / "generate" / "candidates"), parquet_rows(run / "score" / "scored")
    assert len(generated) == len(set(generated)) == 64 * 4, "candidates lost or repeated"
    assert len({p for p, _ in generated}) == 64 and {s for _, s in generated} == {0, 1, 2, 3}
    assert sorted(scored) == sorted(generated), "scored rows lost or repeated"
    record = {"generation": generation, "scoring": scoring}
    (tmp_path / "recovery.json").write_text(json.dumps(record))
    print("recovery:", record)
