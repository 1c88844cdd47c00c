"""Each loss against numbers worked out by hand and against a slow, obviously correct loop."""
import itertools
import math

import pytest
import torch

from rlhf_ray.core import losses

T = torch.tensor


def close(a, b, tol=1e-6):
    return abs(float(a) - float(b)) < tol


# ---------- hand-worked values (natural logs)

def test_bradley_terry_by_hand():
    # -log σ(1) = log(1 + e^-1) = 0.31326169 ; -log σ(-2) = log(1 + e^2) = 2.12692801
    assert close(losses.bradley_terry(T([1.0, 0.0]), T([0.0, 2.0])), (0.31326169 + 2.12692801) / 2)


def test_bradley_terry_identity_and_shift_invariance():
    d = torch.linspace(-30, 30, 13)
    for x in d:  # −log σ(Δ) = log(1 + e^(−Δ))
        assert close(losses.bradley_terry(x[None], T([0.0])), math.log1p(math.exp(-x.item())), 1e-5)
    rc, rr = torch.randn(8), torch.randn(8)
    assert close(losses.bradley_terry(rc, rr), losses.bradley_terry(rc + 7.5, rr + 7.5))


def test_bradley_terry_is_finite_for_huge_gaps():
    assert close(losses.bradley_terry(T([0.0]), T([1000.0])), 1000.0)


def test_margin_by_hand():
    # r_c - r_r - m = 2 - 0 - 3 = -1 → log(1 + e) = 1.31326169
    assert close(losses.margin_bradley_terry(T([2.0]), T([0.0]), T([3.0])), 1.31326169)
    assert close(losses.margin_bradley_terry(T([2.0]), T([0.0]), T([0.0])), losses.bradley_terry(T([2.0]), T([0.0])))


def test_center_rewards_by_hand():
    assert close(losses.center_rewards(T([1.0, 2.0]), T([1.0, -2.0])), (4 + 0) / 2)


def test_kwise_by_hand():
    # scores [3, 1, 2], ranking best→worst = [0, 2, 1] → ordered [3, 2, 1]
    # pairs Δ = 1, 2, 1: (0.31326169 + 0.12692801 + 0.31326169) / C(3,2)=3
    got = losses.kwise_balanced(T([[3.0, 1.0, 2.0]]), T([[0, 2, 1]]))
    assert close(got, (0.31326169 + 0.12692801 + 0.31326169) / 3)


def test_kwise_weights_each_prompt_equally():
    # A K=2 prompt and a K=2 prompt average; each prompt's pairs are averaged first (1/C(K,2)).
    got = losses.kwise_balanced(T([[1.0, 0.0], [0.0, 2.0]]), T([[0, 1], [0, 1]]))
    assert close(got, (0.31326169 + 2.12692801) / 2)


def test_plackett_luce_by_hand():
    # ordered [3, 2, 1]: -(3 - log(e^3+e^2+e^1)) - (2 - log(e^2+e^1))
    #   = log(1 + e^-1 + e^-2) + log(1 + e^-1) = 0.40760596 + 0.31326169
    got = losses.plackett_luce(T([[3.0, 1.0, 2.0]]), T([[0, 2, 1]]))
    assert close(got, 0.40760596 + 0.31326169)


def test_plackett_luce_with_k2_equals_bradley_terry():
    s = torch.randn(16, 2)
    ranking = torch.stack([torch.randperm(2) for _ in range(16)])
    ordered = torch.gather(s, 1, ranking)
    assert close(losses.plackett_luce(s, ranking), losses.bradley_terry(ordered[:, 0], ordered[:, 1]), 1e-5)


def test_orm_by_hand():
    # label 1: softplus(-0) = log 2 = 0.69314718, softplus(-2) = 0.12692801; masked third token ignored
    logits, mask = T([[0.0, 2.0, 50.0]]), T([[1, 1, 0]])
    assert close(losses.orm_bce(logits, T([1]), mask), (0.69314718 + 0.12692801) / 2)
    assert close(losses.orm_bce(logits, T([0]), mask), (0.69314718 + 2.12692801) / 2)


def test_prm_by_hand():
    # uniform logits: -log(1/3) = 1.09861229 at the one boundary; -100 elsewhere is ignored
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = T([50.0, -50.0, 0.0])
    assert close(losses.prm_3class(logits, T([[-100, 2, -100]])), 1.09861229)


def test_sft_nll_by_hand():
    # vocab 2; position 0 predicts token 1 with logits [0, log 3]: -log(3/4) = 0.28768207
    logits = T([[[0.0, math.log(3)], [5.0, 5.0]]])
    assert close(losses.sft_nll(logits, T([[-100, 1]])), 0.28768207)
    two = torch.cat([logits, logits])  # two trained tokens: the sum doubles, the mean does not
    assert close(losses.sft_nll_sum(two, T([[-100, 1], [-100, 1]])), 2 * 0.28768207)
    assert close(losses.sft_nll(two, T([[-100, 1], [-100, 1]])), 0.28768207)


# ---------- slow, obviously correct versions on random inputs

def slow_kwise(scores, ranking):
    total = 0.0
    for s, rank in zip(scores.tolist(), ranking.tolist()):
        pairs = list(itertools.combinations(rank, 2))  # (better, worse)
        total += sum(math.log1p(math.exp(-(s[a] - s[b]))) for a, b in pairs) / len(pairs)
    return total / len(scores)


def slow_plackett_luce(scores, ranking):
    total = 0.0
    for s, rank in zip(scores.tolist(), ranking.tolist()):
        for k in range(len(rank)):
            total -= s[rank[k]] - math.log(sum(math.exp(s[j]) for j in rank[k:]))
    return total / len(scores)


def slow_orm(logits, labels, mask):
    terms = []
    for row, y, m in zip(logits.tolist(), labels.tolist(), mask.tolist()):
        for x, keep in zip(row, m):
            if keep:
                p = 1 / (1 + math.exp(-x))
                terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    return sum(terms) / len(terms)


def slow_sft(logits, labels):
    terms = []
    for b in range(logits.size(0)):
        for t in range(1, logits.size(1)):
            y = labels[b, t].item()
            if y != -100:
                row = logits[b, t - 1].tolist()
                terms.append(math.log(sum(math.exp(v) for v in row)) - row[y])
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", range(3))
def test_against_slow_versions(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(5, 4, generator=g, dtype=torch.float64)
    ranking = torch.stack([torch.randperm(4, generator=g) for _ in range(5)])
    assert close(losses.kwise_balanced(scores, ranking), slow_kwise(scores, ranking), 1e-9)
    assert close(losses.plackett_luce(scores, ranking), slow_plackett_luce(scores, ranking), 1e-9)
    logits = torch.randn(3, 6, generator=g, dtype=torch.float64)
    labels, mask = torch.randint(0, 2, (3,), generator=g), torch.randint(0, 2, (3, 6), generator=g)
    mask[:, 0] = 1
    assert close(losses.orm_bce(logits, labels, mask), slow_orm(logits, labels, mask), 1e-9)
    lm_logits = torch.randn(2, 7, 11, generator=g)
    lm_labels = torch.randint(0, 11, (2, 7), generator=g)
    lm_labels[:, :3] = -100
    assert close(losses.sft_nll(lm_logits, lm_labels), slow_sft(lm_logits, lm_labels), 1e-5)


def test_pairwise_accuracy_counts_ties_half():
    assert losses.pairwise_accuracy(T([1.0, 0.0, 2.0, 1.0]), T([0.0, 1.0, 2.0, 0.5])) == pytest.approx(0.625)
