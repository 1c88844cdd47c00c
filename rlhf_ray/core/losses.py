"""Losses of SFT and of every reward-model objective (RLHF book ch. 4, 5, 9), as pure torch functions.

Scores are per-sequence rewards ``r``; ``-log σ(x)`` is written ``-logsigmoid(x)`` (= softplus(-x)),
which stays finite where ``log(1 + exp(-x))`` overflows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_ray.core.chat import IGNORE_INDEX


def sft_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy summed over trained tokens.

    ``labels`` are aligned with ``logits`` positions of the input (-100 = not trained); the shift happens
    here. The train step divides the sum by the trained-token count of the whole global batch, so that
    gradient accumulation and data parallelism give the same update as one large batch.
    """
    shift_logits = logits[..., :-1, :].reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(shift_logits, labels[..., 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def sft_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, the mean over this batch's trained tokens."""
    return sft_nll_sum(logits, labels) / (labels[..., 1:] != IGNORE_INDEX).sum().clamp(min=1)


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(r_c − r_r), averaged over pairs."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def margin_bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Llama 2: −log σ(r_c − r_r − m), with m from the rating gap."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def center_rewards(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Auxiliary term that keeps rewards near zero (add ``coef *`` this): mean of (r_c + r_r)²."""
    return ((r_chosen + r_rejected) ** 2).mean()


def _ranked(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """Scores reordered best first: ``ranking[b, k]`` is the index of the k-th best completion."""
    return torch.gather(scores, 1, ranking.long())


def kwise_balanced(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """InstructGPT: every prompt's C(K,2) pairs, each weighted 1/C(K,2), so each prompt counts once.

    ``scores`` [B, K], ``ranking`` [B, K] best first. All pairs of a prompt are in this one batch, which
    avoids the overfitting InstructGPT saw when pairs of a prompt were shuffled as separate examples.
    """
    ordered = _ranked(scores, ranking)
    k = ordered.size(1)
    better, worse = torch.triu_indices(k, k, offset=1, device=scores.device)
    pair_losses = -F.logsigmoid(ordered[:, better] - ordered[:, worse])  # [B, C(K,2)]
    return pair_losses.mean(dim=1).mean()


def plackett_luce(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """−log Π_k exp(r_σ(k)) / Σ_{j≥k} exp(r_σ(j)), averaged over prompts; K=2 is Bradley-Terry."""
    ordered = _ranked(scores, ranking)
    # log Σ_{j≥k} exp(r_σ(j)) for every k: logcumsumexp over the reversed order.
    tails = torch.logcumsumexp(ordered.flip(1), dim=1).flip(1)
    # The last factor is exp(r)/exp(r) = 1; dropping it avoids adding an exact zero.
    return -(ordered - tails)[:, :-1].sum(dim=1).mean()


def orm_bce(token_logits: torch.Tensor, labels: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Outcome RM (Cobbe et al.): every completion token predicts whether the answer is correct.

    ``token_logits`` [B, T], ``labels`` [B] in {0, 1}, ``completion_mask`` [B, T] (prompt and padding 0).
    Mean over all completion tokens of the batch.
    """
    y = labels.to(token_logits.dtype)[:, None].expand_as(token_logits)
    per_token = y * F.softplus(-token_logits) + (1 - y) * F.softplus(token_logits)
    mask = completion_mask.to(token_logits.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


PRM_CLASSES = {-1: 0, 0: 1, 1: 2}


def prm_3class(token_logits: torch.Tensor, step_labels: torch.Tensor) -> torch.Tensor:
    """Process RM (Lightman et al.): 3-class cross-entropy at step-boundary tokens only.

    ``token_logits`` [B, T, 3]; ``step_labels`` [B, T] holds the class (0 = wrong, 1 = neutral,
    2 = correct; see ``PRM_CLASSES``) at each step's last token and -100 everywhere else.
    """
    return F.cross_entropy(token_logits.reshape(-1, 3).float(), step_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Fraction of pairs the model orders correctly; ties count half."""
    diff = r_chosen - r_rejected
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def last_token_index(attention_mask):
    """Index of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)
