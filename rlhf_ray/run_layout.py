"""Every artifact of a run folder, by name: stages write where these say and return what they wrote; the
pipeline, the report, evaluation and serving find earlier stages' artifacts here, never by spelling a path.

    RUN_DIR/
      data/                 a generated task's files (task.name)
      sft/model/            SFT policy           (a stage folder: manifest.json, metrics.jsonl, quarantine)
      rm_data/              labelled policy samples (reward.source=policy_samples): generate/, score/, *.jsonl
      rm/model/             reward model
      eval_rm/report.json   held-out reward-model evaluation
      generate/candidates/  score/scored/         the one-off generation and scoring jobs
      rs/round{r}/          generate/candidates, score/scored, select/kept.jsonl, top/sft/model, random/sft/model
      rs_rule/round{r}/     the same, picked by the rule reward
      eval/results.json     eval/per_prompt.json, eval/<policy>/ (its samples)
      report.html
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_ray import storage

Where = Path | str  # a local path, or a storage URI under a remote run folder

# What a stage folder holds, whichever stage wrote it.
MODEL = "model"                 # a trained model (HF folder)
ADAPTER = "adapter"             # a LoRA-trained model's adapter (peft folder), beside the merged model
CANDIDATES = "candidates"       # generation's Parquet rows
SCORED = "scored"               # scoring's Parquet rows
KEPT = "kept.jsonl"             # selection's conversations
METRICS = "metrics.jsonl"       # a training stage's curves


def _join(root: Where, *parts: str) -> Where:
    """A path under a local folder, or under a storage URI (``s3://...``, which ``Path`` would mangle):
    jobs work in a local mirror, the Serve app reads a remote run folder directly."""
    if storage.is_remote(str(root)):
        return "/".join([str(root).rstrip("/"), *parts])
    return Path(root).joinpath(*parts)


@dataclass(frozen=True)
class _Folder:
    """A folder of the run whose stages write ``generate/`` and ``score/`` (the run itself, a round)."""
    root: Where

    def _at(self, *parts: str) -> Where:
        return _join(self.root, *parts)

    @property
    def generate(self) -> Where:
        return self._at("generate")

    @property
    def score(self) -> Where:
        return self._at("score")


class Round(_Folder):
    """One rejection-sampling round's folder."""

    @property
    def select(self) -> Where:
        return self._at("select")

    @property
    def top(self) -> Where:
        return self._at("top")

    @property
    def random(self) -> Where:
        return self._at("random")

    @property
    def scored(self) -> Where:
        return self._at("score", SCORED)

    @property
    def kept(self) -> Where:
        return self._at("select", KEPT)

    @property
    def top_model(self) -> Where:
        return finetuned_model(self.top)

    @property
    def random_model(self) -> Where:
        return finetuned_model(self.random)


def finetuned_model(out: Where) -> Where:
    """Where a fine-tune on selected conversations into ``out`` puts its policy (``stages.sft.finetune``)."""
    return _join(out, "sft", MODEL)


class RunDir(_Folder):
    """The run folder (a local folder, or a storage URI)."""

    @property
    def data(self) -> Where:
        return self._at("data")

    @property
    def sft(self) -> Where:
        return self._at("sft")

    @property
    def sft_model(self) -> Where:
        return self._at("sft", MODEL)

    @property
    def rm_data(self) -> Where:
        return self._at("rm_data")

    @property
    def rm(self) -> Where:
        return self._at("rm")

    @property
    def rm_model(self) -> Where:
        return self._at("rm", MODEL)

    @property
    def eval_rm(self) -> Where:
        return self._at("eval_rm")

    @property
    def candidates(self) -> Where:
        return self._at("generate", CANDIDATES)

    def rs_round(self, r: int) -> Round:
        return Round(self._at("rs", f"round{r}"))

    def rule_round(self, r: int) -> Round:
        return Round(self._at("rs_rule", f"round{r}"))

    def final_policies(self, rounds: int) -> dict[str, Where]:
        """The policies evaluation compares, by name: SFT, then the last round's RS, random and rule picks."""
        rs, rule = self.rs_round(rounds), self.rule_round(rounds)
        return {"sft": self.sft_model, "rs": rs.top_model, "random": rs.random_model, "rs_rule": rule.top_model}

    @property
    def eval(self) -> Where:
        return self._at("eval")

    def eval_samples(self, policy: str) -> Where:
        return self._at("eval", policy)

    @property
    def results(self) -> Where:
        return self._at("eval", "results.json")

    @property
    def per_prompt(self) -> Where:
        return self._at("eval", "per_prompt.json")

    @property
    def report(self) -> Where:
        return self._at("report.html")
