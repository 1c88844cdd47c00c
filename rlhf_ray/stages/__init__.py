"""Pipeline stages: each takes a config section and plain values, writes one artifact folder of the run
with its ``manifest.json``, and is skipped when that manifest matches (``manifest.stage``).

``run(cfg)`` in each module is the stage as its job runs it: defaults taken from the whole config.
"""
