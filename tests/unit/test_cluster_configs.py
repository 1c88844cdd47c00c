"""Shipped cluster and Serve configs validate against Ray's own schemas (offline, from the ray wheel);
KubeRay manifests carry the fields KubeRay requires (its CRD schema is not available offline)."""
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]


def load(path: str):
    return yaml.safe_load((ROOT / path).read_text())


def test_cluster_launcher_config_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load("cluster/aws-gpu.yaml")
    jsonschema.validate(cfg, schema)
    gpu_types = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu_types.values())
    assert cfg["idle_timeout_minutes"] > 0
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    broken = {**cfg, "available_node_types": {**cfg["available_node_types"], "bad": {"node_config": {}}}}
    with pytest.raises(jsonschema.ValidationError):  # the schema really checks: resources is required
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("path", ["jobs/configs/serve-bon.yaml"])
def test_serve_config_validates_against_serves_schema(path):
    cfg = ServeDeploySchema.model_validate(load(path))
    assert cfg.http_options.host == "127.0.0.1"
    app = cfg.applications[0]
    assert app.import_path == "rlhf_ray.serve:app_builder"
    assert {d.name for d in app.deployments} == {"Generator", "Scorer", "BestOfN"}


def _cluster_spec_ok(spec: dict):
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_rayjob_manifest():
    job = load("cluster/kuberay/rayjob-pipeline.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("python jobs/pipeline.py ")
    assert (ROOT / job["spec"]["entrypoint"].split()[2]).exists()  # the config it names ships
    _cluster_spec_ok(job["spec"]["rayClusterSpec"])


def test_rayservice_manifest_carries_a_valid_serve_config():
    svc = load("cluster/kuberay/rayservice-bon.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    assert (ROOT / serve_cfg.applications[0].args["config"]).exists()
    _cluster_spec_ok(svc["spec"]["rayClusterConfig"])


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**load("cluster/runtime_env.yaml"))
    assert env["working_dir"] == "."


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _token_auth(container: dict) -> bool:
    env = {e["name"]: e for e in container.get("env", [])}
    return (env.get("RAY_AUTH_MODE", {}).get("value") == "token"
            and "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}))


def test_every_shipped_cluster_starts_ray_with_token_auth_and_a_shared_secret():
    # Ray 2.60 authenticates `ray start` clusters only with RAY_AUTH_MODE=token on every node.
    launcher = load("cluster/aws-gpu.yaml")
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    job = load("cluster/kuberay/rayjob-pipeline.yaml")
    assert all(map(_token_auth, _containers(job["spec"]["rayClusterSpec"])))
    assert all(map(_token_auth, job["spec"]["submitterPodTemplate"]["spec"]["containers"]))
    svc = load("cluster/kuberay/rayservice-bon.yaml")
    assert all(map(_token_auth, _containers(svc["spec"]["rayClusterConfig"])))


def test_the_network_policy_admits_ray_pods_and_the_serve_port_only():
    policy = load("cluster/kuberay/networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    opened = [p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert opened == [8000]  # the dashboard / job API port is never opened
