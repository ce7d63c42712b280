"""Muon's arithmetic on many matrices at once: momentum, Newton–Schulz by batches of one shape, the update.

Orthogonalizing matrix by matrix costs 3 products per iteration and matrix (the TinyStories model: 28
matrices x 5 iterations x 3 = 420 small products per step, each its own kernel launch on a GPU). Matrices of
one shape up to transposition (q, k, v and output projections; w1, w3 and w2ᵀ) are stacked into one
(count, rows, cols) tensor, wide side last, and iterate together as batched products: 3 per iteration and
shape (30 for TinyStories). `single_step` is the whole update of one process as one function, which Muon
compiles into one graph; the scalars that change during a run (lr, momentum, weight decay) enter it as 0-d
tensors, so a schedule does not recompile it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
    """Approximately U Vᵀ for matrix = U S Vᵀ (singular values near 1, same singular vectors), for one matrix
    or a stack (..., rows, cols), each on its own; computed in bfloat16 on a GPU (the iteration tolerates it)
    and float32 elsewhere, on the smaller side's Gram matrix, returned in matrix's dtype."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:  # iterate on the smaller Gram matrix X Xᵀ
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)  # Frobenius norm >= spectral norm: σ <= 1
    batch = x.reshape(-1, *x.shape[-2:])
    for _ in range(steps):
        gram = torch.bmm(batch, batch.mT)
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·G + c·G²
        batch = torch.baddbmm(batch, polynomial, batch, beta=a)  # a·X + (b·G + c·G²)·X
    x = batch.reshape(x.shape)
    return (x if wide else x.mT).to(matrix.dtype)


@dataclass(frozen=True)
class Batches:
    """Muon's matrices (their whole shapes, in the optimizer's order) grouped by shape up to transposition:
    `members[g]` are the positions of batch g, `wide[g]` its (rows, cols) with rows <= cols."""

    shapes: tuple[tuple[int, int], ...]
    members: tuple[tuple[int, ...], ...]
    wide: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, shapes: list[tuple[int, ...]]) -> Batches:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, shape in enumerate(shapes):
            if len(shape) != 2:
                raise ValueError(f"Muon updates 2-D matrices only, got a parameter of shape {tuple(shape)}")
            groups.setdefault((min(shape), max(shape)), []).append(i)
        shapes = tuple((int(rows), int(cols)) for rows, cols in shapes)
        return cls(shapes, tuple(tuple(m) for m in groups.values()), tuple(groups))

    def stack(self, matrices: list[torch.Tensor], positions: tuple[int, ...]) -> torch.Tensor:
        """The matrices at `positions` as one (count, rows, cols) stack, the tall ones transposed."""
        return torch.stack([_wide(matrices[i]) for i in positions])

    def unstack(self, stack: torch.Tensor, positions: tuple[int, ...]) -> list[torch.Tensor]:
        """stack's matrices back in the shapes of the matrices at `positions`."""
        return [
            m.mT if self.shapes[i][0] > self.shapes[i][1] else m
            for i, m in zip(positions, stack.unbind(0), strict=True)
        ]

    def scale(self, group: int) -> float:
        """UPDATE_RMS·√max(rows, cols): the orthogonal factor's multiplier for an RMS of UPDATE_RMS."""
        return UPDATE_RMS * math.sqrt(self.wide[group][1])


def _wide(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.mT if matrix.shape[-2] > matrix.shape[-1] else matrix


def nesterov(
    grads: list[torch.Tensor], buffers: list[torch.Tensor], momentum: torch.Tensor
) -> list[torch.Tensor]:
    """B ← μ·B + G for every buffer (in place); returns the Nesterov directions G + μ·B."""
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    directions = torch._foreach_mul(buffers, momentum)
    torch._foreach_add_(directions, grads)
    return directions


def apply(
    params: list[torch.Tensor], updates: list[torch.Tensor], step: torch.Tensor, keep: torch.Tensor
) -> None:
    """W ← keep·W + step·O for the parameters of one batch (keep = 1 − lr·λ, step = −lr·scale)."""
    torch._foreach_mul_(params, keep)
    torch._foreach_add_(params, torch._foreach_mul(updates, step))


def single_step(
    batches: Batches,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor],
    lr: torch.Tensor,
    momentum: torch.Tensor,
    decay: torch.Tensor,
    ns_steps: int,
) -> None:
    """One Muon step of every matrix in one process: momentum, Newton–Schulz by batches, decay and update.
    A parameter may be held flat (FSDP on one rank): it is viewed in its whole shape for the iteration."""
    directions = nesterov(grads, buffers, momentum)
    matrices = [d.view(shape) for d, shape in zip(directions, batches.shapes, strict=True)]
    keep = 1 - lr * decay
    for g, positions in enumerate(batches.members):
        stack = orthogonalize(batches.stack(matrices, positions), ns_steps)
        unstacked = batches.unstack(stack, positions)
        updates = [u.reshape(params[i].shape) for i, u in zip(positions, unstacked, strict=True)]
        apply([params[i] for i in positions], updates, -lr * batches.scale(g), keep)


def orthogonalize_shares(
    batches: Batches, matrices: list[torch.Tensor], shares: tuple[tuple[int, ...], ...], ns_steps: int
) -> list[torch.Tensor]:
    """The orthogonalized stack of the matrices at shares[g] in each batch g (this rank's part of the work
    when several share it); an empty share gives an empty stack."""
    stacks = []
    for g, positions in enumerate(shares):
        if positions:
            stacks.append(orthogonalize(batches.stack(matrices, positions), ns_steps))
        else:
            stacks.append(matrices[0].new_zeros(0, *batches.wide[g]))
    return stacks
