"""Confidence intervals for evaluation results, pure numpy: the paired percentile bootstrap over prompts.

Every comparison in a run report is paired: two policies (or two picks) answer the same held-out
prompts, so the unit resampled is the prompt, and the prompt-to-prompt difficulty cancels out of the
difference. Written here because the interval is a few lines over numpy (scipy's ``bootstrap`` would
be a new dependency for it).
"""
from __future__ import annotations

import numpy as np

N_BOOT = 10_000


def _resampled_means(columns: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Each column's mean over ``n_boot`` resamples of its rows (the same rows for every column)."""
    m = len(columns[0])
    if m == 0 or any(len(c) != m for c in columns):
        raise ValueError(f"paired values need one entry per prompt, got lengths {[len(c) for c in columns]}")
    idx = np.random.default_rng(seed).integers(0, m, size=(n_boot, m))
    return [c[idx].mean(axis=1) for c in columns]


def _interval(estimate: float, draws: np.ndarray, level: float, n: int) -> dict:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return {"estimate": float(estimate), "lo": float(lo), "hi": float(hi), "level": level, "prompts": n}


def paired_difference(a, b, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """mean(a − b) over prompts with its percentile bootstrap interval; ``a[i]``, ``b[i]`` are two
    per-prompt values for prompt i (e.g. the mean gold reward of two policies' samples)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one entry per prompt, got lengths {len(a)} and {len(b)}")
    d = a - b
    (draws,) = _resampled_means([d], n_boot, seed)
    return _interval(d.mean(), draws, level, len(d))


def gap_closed(pick, random, oracle, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """The fraction of the random → oracle gap a selector closes, (pick − random) / (oracle − random)
    of the per-prompt means, with its bootstrap interval (resamples with no gap are left out)."""
    p, r, o = (np.asarray(x, dtype=float) for x in (pick, random, oracle))
    mp, mr, mo = _resampled_means([p, r, o], n_boot, seed)
    gap = mo - mr
    ok = gap > 0
    if not ok.any() or o.mean() <= r.mean():
        return {"estimate": None, "lo": None, "hi": None, "level": level, "prompts": len(p)}
    return _interval((p.mean() - r.mean()) / (o.mean() - r.mean()), (mp[ok] - mr[ok]) / gap[ok], level, len(p))


def excludes_zero(interval: dict) -> bool:
    """Whether a difference's interval lies wholly above or below zero."""
    return interval["lo"] is not None and (interval["lo"] > 0 or interval["hi"] < 0)
