"""Selection over a reward matrix R (M prompts × N completions), pure numpy (RLHF book ch. 9).

Missing completions are NaN and never selected. Ties go to the lowest index, so every choice is
deterministic; random baselines are seeded.
"""
from __future__ import annotations

import numpy as np


def _matrix(rewards) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be a 2-D matrix (prompts × completions), got shape {r.shape}")
    return r


def top_per_prompt(rewards) -> list[tuple[int, int]]:
    """(prompt, completion) of the best completion of each prompt that has any."""
    r = _matrix(rewards)
    out = []
    for i, row in enumerate(r):
        if np.isnan(row).all():
            continue
        out.append((i, int(np.nanargmax(row))))
    return out


def top_k_overall(rewards, k: int) -> list[tuple[int, int]]:
    """The k highest rewards of the flattened matrix, mapped back to (prompt, completion), best first."""
    r = _matrix(rewards)
    flat = r.ravel()
    valid = np.flatnonzero(~np.isnan(flat))
    # Stable sort on -reward keeps the lowest flat index first among equal rewards.
    order = valid[np.argsort(-flat[valid], kind="stable")][:k]
    n = r.shape[1]
    return [(int(j // n), int(j % n)) for j in order]


def random_per_prompt(rewards, seed: int) -> list[tuple[int, int]]:
    """Matched baseline for ``top_per_prompt``: one random valid completion of each non-empty prompt."""
    r = _matrix(rewards)
    rng = np.random.default_rng(seed)
    out = []
    for i, row in enumerate(r):
        valid = np.flatnonzero(~np.isnan(row))
        if len(valid):
            out.append((i, int(rng.choice(valid))))
    return out


def random_k_overall(rewards, k: int, seed: int) -> list[tuple[int, int]]:
    """Matched baseline for ``top_k_overall``: k random valid cells."""
    r = _matrix(rewards)
    valid = np.flatnonzero(~np.isnan(r.ravel()))
    picks = np.random.default_rng(seed).choice(valid, size=min(k, len(valid)), replace=False)
    n = r.shape[1]
    return [(int(j // n), int(j % n)) for j in picks]


def best_worst_pairs(rewards) -> list[tuple[int, int, int]]:
    """(prompt, best, worst) for each prompt with two distinct rewards: a preference set for DPO."""
    r = _matrix(rewards)
    out = []
    for i, row in enumerate(r):
        if np.sum(~np.isnan(row)) < 2:
            continue
        best, worst = int(np.nanargmax(row)), int(np.nanargmin(row))
        if row[best] > row[worst]:
            out.append((i, best, worst))
    return out


def correct_incorrect_pairs(labels, max_pairs: int, seed: int) -> list[tuple[int, int, int]]:
    """(prompt, correct, incorrect) from a 0/1 label matrix (NaN: missing): for each prompt with both
    kinds, up to ``max_pairs`` distinct pairs drawn at random (seeded) from all its combinations."""
    r = _matrix(labels)
    rng = np.random.default_rng(seed)
    out = []
    for i, row in enumerate(r):
        good, bad = np.flatnonzero(row == 1), np.flatnonzero(row == 0)
        combos = [(int(g), int(b)) for g in good for b in bad]
        for k in sorted(rng.permutation(len(combos))[:max_pairs]):
            out.append((i, *combos[k]))
    return out


def best_of_n(rewards) -> int:
    """Index of the best of one prompt's N candidates (the Serve endpoint uses this too)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or np.isnan(r).all():
        raise ValueError("best_of_n needs a 1-D list with at least one scored candidate")
    return int(np.nanargmax(r))


def ranked(rewards) -> list[int]:
    """One prompt's candidates best first: the first is ``best_of_n``'s pick, ties keep their order and
    unscored (NaN) candidates come last (the endpoint's top ``n`` choices)."""
    best_of_n(rewards)  # the same contract
    r = np.asarray(rewards, dtype=np.float64)
    return sorted(range(len(r)), key=lambda i: (bool(np.isnan(r[i])), -r[i] if not np.isnan(r[i]) else 0.0, i))


def dedup_mask(completions: list[list[str]]) -> np.ndarray:
    """True for the first occurrence of each completion text within its prompt; later copies False.

    Apply as ``np.where(mask, R, nan)`` so that a duplicated answer is not selected twice.
    """
    m = max((len(c) for c in completions), default=0)
    mask = np.zeros((len(completions), m), dtype=bool)
    for i, texts in enumerate(completions):
        seen = set()
        for j, text in enumerate(texts):
            key = text.strip()
            mask[i, j] = key not in seen
            seen.add(key)
    return mask


def choose(rewards, strategy: str, top_k: int = 0, seed: int = 0, texts: list[list[str]] | None = None,
           truncated=None, min_reward: float | None = None) -> tuple[np.ndarray, list, list]:
    """Rejection sampling's pick and its matched random baseline: (usable R, kept, random).

    Cells never kept are NaN in the usable R: completions cut at max_tokens (``truncated``, a boolean
    matrix), rewards below ``min_reward`` and, for ``top_k_overall`` with ``texts``, later copies of a
    prompt's completion. ``top_per_prompt`` keeps one per prompt, so it never repeats a completion, and
    its random baseline must draw as the policy samples, repeats included (without them it drew less
    often the modal, more often right, answer).
    """
    r = _matrix(rewards)
    usable = r.copy()
    if texts is not None and strategy == "top_k_overall":
        usable[~dedup_mask(texts)] = np.nan
    if truncated is not None:
        usable[np.asarray(truncated, dtype=bool)] = np.nan
    if min_reward is not None:
        usable[r < min_reward] = np.nan
    if strategy == "top_per_prompt":
        return usable, top_per_prompt(usable), random_per_prompt(usable, seed)
    if strategy == "top_k_overall":
        k = top_k or r.shape[0]
        return usable, top_k_overall(usable, k), random_k_overall(usable, k, seed)
    raise ValueError(f"unknown selection strategy {strategy!r} (top_per_prompt, top_k_overall)")


def reward_matrix(prompt_ids, sample_idx, rewards, n: int | None = None) -> tuple[list, np.ndarray]:
    """Scored rows (any order) → (sorted prompt ids, R) with R[i, j] the reward of sample j of prompt i.

    Missing samples stay NaN; a (prompt, sample) given twice is an error, since it would hide a lost row.
    """
    ids = sorted(set(prompt_ids))
    row = {p: i for i, p in enumerate(ids)}
    sample_idx = np.asarray(sample_idx, dtype=int)
    r = np.full((len(ids), n or (int(sample_idx.max()) + 1 if len(sample_idx) else 0)), np.nan)
    for p, j, v in zip(prompt_ids, sample_idx, rewards):
        if not np.isnan(r[row[p], j]):
            raise ValueError(f"prompt {p!r} sample {j} appears twice")
        r[row[p], j] = v
    return ids, r
