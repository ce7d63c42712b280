"""Muon for the hidden weight matrices, AdamW for everything else, in one optimizer.

Muon (Jordan et al., 2024) keeps SGD momentum per matrix and steps along the momentum's orthogonal factor:
for M = U S Vᵀ it moves by U Vᵀ, every singular direction with the same size, so the rare directions of the
gradient move as far as the dominant ones. U Vᵀ is approximated by a few Newton–Schulz iterations, only
matrix products, cheap next to the forward and backward. It suits the 2-D weights inside the blocks; the
embedding table, the head and the norm gains keep AdamW (rows of a lookup table, a vector of gains and the
output layer are not "a linear map whose directions should be balanced").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from lmproject.training.muon_math import (
    NEWTON_SCHULZ,
    UPDATE_RMS,
    Batches,
    apply,
    nesterov,
    orthogonalize,
    orthogonalize_shares,
    single_step,
)
from lmproject.training.muon_split import Split
from lmproject.training.optim import AdamW

__all__ = ["NEWTON_SCHULZ", "UPDATE_RMS", "Muon", "describe_groups", "muon_param_groups", "orthogonalize"]
# FSDP's wrapper module inserts this into the names of the parameters it wraps
FSDP_PREFIX = "_fsdp_wrapped_module."


def is_hidden_matrix(name: str, param: torch.Tensor, shape: torch.Size | None = None) -> bool:
    """Whether Muon updates this parameter: a 2-D weight inside the Transformer blocks
    (layers.{i}.attn.*_proj, layers.{i}.ffn.w*), not token_embeddings, lm_head or a norm's gain. `shape`:
    the parameter's whole shape where it is held as a flat piece (FSDP)."""
    return name.startswith("layers.") and len(param.shape if shape is None else shape) == 2


