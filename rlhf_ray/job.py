"""The command-line shell every job in jobs/ shares: CONFIG [key=value ...] → run → exit code."""
from __future__ import annotations

import sys
from typing import Callable

from rlhf_ray import config
from rlhf_ray.config import PipelineConfig
from rlhf_ray.schema import BadRecord


def main(name: str, doc: str, run: Callable[[PipelineConfig], object], argv: list[str]) -> int:
    if not argv:
        print(doc)
        return 2
    try:
        run(config.load(PipelineConfig, argv[0], argv[1:]))
    except (config.ConfigError, BadRecord, FileNotFoundError, ValueError) as e:
        # Bad input is the user's to fix: one clear line, not a traceback from inside a library.
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    return 0
