"""The elementwise and attention math of the Transformer, written out with plain tensor operations."""

from __future__ import annotations

import math

import torch


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax along `dim`; the row maximum is subtracted first so large inputs cannot overflow exp."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    exps = shifted.exp()
    return exps / exps.sum(dim=dim, keepdim=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish): x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / √d_k) v over any leading dims.

    q: (..., queries, d_k), k: (..., keys, d_k), v: (..., keys, d_v). `mask` is boolean and broadcasts to
    (..., queries, keys); True means the query may attend to that key. Every query must be allowed at
    least one key (a row with none would be 0/0).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ v


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` (...,) under `logits` (..., vocab).

    Computed in float32 (also under autocast) with a max-shifted log-sum-exp, so large logits stay finite.
    """
    return _CrossEntropy.apply(logits, targets)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of each target (...,), in float32 and unreduced (cross_entropy is their
    mean): for evaluation, where each window carries its own weight."""
    return _negative_log_likelihoods(logits, targets)[0]


def _negative_log_likelihoods(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(−log softmax(logits)[target] (...,), the shifted exponentials, their sums over the vocabulary)."""
    logits32 = logits.float()
    shifted = logits32 - logits32.amax(dim=-1, keepdim=True)
    target_logits = shifted.gather(-1, targets.unsqueeze(-1))
    exps = shifted.exp_()  # in place: the (tokens x vocab) buffers are the big ones
    sums = exps.sum(dim=-1, keepdim=True)
    return (sums.log() - target_logits).squeeze(-1), exps, sums


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy with its gradient written out, (softmax − one_hot(target)) / N: two passes over the
    logits on the way back instead of autograd's chain through exp, sum, log and gather."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, exps, sums = _negative_log_likelihoods(logits, targets)
        ctx.save_for_backward(exps, sums, targets)
        ctx.logits_dtype = logits.dtype
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        exps, sums, targets = ctx.saved_tensors
        grad = exps / sums  # softmax
        target_index = targets.unsqueeze(-1)
        grad.scatter_(-1, target_index, grad.gather(-1, target_index) - 1.0)  # minus one_hot(target)
        grad.mul_(grad_loss / targets.numel())
        return grad.to(ctx.logits_dtype), None
