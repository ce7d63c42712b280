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


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """ReLU²: max(x, 0)², the activation of the ReLU² FFN."""
    return torch.relu(x).square()


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap·tanh(logits/cap): about the identity for |logits| << cap, smoothly bounded to (−cap, cap)."""
    return cap * torch.tanh(logits / cap)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / √d_k) v over any leading dims.

    q: (..., queries, d_k), k: (..., keys, d_k), v: (..., keys, d_v). `mask` is boolean and broadcasts to
    (..., queries, keys); True means the query may attend to that key. Every query must be allowed at
    least one key (a row with none would be 0/0).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., queries, keys)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ v  # each query's weights over the keys, sum 1: (..., queries, d_v)


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


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """cross_entropy(hidden @ weightᵀ, targets), `chunk_tokens` rows at a time: the lm head and the loss
    fused, so the (tokens x vocab) float32 logits never exist for the whole batch, only for one chunk.

    hidden: (..., d_model), weight: (vocab, d_model), targets: (...). The gradients are computed chunk by
    chunk during the forward pass (each chunk's softmax is needed for them and is thrown away after), and
    backward only scales them: one (tokens x d_model) and one (vocab x d_model) buffer are kept instead of
    the logits. Under autocast the matmuls run in the autocast dtype, the softmax in float32.
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    return _LinearCrossEntropy.apply(hidden.flatten(0, -2), weight, targets.flatten(), chunk_tokens)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per chunk of rows: logits = h Wᵀ in float32, loss = log Σ exp(logits) − logits[target], and the
    logits' gradient g = (softmax − one_hot(target)) / N, from which ∂h = g W and ∂W += gᵀ h."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int):
        n = targets.numel()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        loss_sum = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk_tokens):
            h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens, None]
            losses, grad = _chunk_loss_and_logit_gradient(h @ weight.T, t, n)
            loss_sum = loss_sum + losses
            grad_hidden[start : start + chunk_tokens] = grad @ weight
            grad_weight += grad.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight, None, None


def _chunk_loss_and_logit_gradient(
    logits: torch.Tensor, targets: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed losses, (softmax − one_hot) / n in logits' dtype) of one chunk, all in one float32 buffer
    of the chunk's logits, updated in place (the caller runs without autograd)."""
    buffer = logits.float()
    buffer -= buffer.amax(dim=-1, keepdim=True)
    target_logits = buffer.gather(-1, targets)
    sums = buffer.exp_().sum(dim=-1, keepdim=True)
    losses = (sums.log() - target_logits).sum()
    buffer.div_(sums).scatter_add_(-1, targets, torch.full_like(target_logits, -1.0)).div_(n)
    return losses, buffer.to(logits.dtype)
