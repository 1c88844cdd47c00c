"""Scaling from zero on Ray's own autoscaler (the ``fake_multinode`` provider: real raylets on this machine,
launched and removed by the real autoscaler). A head with no CPUs and no GPUs; a CPU worker type and a
"GPU" worker type (Ray's GPU resource; torch sees no CUDA there, so vLLM runs its CPU build), each from
0 to 1 node. A training job, a generation job and the endpoint each make the autoscaler add the node type
their demand names, run there, and the nodes are removed after the idle timeout. The timeline of what
was added, when and why is printed and written to the test's folder. How this runs here, and why
``ray.cluster_utils.AutoscalingCluster`` does not: ../shared/notes/ray-on-cpu.md."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1500)
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE_TYPES = {
    "cpu_node": {"resources": {"CPU": 3, "object_store_memory": 209715200}, "node_config": {}, "min_workers": 0,
                 "max_workers": 1},
    "gpu_node": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 209715200}, "node_config": {},
                 "min_workers": 0, "max_workers": 1},
}
IDLE_S = 12


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaling_config() -> dict:
    empty = {k: [] for k in ("cluster_synced_files", "initialization_commands", "setup_commands", "head_setup_commands",
                             "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")}
    return {"cluster_name": "fake", "max_workers": 2, "idle_timeout_minutes": IDLE_S / 60, "upscaling_speed": 1.0,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "auth": {"ssh_user": "ubuntu"}, "head_node_type": "ray.head.default",
            "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                     **NODE_TYPES},
            "file_mounts": {}, "file_mounts_sync_continuously": False, **empty}


@pytest.fixture
def fake_cluster(tmp_path, s3_server):
    with socket.socket() as s:  # fake nodes join the GCS on Ray's default port, whatever --port says
        if s.connect_ex(("127.0.0.1", 6379)) == 0:
            pytest.fail("port 6379 is taken: the fake-node autoscaler needs it for its head's GCS")
    cfg = tmp_path / "autoscaler.json"
    cfg.write_text(json.dumps(autoscaling_config()))
    temp = tempfile.mkdtemp(prefix="rf")  # short: Ray's socket paths must stay within 107 characters
    dash = free_port()
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled",
           "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "head.log"
    # Its own session: the head, its monitor and every node the autoscaler launches share the process
    # group, so that the teardown stops exactly what this test started.
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=0", f"--temp-dir={temp}",
                             f"--autoscaling-config={cfg}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--ray-client-server-port={free_port()}", "--disable-usage-stats"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dashboard = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{dashboard}/api/version", timeout=2)
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        from ray._private.services import get_node_ip_address

        yield {"address": f"{get_node_ip_address()}:6379", "dashboard": dashboard, "env": env,
               "monitor": Path(temp) / "session_latest" / "logs" / "monitor.log"}
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _group_alive(head.pid):
                time.sleep(0.5)
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def events(monitor: Path) -> list[tuple[float, str]]:
    """The autoscaler's own summary lines ("Adding 1 node(s) of type gpu_node.", "Removing 1 nodes of type
    gpu_node (idle).") with their times."""
    out = []
    for line in monitor.read_text().splitlines():
        m = re.match(r"(\S+ \S+),(\d+)\s+INFO monitor\.py:\d+ -- :event_summary:(.*)", line)
        if m:
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            out.append((t, m.group(3)))
    return out


def wait_for_event(monitor: Path, text: str, after: float, timeout: float = 300) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = [t for t, e in events(monitor) if text in e and t >= after - 1]
        if hits:
            return hits[0]
        time.sleep(1)
    pytest.fail(f"no {text!r} from the autoscaler within {timeout} s:\n{monitor.read_text()[-3000:]}")


