"""The command-line shell every job in jobs/ shares: CONFIG [key=value ...] → run → exit code."""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from typing import Callable

from rlhf_ray import cluster, config, config_load, storage, tracking
from rlhf_ray.config import PipelineConfig
from rlhf_ray.engines.actor_pool import EngineFailed
from rlhf_ray.core.schema import BadRecord


def main(name: str, doc: str, run: Callable[[PipelineConfig], object], argv: list[str]) -> int:
    """Load CONFIG [key=value ...] from ``argv``, run, and turn the outcome into an exit code; ``--help``
    prints ``doc``, ``--debug`` anywhere in ``argv`` prints the traceback of a user error too."""
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0 if argv else 2
    try:
        cfg = config_load.load(PipelineConfig, argv[0], argv[1:])
        if storage.is_remote(cfg.run_dir):
            # Stages work in a node-local mirror; each finished stage is pushed back to storage.
            local = storage.mirror(cfg.run_dir)
            print(f"[{name}] run folder {cfg.run_dir} (local mirror {local})")
            cfg = dataclasses.replace(cfg, run_dir=str(local))
        elif os.environ.get("RAY_ADDRESS"):  # joining a cluster: every node must see a local run folder
            cluster.check_run_dir(cfg.run_dir)
        with tracking.job(cfg, name):
            run(cfg)
        storage.push(cfg.run_dir)  # what a job writes outside its stages' manifests (results, report)
    except (config.ConfigError, BadRecord, FileNotFoundError, ValueError, EngineFailed) as e:
        if debug or (isinstance(e, OSError) and e.errno is not None and e.filename is None):
            traceback.print_exc()  # a system call failed on no named file: only the traceback says where
        # Bad input (the user's to fix) or engines that kept failing: one clear line, not a library's traceback.
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: the local cluster this process started goes down with it (Ray's exit hook); finished
        # stages keep their manifests, so the same command resumes after them.
        print(f"{name}: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    return 0