def muon_param_groups(
    model: nn.Module, whole_shapes: Mapping[torch.Tensor, torch.Size] | None = None
) -> list[dict]:
    """Two parameter groups of `model`, chosen by name: {"muon": True} for the hidden matrices, {"muon":
    False} for the rest; each also lists its parameters' names ("names"), for the log and the tests. Under
    FSDP, whose parameters are flat pieces, `whole_shapes` gives their whole shapes; the names are listed
    without FSDP's wrapper prefix."""
    groups = [{"muon": True, "params": [], "names": []}, {"muon": False, "params": [], "names": []}]
    for name, param in model.named_parameters():  # a tied lm_head appears once, as token_embeddings
        name = name.replace(FSDP_PREFIX, "")
        shape = whole_shapes.get(param) if whole_shapes else None
        group = groups[0] if is_hidden_matrix(name, param, shape) else groups[1]
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

    (0.2·√max(rows, cols)·O has an RMS of about 0.2 per entry, see UPDATE_RMS). The matrices of one shape up
    to transposition are orthogonalized together, as batched products (lmproject.training.muon_math); with
    `compile`, the whole step of those matrices is one torch.compile graph (where torch can compile for the
    parameters' device: a GPU, or a CPU with a C++ compiler; elsewhere the same functions run eagerly).

    The gradients it reads are whatever .grad holds when step() runs: under DDP, the average over ranks
    (reduced during backward). With a `process_group` of several ranks, each orthogonalizes its share of the
    matrices and all-gathers the others' (lmproject.training.muon_split), so every rank applies the same
    update; every matrix of the group is then stepped on every rank, a missing gradient counting as zero.
    `whole_shapes` ({parameter: whole shape}) says the parameters are flat FSDP pieces (use_orig_params),
    gathered whole for the iteration; their momentum buffers stay pieces, shaped like the parameters.
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
        *,
        compile: bool = False,
        process_group: torch.distributed.ProcessGroup | None = None,
        whole_shapes: Mapping[torch.Tensor, torch.Size] | None = None,
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        super().__init__(params, lr, betas, eps, weight_decay)
        for group in self.param_groups:
            group.setdefault("muon", False)
            group.update(momentum=momentum, ns_steps=ns_steps)
        self.compile = compile
        self.whole_shapes = whole_shapes
        split = process_group is not None and torch.distributed.get_world_size(process_group) > 1
        self.split = Split(process_group, whole_shapes) if split else None
        self.orthogonalized = 0  # matrices this process ran Newton–Schulz on in the last step
        self._batches: dict[tuple[int, ...], Batches] = {}
        self._scalars: dict[torch.device, tuple[torch.Tensor, ...]] = {}  # see _scalars_for
        self._functions: dict[str, Callable] = {}

    def _update(self, group: dict, params: list[torch.nn.Parameter]) -> None:
        if not group["muon"]:
            return super()._update(group, params)
        if self.split is not None:  # every rank joins the same collectives, whatever gradients it holds
            params = group["params"]
        if not params:
            return
        batches = self._batches_of(params)
        lr, momentum, decay = self._scalars_for(params[0].device, group)
        if self.split is None:
            self.orthogonalized = len(params)
            grads, buffers = [p.grad for p in params], [self._buffer(p) for p in params]
            self._function("single_step", single_step)(
                batches, params, grads, buffers, lr, momentum, decay, group["ns_steps"]
            )
        else:
            self._split_step(batches, params, lr, momentum, decay, group["ns_steps"])

    def _split_step(self, batches: Batches, params: list, lr, momentum, decay, ns_steps: int) -> None:
        """One step whose Newton–Schulz work is shared by the ranks of self.split (see muon_split)."""
        held = [i for i, p in enumerate(params) if p.numel() > 0]  # FSDP: the pieces this rank holds
        grads = [params[i].grad if params[i].grad is not None else torch.zeros_like(params[i]) for i in held]
        directions = nesterov(grads, [self._buffer(params[i]) for i in held], momentum)
        pieces: list[torch.Tensor | None] = [None] * len(params)
        for i, direction in zip(held, directions, strict=True):
            pieces[i] = direction
        matrices = self.split.whole(params, pieces)
        shares = self.split.shares(batches)
        self.orthogonalized = sum(len(share) for share in shares)
        stacks = self._function("orthogonalize_shares", orthogonalize_shares)(
            batches, matrices, shares, ns_steps
        )
        keep = 1 - lr * decay
        for g, stack in enumerate(self.split.gather(stacks, batches)):
            positions = batches.members[g]
            unstacked = zip(positions, batches.unstack(stack, positions), strict=True)
            mine = [(i, u) for i, u in unstacked if params[i].numel() > 0]
            if mine:
                updates = [self.split.piece(params, i, u).view(params[i].shape) for i, u in mine]
                apply([params[i] for i, _ in mine], updates, -lr * batches.scale(g), keep)

    def _buffer(self, p: torch.nn.Parameter) -> torch.Tensor:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]

    def _batches_of(self, params: list[torch.nn.Parameter]) -> Batches:
        key = tuple(id(p) for p in params)
        if key not in self._batches:
            shapes = self.whole_shapes or {}
            self._batches[key] = Batches.of([shapes.get(p, p.shape) for p in params])
        return self._batches[key]

    def _scalars_for(self, device: torch.device, group: dict) -> tuple[torch.Tensor, ...]:
        """The group's lr, momentum and weight decay as 0-d tensors on `device`, refilled in place (no wait
        for the device): inputs, not constants, of the compiled step, so a new learning rate does not
        recompile it."""
        if device not in self._scalars:
            self._scalars[device] = tuple(torch.zeros((), device=device) for _ in range(3))
        scalars = self._scalars[device]
        for tensor, value in zip(
            scalars, (group["lr"], group["momentum"], group["weight_decay"]), strict=True
        ):
            tensor.fill_(value)
        return scalars

    def _function(self, name: str, function: Callable) -> Callable:
        """`function`, compiled (once per name) when self.compile and torch can compile for the device."""
        if name not in self._functions:
            device = next(p.device for g in self.param_groups if g["muon"] for p in g["params"])
            self._functions[name] = (
                torch.compile(function, dynamic=False) if self.compile and compiles_for(device) else function
            )
        return self._functions[name]


def compiles_for(device: torch.device) -> bool:
    """Whether torch.compile can build code for `device` here: dynamo runs on this Python and, on a CPU,
    a C++ compiler is installed (inductor writes C++ for CPUs and Triton for GPUs)."""
    if not torch._dynamo.is_dynamo_supported():
        return False
    if device.type == "cpu":
        from lmproject.sampling.compiled_step import cpp_compiler

        return cpp_compiler() is not None
    return device.type == "cuda"
