"""The whole path on one config: SFT → reward model → (RM evaluation) → rejection sampling → evaluation
→ report. Each stage is skipped when its manifest is up to date, so an interrupted run resumes."""
from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray import report, tracking
from rlhf_ray.config import PipelineConfig
from rlhf_ray.stages import policy_eval, rejection_sampling, reward_model, rm_eval, sft


def run(cfg: PipelineConfig) -> Path:
    from rlhf_ray import generate, score

    # The GPU requests of the later stages, before the first one trains for an hour.
    generate.check_gpus("generate.gpus_per_actor", cfg.generate.gpus_per_actor)
    score.check_gpus(cfg.score)
    if cfg.sft.data.train or cfg.task.name != "none":
        policy = str(sft.run(cfg))
    else:
        policy = cfg.policy.name  # an instruction-tuned model a user names: no SFT stage
    reward_model.run(cfg, policy)
    e = cfg.eval_rm
    if e.pairs or e.bon_file or e.orm:
        rm_eval.run(cfg)
    finals = rejection_sampling.run(cfg, policy) if cfg.rs.rounds else {}
    policy_eval.run(cfg, {"sft": policy, **finals})
    out = report.build(cfg.run_dir, cfg.rs.rounds)
    tracking.log_artifacts([out, *sorted(out.parent.glob("*.png"))])
    tracking.log_metrics(json.loads((Path(cfg.run_dir) / "eval" / "results.json").read_text()), "eval")
    print(f"[pipeline] report: {out}")
    return out
