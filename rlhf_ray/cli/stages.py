"""The stages a user runs, by command name: what each does and writes, the function that runs it, and the
config sections its ``--help`` lists. ``rlhf-ray <stage>`` and ``python jobs/<job>.py`` both run these."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    job: str                  # its name in messages, tracking runs and jobs/<job>.py
    target: str               # module:function, called with the loaded PipelineConfig
    sections: tuple[str, ...]  # the config sections it reads ("" is the top-level keys)
    doc: str

    def run(self, cfg):
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)(cfg)


STAGES: dict[str, Stage] = {
    "sft": Stage("sft", "rlhf_ray.stages.sft:run", ("", "policy", "task", "sft", "tracking"), """\
Instruction tuning (SFT) on Ray Train.

Writes RUN_DIR/sft/: model/ (HF folder: safetensors, tokenizer, chat template), metrics.jsonl,
quarantine.jsonl (bad rows, if any), manifest.json. A finished stage with the same config and inputs
is skipped; an interrupted one resumes from its last checkpoint."""),
    "train-rm": Stage("train_rm", "rlhf_ray.stages.reward_model:run",
                      ("", "policy", "task", "reward", "generate", "tracking"), """\
Reward-model training on Ray Train: Bradley-Terry, margin, K-wise, Plackett-Luce, ORM or PRM.

With reward.source=policy_samples it first samples the SFT policy on the RM's prompts and labels the
samples with reward.samples.checker (RUN_DIR/rm_data/: generate/, label/, train.jsonl, eval.jsonl).
Writes RUN_DIR/rm/: model/ (HF *ForSequenceClassification or *ForTokenClassification folder, plus
reward_stats.json with the eval set's reward mean and std), metrics.jsonl, quarantine.jsonl,
manifest.json with held-out accuracy (pairs), AUC (ORM) or step accuracy (PRM)."""),
    "eval-rm": Stage("eval_rm", "rlhf_ray.stages.rm_eval:run", ("", "eval_rm"), """\
Reward-model evaluation: pairwise accuracy per subset (RewardBench format), the best-of-N protocol on
the AlpacaEval candidates, and ORM AUC. Writes RUN_DIR/eval_rm/report.json and manifest.json."""),
    "generate": Stage("generate", "rlhf_ray.stages.generation:run", ("", "policy", "task", "generate"), """\
N completions per prompt with vLLM actor pools on Ray Data.

Reads generate.prompts (or the generated task's prompts), renders each in generation-prompt mode,
and writes RUN_DIR/generate/: candidates/ (Parquet: prompt_id, sample_idx, prompt, completion,
num_prompt_tokens, num_completion_tokens, finish_reason, plus the prompt rows' other columns such as
a gold answer), quarantine.jsonl (bad or too-long prompts) and manifest.json. A finished stage with the
same config, model and prompts is skipped."""),
    "score": Stage("score", "rlhf_ray.stages.scoring:run", ("", "score"), """\
Score candidates with a reward model, an LLM judge or a rule in a Ray Data actor pool.

Reads score.candidates (default RUN_DIR/generate/candidates) and writes RUN_DIR/score/scored/ (the
candidates + reward, score_tokens, score_padding) and manifest.json with scores/s and the padding
fraction. A finished stage with the same config, candidates and model is skipped."""),
    "rs": Stage("rejection_sampling", "rlhf_ray.stages.rejection_sampling:run",
                ("", "policy", "task", "generate", "score", "rs", "eval"), """\
Rejection sampling (RLHF book ch. 9): generate N per prompt → score → keep the best → SFT on them.

Each round r writes RUN_DIR/rs/round{r}/: generate/, score/, select/ (kept.jsonl, random.jsonl with
the matched random baseline, pairs.jsonl with best/worst preference pairs, manifest.json) and
top/sft/model (the new policy; random/sft/model for the baseline). With rs.rule_reward, the same
rounds scored by that rule instead of the RM go to RUN_DIR/rs_rule/round{r}/ (the upper reference).
Round r+1 starts from round r's policy. Every stage is skipped when its manifest matches, so a job
interrupted anywhere resumes there."""),
    "evaluate": Stage("evaluate", "rlhf_ray.stages.policy_eval:run", ("", "task", "generate", "score", "eval"), """\
Evaluate policies on held-out prompts: sampled answers scored by the proxy (the reward model) and,
where the prompts carry a gold answer, by the gold reward (eval.gold); one greedy answer per prompt
(eval.greedy); the SFT policy's best-of-N curve; paired bootstrap intervals for every comparison.

Writes RUN_DIR/eval/<policy>/ (generate/, score/), RUN_DIR/eval/results.json and
RUN_DIR/eval/per_prompt.json (each policy's per-prompt values, the bootstrap's input)."""),
    "pipeline": Stage("pipeline", "rlhf_ray.stages.pipeline:run",
                      ("", "policy", "task", "sft", "reward", "eval_rm", "generate", "score", "rs", "eval",
                       "tracking"), """\
The whole path on one config: SFT → reward model → (RM evaluation) → rejection sampling →
evaluation → report. Each stage is skipped when its manifest is up to date, so an interrupted run
resumes where it stopped.

SFT runs on sft.data.train or the generated task (without either, policy.name is used as the SFT
policy). The reward model trains on the SFT policy's own samples labelled by a checker
(reward.source=policy_samples), or on reward.data.train / the generated task's synthetic pairs; the
RM evaluation runs when eval_rm names data (pairs, bon_file or orm). Rejection sampling runs with the
RM, its matched random baseline and, with rs.rule_reward, the rule reward as the upper reference.
Writes RUN_DIR/report.html."""),
    "serve": Stage("serve_bon", "rlhf_ray.serve.app:run", ("", "serve"), """\
Serve best-of-N: an OpenAI-compatible endpoint on Ray Serve (generator, scorer, ingress).

Serves serve.policy (default: the run folder's rejection-sampling policy, else its SFT policy) with
serve.reward_model (default: RUN_DIR/rm/model) on http://serve.host:serve.port (127.0.0.1 unless told
otherwise). Set the variable named by serve.api_key_env to require a bearer key. Blocks until stopped.
The same app from a Serve config file: serve run rlhf_ray/configs/serve-bon.yaml"""),
}
