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
    logits = logits.float()
    row_max = logits.amax(dim=-1, keepdim=True)
    log_normalizer = (logits - row_max).exp().sum(dim=-1).log() + row_max.squeeze(-1)
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_normalizer - target_logits).mean()