def ray_cli(c, *args) -> list:
    out = subprocess.run([str(BIN / "ray"), *args, f"--address={c['dashboard']}", "--format=json"], env=c["env"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout or "[]")


def node_type_of_actors(c, class_part: str) -> set[str]:
    """The worker types (by their resources) of the nodes that ran actors whose class name contains
    ``class_part``, alive or dead."""
    nodes = {n["node_id"]: n for n in ray_cli(c, "list", "nodes", "--detail", "--limit=100")}
    actors = [a for a in ray_cli(c, "list", "actors", "--detail", "--limit=1000") if class_part in a["class_name"]]
    assert actors, f"no actor of class *{class_part}*"

    def kind(node):
        total = node["resources_total"]
        return "gpu_node" if total.get("GPU") else "cpu_node" if total.get("CPU") else "head"

    return {kind(nodes[a["node_id"]]) for a in actors}


def job(c, script: str, *overrides, check=True, timeout=900) -> subprocess.CompletedProcess:
    env = {**c["env"], "RAY_ADDRESS": c["address"]}
    out = subprocess.run([sys.executable, f"jobs/{script}", "rlhf_ray/configs/tiny.yaml", *overrides], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out


def test_training_generation_and_serving_demands_add_the_right_nodes_which_go_when_idle(
        fake_cluster, tmp_path, s3_bucket, tiny_policy_dir, tiny_vllm_policy_dir, tiny_vllm_rm_dir):
    c, monitor = fake_cluster, fake_cluster["monitor"]
    timeline: list[dict] = []
    assert not [e for _, e in events(monitor) if e.startswith("Adding")]  # it starts from zero workers

    # A local run folder on a cluster whose work runs on nodes yet to be added: one line, before any work.
    refused = job(c, "sft.py", f"run_dir={tmp_path / 'local_run'}", check=False, timeout=300)
    ours = [line for line in refused.stderr.splitlines() if not re.search(r"\sINFO\s", line) and line.strip()]
    assert refused.returncode == 1 and len(ours) == 1 and ours[0].startswith("sft: run_dir=") \
        and "has no CPUs yet" in ours[0], refused.stderr

    run = f"{s3_bucket}/run"
    common = [f"run_dir={run}", "task.sft_rows=16", "task.prompt_rows=4", "tracking.backend=none"]

    # Training: one Ray Train worker wanting 2 CPUs fits only cpu_node (3 CPUs, the other 1).
    start = time.time()
    job(c, "sft.py", *common, f"policy.name={tiny_policy_dir}", "sft.train.epochs=1", "sft.train.trainable_layers=0",
        "sft.scaling.cpus_per_worker=2")
    added = wait_for_event(monitor, "Adding 1 node(s) of type cpu_node", start)
    assert node_type_of_actors(c, "RayTrainWorker") == {"cpu_node"}
    timeline.append({"stage": "sft (Ray Train, 1 worker x 2 CPUs)", "added": "cpu_node", "after_s": round(added - start, 1),
                     "ran_on": "cpu_node", "stage_s": round(time.time() - start, 1)})

    # Generation: a vLLM actor that reserves a GPU goes to gpu_node.
    start = time.time()
    job(c, "generate.py", *common, f"generate.model_dir={tiny_vllm_policy_dir}", "generate.gpus_per_actor=1",
        "generate.cpus_per_actor=0", "generate.n=2", "generate.max_tokens=8", "generate.threads=1")
    added = wait_for_event(monitor, "Adding 1 node(s) of type gpu_node", start)
    assert node_type_of_actors(c, "VLLMGenerator") == {"gpu_node"}
    timeline.append({"stage": "generate (vLLM actor, 1 GPU)", "added": "gpu_node", "after_s": round(added - start, 1),
                     "ran_on": "gpu_node", "stage_s": round(time.time() - start, 1)})
    removed = wait_for_event(monitor, "Removing 1 nodes of type gpu_node (idle)", start)

    # Serving: the generator replica wants a GPU (gpu_node again, since the last one went idle).
    port = free_port()
    start = time.time()
    env = {**c["env"], "RAY_ADDRESS": c["address"]}
    serve_log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "jobs/serve_bon.py", "rlhf_ray/configs/tiny.yaml", *common,
                               f"serve.policy={tiny_vllm_policy_dir}", f"serve.reward_model={tiny_vllm_rm_dir}",
                               "serve.generator.num_gpus=1", "serve.generator.num_cpus=0.5", "serve.scorer.num_cpus=0.5",
                               f"serve.port={port}", "serve.max_tokens=8"],
                              cwd=REPO, env=env, stdout=open(serve_log, "w"), stderr=subprocess.STDOUT)
    try:
        body = json.dumps({"model": "rlhf-ray-best-of-n", "n": 2, "max_tokens": 8,
                           "messages": [{"role": "user", "content": "Which is a fruit: saw, plum?"}]}).encode()
        deadline, answer = time.time() + 600, None
        while answer is None:
            assert server.poll() is None, serve_log.read_text()[-3000:]
            assert time.time() < deadline, serve_log.read_text()[-3000:]
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                             {"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
            except OSError:
                time.sleep(3)
        assert answer["choices"][0]["message"]["content"] is not None
        added = wait_for_event(monitor, "Adding 1 node(s) of type gpu_node", removed + 0.5)
        assert node_type_of_actors(c, ":Generator") == {"gpu_node"}  # ServeReplica:best-of-n:Generator
        timeline.append({"stage": "serve (Generator replica, 1 GPU)", "added": "gpu_node",
                         "after_s": round(added - start, 1), "ran_on": "gpu_node",
                         "first_answer_s": round(time.time() - start, 1)})
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Seen once in three runs (2026-12-06): the serve driver, joined to this cluster, had not exited
            # 60 s after Ctrl-C (cause not found). Not what this test measures; an open question, not a pass.
            print("serve job still running 60 s after SIGINT; killed", flush=True)
            server.kill()
            server.wait(timeout=30)
    # The endpoint outlives its driver on a cluster (Serve is detached): take it down as an operator would.
    down = subprocess.run([str(BIN / "serve"), "shutdown", "-y", f"--address={c['dashboard']}"], env=c["env"],
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]

    # Every worker node goes once idle; the cluster is back to its head alone.
    deadline = time.time() + 300
    while sum(n["state"] == "ALIVE" for n in ray_cli(c, "list", "nodes", "--limit=100")) > 1:
        assert time.time() < deadline, monitor.read_text()[-3000:]
        time.sleep(2)
    # Each node added was removed for idleness (data tasks may have added CPU nodes between stages).
    log = [e for _, e in events(monitor) if e.startswith(("Adding", "Removing"))]
    for kind in NODE_TYPES:
        assert log.count(f"Adding 1 node(s) of type {kind}.") == log.count(f"Removing 1 nodes of type {kind} (idle).")
    assert log.count("Adding 1 node(s) of type gpu_node.") == 2  # generation, then serving: GPU demand only
    record = {"node_types": NODE_TYPES, "idle_timeout_s": IDLE_S, "stages": timeline,
              "autoscaler_events": [{"t": round(t - events(monitor)[0][0], 1), "event": e} for t, e in events(monitor)]}
    (tmp_path / "autoscaler_timeline.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
