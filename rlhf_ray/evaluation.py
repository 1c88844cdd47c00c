"""Reward-model evaluation protocols, pure: RewardBench-style accuracy and the best-of-N protocol."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from rlhf_ray import selection

# RewardBench's subsets by section (its paper, Table 1); other subsets roll up under "other".
SECTIONS = {
    "chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "chat_hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
_SECTION_OF = {s: sec for sec, subsets in SECTIONS.items() for s in subsets}


def pairwise_by_subset(subsets: list[str], r_chosen, r_rejected) -> dict:
    """Accuracy per subset (ties count half) and per section (mean of its subsets' accuracies)."""
    wins = defaultdict(list)
    for s, c, r in zip(subsets, r_chosen, r_rejected):
        wins[s].append(1.0 if c > r else 0.5 if c == r else 0.0)
    per_subset = {s: float(np.mean(v)) for s, v in sorted(wins.items())}
    sections = defaultdict(list)
    for s, acc in per_subset.items():
        sections[_SECTION_OF.get(s, "other")].append(acc)
    return {"subsets": per_subset, "counts": {s: len(v) for s, v in sorted(wins.items())},
            "sections": {sec: float(np.mean(v)) for sec, v in sorted(sections.items())},
            "overall": float(np.mean([w for v in wins.values() for w in v]))}


def best_of_n_protocol(rewards, gold, ns) -> dict:
    """For each N: mean gold score of the RM's pick among each prompt's first N candidates, against a
    random pick (the expected gold of a uniform pick) and the oracle (the best gold among the N)."""
    rewards, gold = np.asarray(rewards, dtype=float), np.asarray(gold, dtype=float)
    out = {}
    for n in ns:
        if n > gold.shape[1]:
            raise ValueError(f"N={n} exceeds the {gold.shape[1]} judged candidates")
        picks = [selection.best_of_n(r[:n]) for r in rewards]
        out[n] = {"rm_pick": float(np.mean([g[p] for g, p in zip(gold, picks)])),
                  "random": float(gold[:, :n].mean()), "oracle": float(gold[:, :n].max(axis=1).mean())}
    return out
