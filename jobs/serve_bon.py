"""Serve best-of-N: an OpenAI-compatible endpoint on Ray Serve (generator, scorer, ingress).

    python jobs/serve_bon.py CONFIG [key=value ...]
    serve run jobs/configs/serve-bon.yaml        # the same app from a Serve config file

Serves serve.policy (default: the run folder's rejection-sampling policy, else its SFT policy) with
serve.reward_model (default: RUN_DIR/rm/model) on http://serve.host:serve.port (127.0.0.1 unless told
otherwise). Set the variable named by serve.api_key_env to require a bearer key. Blocks until stopped.
"""
from __future__ import annotations

import os
import sys

from rlhf_ray import cluster

from rlhf_ray.cli import job
from rlhf_ray.config import PipelineConfig


def run(cfg: PipelineConfig, blocking: bool = True):
    import ray
    from ray import serve

    from rlhf_ray.serve.app import build, unschedulable

    cluster.connect()
    problem = unschedulable(cfg.serve, ray.cluster_resources())
    if problem and not os.environ.get("RAY_ADDRESS"):  # a cluster this job started never grows
        raise ValueError(problem)
    if problem:  # a cluster's autoscaler may still add the nodes
        print(f"[serve] warning: {problem}", flush=True)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    handle = serve.run(build(cfg), name="best-of-n", route_prefix="/", blocking=False)
    print(f"[serve] best-of-N on http://{cfg.serve.host}:{cfg.serve.port}/v1/chat/completions", flush=True)
    if blocking:
        import time

        while True:  # serve.run(blocking=True) also works, but this keeps the job's log quiet
            time.sleep(3600)
    return handle


if __name__ == "__main__":
    sys.exit(job.main("serve_bon", __doc__, run, sys.argv[1:]))
