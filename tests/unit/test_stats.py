"""Paired bootstrap intervals against slow direct computations."""
import itertools

import numpy as np
import pytest

from rlhf_ray.core import stats


def slow_bootstrap_means(d, n_boot, seed):
    """One resample at a time, the textbook way: draw m prompts with replacement, average."""
    rng = np.random.default_rng(seed)
    return np.array([np.mean([d[i] for i in rng.integers(0, len(d), size=len(d))]) for _ in range(n_boot)])


def test_paired_difference_equals_the_slow_loop():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, size=40).astype(float), rng.integers(0, 2, size=40).astype(float)
    res = stats.paired_difference(a, b, n_boot=2000, seed=7)
    draws = slow_bootstrap_means(a - b, 2000, 7)
    assert res["estimate"] == pytest.approx(np.mean(a - b))
    assert res["lo"] == pytest.approx(np.percentile(draws, 2.5)) and res["hi"] == pytest.approx(np.percentile(draws, 97.5))
    assert res["prompts"] == 40


def test_interval_converges_to_the_exact_bootstrap_distribution():
    # Five prompts: all 5^5 equally likely resamples enumerated give the exact bootstrap distribution.
    d = np.array([1.0, 0.0, 1.0, 1.0, -1.0])
    exact = np.sort([d[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    res = stats.paired_difference(d, np.zeros(5), n_boot=200_000, seed=0, level=0.8)
    lo, hi = np.percentile(exact, [10, 90])
    assert res["lo"] == pytest.approx(lo, abs=0.05) and res["hi"] == pytest.approx(hi, abs=0.05)


def test_a_real_difference_excludes_zero_and_noise_does_not():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=300).astype(float)
    better = np.where(rng.random(300) < 0.3, 1.0, base)  # 30% of wrong answers fixed
    assert stats.excludes_zero(stats.paired_difference(better, base))
    assert not stats.excludes_zero(stats.paired_difference(base, base[rng.permutation(300)]))


def test_gap_closed_by_hand_and_by_slow_loop():
    pick = np.array([1.0, 1.0, 0.0, 1.0])
    rand = np.array([0.5, 0.25, 0.0, 0.5])
    oracle = np.array([1.0, 1.0, 0.0, 1.0])
    res = stats.gap_closed(pick, rand, oracle, n_boot=500, seed=3)
    assert res["estimate"] == pytest.approx(1.0) and res["lo"] == pytest.approx(1.0)
    pick = np.array([1.0, 0.0, 0.0, 1.0])
    res = stats.gap_closed(pick, rand, oracle, n_boot=500, seed=3)
    assert res["estimate"] == pytest.approx((0.5 - 0.3125) / (0.75 - 0.3125))
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(500):
        i = rng.integers(0, 4, size=4)
        if oracle[i].mean() > rand[i].mean():
            ratios.append((pick[i].mean() - rand[i].mean()) / (oracle[i].mean() - rand[i].mean()))
    assert res["lo"] == pytest.approx(np.percentile(ratios, 2.5)) and res["hi"] == pytest.approx(np.percentile(ratios, 97.5))


def test_no_gap_and_unpaired_input():
    assert stats.gap_closed([1.0], [1.0], [1.0])["estimate"] is None
    with pytest.raises(ValueError, match="one entry per prompt"):
        stats.paired_difference([1.0, 0.0], [1.0])
