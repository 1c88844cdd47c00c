"""The whole path on one config: SFT → reward model → (RM evaluation) → rejection sampling → evaluation
→ report. Each stage is skipped when its manifest is up to date, so an interrupted run resumes; each
returns what it made and the next is given it."""
from __future__ import annotations

from pathlib import Path

from rlhf_ray import report, tracking
from rlhf_ray.config import PipelineConfig
from rlhf_ray.stages import policy_eval, rejection_sampling, reward_model, rm_eval, sft


def run(cfg: PipelineConfig) -> Path:
    from rlhf_ray.engines import actor_pool, scorers, vllm_engine

    # The GPU requests of the later stages, before the first one trains for an hour.
    actor_pool.check_gpus("generate.gpus_per_actor", cfg.generate.gpus_per_actor)
    vllm_engine.check_engine_kwargs("generate.engine_kwargs", cfg.generate.engine_kwargs)
    scorers.check_score_gpus(cfg.score)
    if cfg.sft.data.train or cfg.task.name != "none":
        policy = str(sft.run(cfg))
    else:
        policy = cfg.policy.name  # an instruction-tuned model a user names: no SFT stage
    rm = str(reward_model.run(cfg, policy))
    e = cfg.eval_rm
    if e.pairs or e.bon_file or e.orm:
        rm_eval.run(cfg, rm)
    finals = rejection_sampling.run(cfg, policy, rm) if cfg.rs.rounds else {}
    results = policy_eval.run(cfg, {"sft": policy, **finals}, rm)
    out = report.build(cfg.run_dir, cfg.rs.rounds)
    tracking.log_artifacts([out, *sorted(out.parent.glob("*.png"))])
    tracking.log_metrics(results, "eval")
    print(f"[pipeline] report: {out}")
    return out
