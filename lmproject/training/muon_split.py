"""Muon over several processes: each rank orthogonalizes its share of the matrices, every rank applies all.

Under DDP every rank holds every matrix whole and the same averaged gradient, so the Newton–Schulz work can
be split: within each batch of one shape, matrix j goes to rank j mod N (round-robin, so the shares differ
by at most one matrix), and one all-gather per step brings every rank all the orthogonalized matrices.
Every rank then applies the same update tensors with the same operations: the weights stay bit-identical.

Under FSDP (use_orig_params) a rank holds a flat piece of each matrix: a contiguous range of its elements,
the ranks' ranges following each other in rank order (possibly empty), its momentum buffer in the same
piece. The Nesterov directions are made whole first (one all-reduce of the pieces, each placed at its range
in zeros), then split as under DDP, and each rank applies its own range of each update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist

from lmproject.training.muon_math import Batches


def _all_gather(output: torch.Tensor, tensor: torch.Tensor, group: dist.ProcessGroup) -> None:
    """Every rank's `tensor`, concatenated in rank order into `output`: all_gather_into_tensor, under its
    newer name where torch has it (2.13 deprecates the old one)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor, group=group)


class Split:
    """The ranks of `group` (a torch.distributed process group) sharing one Muon step; `whole_shapes`:
    {parameter: whole shape} when the parameters are flat FSDP pieces, None when they are whole."""

    def __init__(self, group: dist.ProcessGroup, whole_shapes: Mapping[torch.Tensor, torch.Size] | None):
        self.group, self.whole_shapes = group, whole_shapes
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self._ranges: dict[tuple[int, ...], list[tuple[int, int]]] = {}

    def shares(self, batches: Batches) -> tuple[tuple[int, ...], ...]:
        """This rank's matrices in each batch: every world_size-th, from the rank's own index."""
        return tuple(members[self.rank :: self.world_size] for members in batches.members)

    def gather(self, stacks: list[torch.Tensor], batches: Batches) -> list[torch.Tensor]:
        """Every rank's orthogonalized shares (stacks[g]: this rank's of batch g) -> the whole batches,
        (count, rows, cols) in member order, on every rank: one all-gather, each share padded to the
        largest one's length."""
        lengths = [math.ceil(len(members) / self.world_size) for members in batches.members]
        padded = [
            torch.cat([stack, stack.new_zeros(length - len(stack), *stack.shape[1:])]).flatten()
            for stack, length in zip(stacks, lengths, strict=True)
        ]
        mine = torch.cat(padded)
        everyone = mine.new_empty(self.world_size * mine.numel())
        _all_gather(everyone, mine, group=self.group)
        rows = everyone.view(self.world_size, -1)
        whole, offset = [], 0
        for (m, n), length, members in zip(batches.wide, lengths, batches.members, strict=True):
            block = rows[:, offset : offset + length * m * n].reshape(self.world_size, length, m, n)
            # block[r, j] is member r + j·world_size: interleave the ranks back into member order
            whole.append(block.transpose(0, 1).reshape(-1, m, n)[: len(members)])
            offset += length * m * n
        return whole

    def whole(self, params: list[torch.Tensor], pieces: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """FSDP: each matrix whole from every rank's piece (None: this rank holds none of it); whole
        parameters (DDP) are returned as they are."""
        if self.whole_shapes is None:
            return pieces
        ranges = self.ranges(params)
        shapes = [self.whole_shapes[p] for p in params]
        sizes = [math.prod(shape) for shape in shapes]
        flat = params[0].new_zeros(sum(sizes))
        offset = 0
        for piece, (start, stop), size in zip(pieces, ranges, sizes, strict=True):
            if piece is not None:
                flat[offset + start : offset + stop] = piece
            offset += size
        dist.all_reduce(flat, group=self.group)
        return [m.view(shape) for m, shape in zip(flat.split(sizes), shapes, strict=True)]

    def piece(self, params: list[torch.Tensor], position: int, update: torch.Tensor) -> torch.Tensor:
        """This rank's part of the whole `update` of params[position], shaped as the parameter."""
        if self.whole_shapes is None:
            return update
        start, stop = self.ranges(params)[position]
        return update.reshape(-1)[start:stop]

    def ranges(self, params: list[torch.Tensor]) -> list[tuple[int, int]]:
        """Where each parameter's piece lies in its whole flattened matrix: the pieces' sizes of all ranks
        (one all-gather, on the first step), summed over the ranks before this one."""
        key = tuple(id(p) for p in params)
        if key not in self._ranges:
            sizes = torch.tensor([p.numel() for p in params], dtype=torch.int64, device=params[0].device)
            every = sizes.new_empty(self.world_size * len(params))
            _all_gather(every, sizes, group=self.group)
            every = every.view(self.world_size, -1).cpu()
            for p, total in zip(params, every.sum(0).tolist(), strict=True):
                if total != math.prod(self.whole_shapes[p]):
                    raise ValueError(
                        f"Muon under FSDP: the ranks hold {total} elements of a matrix of shape "
                        f"{tuple(self.whole_shapes[p])}; expected its pieces in rank order (use_orig_params)"
                    )
            starts = every[: self.rank].sum(0).tolist()
            self._ranges[key] = [(s, s + p.numel()) for s, p in zip(starts, params, strict=True)]
        return self._ranges[key]
