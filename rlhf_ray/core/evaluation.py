"""Reward-model evaluation protocols, pure: RewardBench-style accuracy and the best-of-N protocol."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from rlhf_ray.core import selection, stats

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


def best_of_n_per_prompt(proxy, gold, n: int) -> dict[str, np.ndarray]:
    """Best-of-n among each prompt's first n samples, per prompt: the reward model's pick's ``proxy``
    and, with a gold matrix, its ``gold``, a uniform pick's expected gold (``random``) and the best gold
    among the n (``oracle``)."""
    proxy = np.asarray(proxy, dtype=float)
    if n > proxy.shape[1]:
        raise ValueError(f"N={n} exceeds the {proxy.shape[1]} candidates per prompt")
    rows = np.arange(len(proxy))
    picks = np.array([selection.best_of_n(r[:n]) for r in proxy], dtype=int)
    out = {"proxy": proxy[rows, picks]}
    if gold is not None:
        g = np.asarray(gold, dtype=float)
        out.update(gold=g[rows, picks], random=np.nanmean(g[:, :n], axis=1), oracle=np.nanmax(g[:, :n], axis=1))
    return out


def best_of_n_protocol(rewards, gold, ns) -> dict:
    """For each N: mean gold score of the RM's pick among each prompt's first N candidates, against a
    random pick (the expected gold of a uniform pick) and the oracle (the best gold among the N)."""
    out = {}
    for n in ns:
        v = best_of_n_per_prompt(rewards, gold, n)
        out[n] = {"rm_pick": float(v["gold"].mean()), "random": float(v["random"].mean()),
                  "oracle": float(v["oracle"].mean())}
    return out


def best_of_n_curve(proxy, gold, ns, n_boot: int = stats.N_BOOT, seed: int = 0) -> dict:
    """The best-of-N curve with intervals: for each N the pick's mean proxy and gold, the random and
    oracle gold, the gain over best-of-1 (paired bootstrap interval) and the fraction of the random →
    oracle gap the pick closes (with its interval)."""
    first = best_of_n_per_prompt(proxy, gold, 1)
    out = {}
    for n in ns:
        v = best_of_n_per_prompt(proxy, gold, n)
        point = {"proxy": float(v["proxy"].mean())}
        if gold is not None:
            point.update(gold=float(v["gold"].mean()), gold_random=float(v["random"].mean()),
                         gold_oracle=float(v["oracle"].mean()),
                         gain_over_1=stats.paired_difference(v["gold"], first["gold"], n_boot, seed),
                         gap_closed=stats.gap_closed(v["gold"], v["random"], v["oracle"], n_boot, seed))
        out[str(n)] = point
    return out


def verdict(diff: dict, better: str, worse: str, metric: str = "gold") -> str:
    """One sentence on a paired difference ``better − worse`` and its interval."""
    est, lo, hi, m = diff["estimate"], diff["lo"], diff["hi"], diff["prompts"]
    interval = f"{est:+.3f} {metric} (95% CI {lo:+.3f} to {hi:+.3f}, {m} held-out prompts)"
    if lo > 0:
        return f"{better} beat {worse}: {interval}."
    if hi < 0:
        return f"{better} was worse than {worse}: {interval}."
    return f"{better} did not measurably differ from {worse}: {interval}; the interval includes 0."


def auc(scores_: list[float], labels: list[int]) -> float:
    """Probability that a random positive outscores a random negative (ties half)."""
    pos = [s for s, y in zip(scores_, labels) if y]
    neg = [s for s, y in zip(scores_, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))
