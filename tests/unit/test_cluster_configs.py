"""Shipped cluster and Serve configs validate against Ray's own schemas (offline, from the ray wheel);
KubeRay manifests use only KubeRay's documented, non-deprecated fields (its CRD schema is not available
offline) and their pod templates validate against Kubernetes' own schema (kubernetes-validate, strict)."""
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


def test_the_launcher_runs_ray_in_the_python_the_package_requires():
    """The AMI's Python is 3.10; the package requires 3.11: every node runs inside the Ray image the
    project's Dockerfile builds on, and installs the project there."""
    import re
    import tomllib

    cfg = load("cluster/aws-gpu.yaml")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=3\.(\d+)", requires).group(1)
    image = cfg["docker"]["image"]
    assert f"-py3{minor}-" in image and "ray:2.60.0" in image
    assert f"FROM {image}" in (ROOT / "cluster" / "Dockerfile").read_text()
    assert any("--shm-size" in o for o in cfg["docker"]["run_options"])
    assert all(c.startswith("python -m pip") for c in cfg["setup_commands"])  # the container's python
    assert not cfg.get("initialization_commands")  # nothing installed into the host's Python


@pytest.mark.parametrize("path", ["rlhf_ray/configs/serve-bon.yaml"])
def test_serve_config_validates_against_serves_schema(path):
    cfg = ServeDeploySchema.model_validate(load(path))
    assert cfg.http_options.host == "127.0.0.1"
    app = cfg.applications[0]
    assert app.import_path == "rlhf_ray.serve.app:app_builder"
    assert {d.name for d in app.deployments} == {"Generator", "Scorer", "BestOfN"}


# KubeRay's ray.io/v1 fields, from ray-operator/apis/ray/v1/*_types.go, plus authOptions (v1.5.1, docs.ray.io
# "KubeRay CRD API reference"): a field outside these is a typo or another version's.
KUBERAY_FIELDS = {
    "RayJobSpec": {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                   "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint",
                   "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                   "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"},
    "RayServiceSpec": {"serveConfigV2", "rayClusterConfig", "serveService"},
    "RayClusterSpec": {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                       "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions"},
    "HeadGroupSpec": {"template", "headService", "enableIngress", "rayStartParams", "serviceType"},
    "WorkerGroupSpec": {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                        "rayStartParams", "template", "scaleStrategy", "numOfHosts"},
    "AutoscalerOptions": {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                          "upscalingMode", "env", "envFrom", "volumeMounts"},
    "AuthOptions": {"mode", "secretName", "enableK8sTokenAuth"},
}
# Marked deprecated in rayservice_types.go ("This field is not used anymore", kuberay#1685).
DEPRECATED = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}


def _fields_ok(kind: str, spec: dict):
    unknown = set(spec) - KUBERAY_FIELDS[kind]
    assert not unknown, (kind, unknown)


def _cluster_spec_ok(spec: dict):
    import kubernetes_validate

    _fields_ok("RayClusterSpec", spec)
    _fields_ok("HeadGroupSpec", spec["headGroupSpec"])
    _fields_ok("AutoscalerOptions", spec.get("autoscalerOptions", {}))
    # Token auth as KubeRay manages it: the operator makes the Secret and sets the variables everywhere,
    # and can then talk to the cluster (deploy the Serve app, follow the job); set by hand, it cannot.
    _fields_ok("AuthOptions", spec["authOptions"])
    assert spec["authOptions"]["mode"] == "token" and spec["rayVersion"] >= "2.52"
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        _fields_ok("WorkerGroupSpec", group)
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    for n, group in enumerate([head, *spec["workerGroupSpecs"]]):
        template = group["template"]
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"g{n}"},
                                      "template": template}, "1.33", strict=True)
        shm = [v["name"] for v in template["spec"]["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        for c in template["spec"]["containers"]:
            assert any(m["mountPath"] == "/dev/shm" and m["name"] in shm for m in c["volumeMounts"]), c["name"]
            env = {e["name"] for e in c.get("env", [])}
            assert not env & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, c["name"]


def _storage_only(entry_config: str, overrides: list[str]):
    """The job's config as the pods load it: every input file and the run folder in object storage (or
    shipped in the image), since no volume holds them."""
    import dataclasses

    from rlhf_ray import config_load
    from rlhf_ray.config import PipelineConfig

    cfg = config_load.load(PipelineConfig, ROOT / entry_config, overrides, base=ROOT)
    assert cfg.run_dir.startswith("s3://")

    def files(c, prefix=""):
        for f in dataclasses.fields(c):
            value = getattr(c, f.name)
            if dataclasses.is_dataclass(value):
                yield from files(value, f"{prefix}{f.name}.")
            elif f.metadata.get("path") == "file" and f.name != "run_dir" and value:
                yield from ((f"{prefix}{f.name}", v) for v in (value if isinstance(value, tuple) else [value]))

    read = dict(files(cfg))
    assert read, "the config reads no files?"
    for key, path in read.items():
        assert path.startswith("s3://") or Path(path).is_relative_to(ROOT) and Path(path).exists(), (key, path)
    return read


def test_kubernetes_validate_rejects_a_misspelt_pod_field():
    import kubernetes_validate

    job = load("cluster/kuberay/rayjob-pipeline.yaml")
    template = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["volumeMount"] = []  # volumeMounts, misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": template}, "1.33", strict=True)


def test_rayjob_manifest():
    import shlex

    job = load("cluster/kuberay/rayjob-pipeline.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    _fields_ok("RayJobSpec", job["spec"])
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"] and (ROOT / argv[2]).exists()  # the config it names ships
    read = _storage_only(argv[2], argv[3:])
    assert {"generate.prompts", "reward.samples.prompts", "eval.prompts"} <= set(read)
    _cluster_spec_ok(job["spec"]["rayClusterSpec"])


def test_rayservice_manifest_carries_a_valid_serve_config():
    svc = load("cluster/kuberay/rayservice-bon.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    _fields_ok("RayServiceSpec", svc["spec"])
    assert not DEPRECATED & set(svc["spec"])
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    args = serve_cfg.applications[0].args
    assert (ROOT / args["config"]).exists()
    from rlhf_ray import config_load
    from rlhf_ray.config import PipelineConfig

    assert config_load.load(PipelineConfig, ROOT / args["config"], args["overrides"]).run_dir.startswith("s3://")
    _cluster_spec_ok(svc["spec"]["rayClusterConfig"])


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**load("cluster/runtime_env.yaml"))
    assert env["working_dir"] == "."


def test_every_shipped_cluster_starts_ray_with_token_auth_and_a_shared_secret():
    # Ray 2.60 authenticates `ray start` clusters only with RAY_AUTH_MODE=token on every node; KubeRay's
    # clusters declare authOptions (checked in _cluster_spec_ok).
    launcher = load("cluster/aws-gpu.yaml")
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    for path, key in (("cluster/kuberay/rayjob-pipeline.yaml", "rayClusterSpec"),
                      ("cluster/kuberay/rayservice-bon.yaml", "rayClusterConfig")):
        assert load(path)["spec"][key]["authOptions"] == {"mode": "token"}


def test_the_network_policy_admits_ray_pods_and_the_serve_port_only():
    policy = load("cluster/kuberay/networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    opened = [p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert opened == [8000]  # the dashboard / job API port is never opened
