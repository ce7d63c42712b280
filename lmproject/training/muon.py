"""Muon for the hidden weight matrices, AdamW for everything else, in one optimizer.

Muon (Jordan et al., 2024) keeps SGD momentum per matrix and steps along the momentum's orthogonal factor:
for M = U S Vᵀ it moves by U Vᵀ, every singular direction with the same size, so the rare directions of the
gradient move as far as the dominant ones. U Vᵀ is approximated by a few Newton–Schulz iterations, only
matrix products, cheap next to the forward and backward. It suits the 2-D weights inside the blocks; the
embedding table, the head and the norm gains keep AdamW (rows of a lookup table, a vector of gains and the
output layer are not "a linear map whose directions should be balanced").
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from lmproject.training.optim import AdamW

# Quintic Newton–Schulz: X ← a·X + b·(X Xᵀ)X + c·(X Xᵀ)²X maps each singular value σ of X (after scaling
# to σ ≤ 1) through p(σ) = aσ + bσ³ + cσ⁵. These coefficients (Jordan et al.) make p rise steeply from 0,
# so five iterations bring every singular value into roughly [0.7, 1.2]: not exactly 1, which Muon does
# not need, and far fewer iterations than the cubic iteration that converges to exactly 1.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
# Step size relative to AdamW (Liu et al., 2025, "Muon is scalable for LLM training"): the orthogonal
# update is scaled to an RMS of 0.2 per entry, about AdamW's, so both kinds of group share one learning
# rate, one schedule and one weight decay.
UPDATE_RMS = 0.2


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U Vᵀ for matrix = U S Vᵀ (singular values near 1, same singular vectors), computed in
    bfloat16 on a GPU (the iteration tolerates it) and float32 elsewhere, returned in matrix's dtype."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:  # iterate on the smaller Gram matrix X Xᵀ
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)  # Frobenius norm >= spectral norm: σ <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.mT).to(matrix.dtype)


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Whether Muon updates this parameter: a 2-D weight inside the Transformer blocks
    (layers.{i}.attn.*_proj, layers.{i}.ffn.w*), not token_embeddings, lm_head or a norm's gain."""
    return name.startswith("layers.") and param.ndim == 2


def muon_param_groups(model: nn.Module) -> list[dict]:
    """Two parameter groups of `model`, chosen by name: {"muon": True} for the hidden matrices, {"muon":
    False} for the rest; each also lists its parameters' names ("names"), for the log and the tests."""
    groups = [{"muon": True, "params": [], "names": []}, {"muon": False, "params": [], "names": []}]
    for name, param in model.named_parameters():  # a tied lm_head appears once, as token_embeddings
        group = groups[0] if is_hidden_matrix(name, param) else groups[1]
        group["params"].append(param)
        group["names"].append(name)
    return groups


def describe_groups(groups: Iterable[dict]) -> str:
    """One line per group: optimizer, parameter count, and the names with layer numbers folded into `*`."""
    lines = []
    for group in groups:
        numel = sum(p.numel() for p in group["params"])
        names = sorted({_fold_layer_index(n) for n in group["names"]})
        kind = "Muon " if group["muon"] else "AdamW"
        lines.append(f"{kind} {len(group['params'])} tensors, {numel:,} parameters: {', '.join(names)}")
    return "\n".join(lines)


def _fold_layer_index(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "layers" and len(parts) > 1:
        parts[1] = "*"
    return ".".join(parts)


class Muon(AdamW):
    """AdamW for groups with "muon": False; for groups with "muon": True, per matrix W with gradient G:

        B ← μ·B + G;  O ← orthogonalize(G + μ·B)  (Nesterov momentum);
        W ← W − lr·λ·W − lr·0.2·√max(rows, cols)·O

    (0.2·√max(rows, cols)·O has an RMS of about 0.2 per entry, see UPDATE_RMS). The gradients it reads are
    whatever .grad holds when step() runs: under DDP, the average over ranks (reduced during backward), so
    every rank computes the same update.
    """

    def __init__(
        self,
        params: Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        super().__init__(params, lr, betas, eps, weight_decay)
        for group in self.param_groups:
            group.setdefault("muon", False)
            group.update(momentum=momentum, ns_steps=ns_steps)

    def _update(self, group: dict, params: list[torch.nn.Parameter]) -> None:
        if not group["muon"]:
            return super()._update(group, params)
        lr, decay, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in params:
            if p.ndim != 2:
                raise ValueError(f"Muon updates 2-D matrices only, got a parameter of shape {tuple(p.shape)}")
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.mul_(mu).add_(p.grad)
            update = orthogonalize(p.grad.add(buffer, alpha=mu), group["ns_steps"])
            p.mul_(1 - lr * decay)
            p.add_(update, alpha=-lr * UPDATE_RMS * math.sqrt(max(p.shape)))
