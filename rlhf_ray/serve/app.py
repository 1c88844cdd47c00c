"""Best-of-N inference on Ray Serve: an OpenAI-compatible ``/v1/chat/completions`` that samples N
candidates in one engine request (shared prefix), scores them in one batch, and answers with the best,
picked by the same ``selection.best_of_n`` the offline pipeline uses.

Three deployments scale independently: ``Generator`` (a vLLM engine), ``Scorer`` (a reward model)
and the ``BestOfN`` ingress (FastAPI). ``build(cfg)`` makes the application; ``app_builder`` is the
``import_path`` target for ``serve run`` / ``serve deploy`` config files.
"""
from __future__ import annotations

import dataclasses
import os
import time

from rlhf_ray import cluster, storage
from rlhf_ray.config import PipelineConfig
from rlhf_ray.engines.actor_pool import check_gpus
from rlhf_ray.engines.vllm_engine import check_engine_kwargs, memory_share
from rlhf_ray.run_layout import RunDir
from rlhf_ray.serve.api import key_digest
from rlhf_ray.serve.deployments import Generator, Scorer
from rlhf_ray.serve.ingress import BestOfN


def resolve_models(cfg: PipelineConfig) -> tuple[str, str]:
    """The policy and reward model to serve: configured, else the run folder's latest (local or in
    storage), named so that replicas on any node can load them."""
    s, layout = cfg.serve, RunDir(cfg.run_dir)
    rs = layout.rs_round(cfg.rs.rounds).top_model
    policy = s.policy or (rs if storage.exists(rs) else layout.sft_model)
    return storage.publish(policy), storage.publish(s.reward_model or layout.rm_model)


def _options(d) -> dict:
    scaling = {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
               "target_ongoing_requests": d.target_ongoing_requests}
    return {"autoscaling_config": scaling, "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus,
                                                                 **({"resources": dict(d.resources)} if d.resources else {})}}


def unschedulable(s, resources: dict) -> str | None:
    """Why the app's smallest replica set (each deployment's min_replicas) cannot all be placed on a
    cluster with these total ``resources`` (``ray.cluster_resources()``), or None. Serve itself would
    wait forever, repeating that a replica "has taken more than 30s to be scheduled"."""
    parts = {"Generator": s.generator, "Scorer": s.scorer, "BestOfN": s.ingress}
    for resource, key, unit in (("CPU", "num_cpus", "CPU"), ("GPU", "num_gpus", "GPU")):
        need = {name: d.min_replicas * getattr(d, key) for name, d in parts.items()}
        have = resources.get(resource, 0.0)
        if sum(need.values()) > have + 1e-9:
            names = {"Generator": "generator", "Scorer": "scorer", "BestOfN": "ingress"}
            detail = ", ".join(f"{n} {v:g}" for n, v in need.items() if v)
            fix = " or ".join(f"serve.{names[n]}.{key}" for n, v in need.items() if v and n != "BestOfN")
            example = " (serve.scorer.num_cpus=0.5 fits 2 cores)" if resource == "CPU" else ""
            return (f"the endpoint's deployments need {sum(need.values()):g} {unit} ({detail}) and this Ray "
                    f"cluster has {have:g}: lower {fix}{example}, or add nodes")
    return None


def build(cfg: PipelineConfig, key: str | None = None):
    """The Serve application for a config: Generator and Scorer bound into the BestOfN ingress, which keeps
    the SHA-256 of ``key`` (default: the variable serve.api_key_env names)."""
    s = cfg.serve
    check_gpus("serve.generator.num_gpus", s.generator.num_gpus)
    check_engine_kwargs("serve.engine_kwargs", s.engine_kwargs)
    policy, rm = resolve_models(cfg)
    key = key or os.environ.get(s.api_key_env)
    # Every request the ingress lets through joins the engine's running batch (vLLM's scheduler queues
    # what does not fit): the generator must not be a narrower queue than the ingress (Serve's default is 5).
    generator = Generator.options(max_ongoing_requests=256, **_options(s.generator)).bind(
        policy, s.max_model_len, cfg.generate.seed, cfg.generate.threads, s.tensor_parallel,  # seed, threads: as offline
        memory_share(s.gpu_memory_utilization, s.generator.num_gpus), dict(s.engine_kwargs))
    scorer = Scorer.options(**_options(s.scorer)).bind(rm, s.template, s.score_max_len, cfg.score.dtype)
    # Serve lets every request through to the app, which admits, queues or refuses it (see ingress.Frontend).
    return BestOfN.options(max_ongoing_requests=1000, max_queued_requests=-1, **_options(s.ingress)).bind(
        generator, scorer, dataclasses.replace(s, policy=policy), key_digest(key) if key else None)


def app_builder(args: dict):
    """``import_path: rlhf_ray.serve.app:app_builder`` with ``args: {config: PATH, overrides: [key=value, ...]}``."""
    from rlhf_ray import config_load

    return build(config_load.load(PipelineConfig, args.get("config"), args.get("overrides", [])))


def run(cfg: PipelineConfig, blocking: bool = True):
    """The endpoint on this job's Ray cluster (refused in one line when the cluster cannot place it and
    cannot grow); blocks until stopped unless ``blocking`` is false."""
    import ray
    from ray import serve

    # The key leaves this process's environment before Ray starts: a local cluster's processes inherit the
    # environment, and the replicas need only the digest the ingress is given.
    key = os.environ.pop(cfg.serve.api_key_env, None)
    cluster.connect()
    problem = unschedulable(cfg.serve, ray.cluster_resources())
    if problem and not os.environ.get("RAY_ADDRESS"):  # a cluster this job started never grows
        raise ValueError(problem)
    if problem:  # a cluster's autoscaler may still add the nodes
        print(f"[serve] warning: {problem}", flush=True)
    serve.start(proxy_location=cfg.serve.proxy_location, http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    handle = serve.run(build(cfg, key), name="best-of-n", route_prefix="/", blocking=False)
    print(f"[serve] best-of-N on http://{cfg.serve.host}:{cfg.serve.port}/v1/chat/completions", flush=True)
    while blocking:  # serve.run(blocking=True) also works, but this keeps the job's log quiet
        time.sleep(3600)
    return handle
