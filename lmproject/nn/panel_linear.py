"""Decoding's matrix products on the CPU: y = x Wᵀ for 1-16 rows, with W stored in panels (_panels.c).

A decode step multiplies each weight by one row per sequence, and reading the weights is most of its
time. torch's float32 kernels (MKL) handle these few-row products poorly on the test CPU, an AMD EPYC
with AVX-512: 6-12 GB/s at 1-8 rows, 46 GFLOP/s at 16. Stored in panels, each weight is read once, front
to back, for all the rows, and the same products run at 21-26 GB/s (the memory's bandwidth) for 1-4 rows
and at 77-93 GFLOP/s for 16 (bench/RESULTS.md, "Decoding's panel products"). The values are those of
x Wᵀ up to float32 rounding: each sum runs over the inputs in order, where torch's kernels may block it.

A weight of shape (d_out, d_in) becomes (ceil(d_out / 16), d_in, 16): panel p holds outputs 16p..16p+15,
for each input their 16 weights side by side (the last panel padded with zeros). The kernel runs on one
core, so decoding uses the panels where torch runs on at most two threads (MAX_THREADS), as measured.
"""

from __future__ import annotations

import torch
from torch import nn

from lmproject.nn.layers import Linear

try:
    from lmproject.nn import _panels
except ImportError:  # built at install where a C compiler was available (setup.py)
    _panels = None

PANEL = 16  # output columns per panel: one AVX-512 register of float32
MAX_ROWS = 16  # rows of one product through the panels; more go through torch
# The kernel runs on one core. Against torch's products on one or two threads it wins at every row count
# (bench/bench_panels.py); with more threads torch's may read the memory faster, so they keep them.
MAX_THREADS = 2


def kernels_available() -> bool:
    """Whether the panel kernels run here: built at install, on a CPU with AVX-512F."""
    return _panels is not None and _panels.supported()


def panels_pay_off() -> bool:
    """Whether decoding should use the panels: the kernels run here and torch uses at most MAX_THREADS."""
    return kernels_available() and torch.get_num_threads() <= MAX_THREADS


def pack(weight: torch.Tensor) -> torch.Tensor:
    """(d_out, d_in) float32 -> its panels (ceil(d_out / 16), d_in, 16)."""
    d_out, d_in = weight.shape
    if d_out % PANEL:  # the last panel's missing outputs: zero weights
        weight = torch.cat([weight, weight.new_zeros(PANEL - d_out % PANEL, d_in)])
    return weight.reshape(-1, PANEL, d_in).transpose(1, 2).contiguous()


class PanelLinear(nn.Module):
    """A float32 CPU Linear for decoding: the same y = x Wᵀ, through the panels for 1-16 rows with grad
    off, else through torch (under torch.compile too, which makes its own kernels). Shares the Linear's
    weight and keeps its panels beside it: made by generate.for_decoding, read-only (the panels do not
    follow later changes to the weight)."""

    def __init__(self, linear: Linear):
        super().__init__()
        weight = linear.weight
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"PanelLinear: a float32 CPU weight, not {weight.dtype} on {weight.device}")
        self.d_in, self.d_out = linear.d_in, linear.d_out
        self.weight = weight
        self.panels = pack(weight.detach())

    def to_linear(self) -> Linear:
        """The plain Linear of the same weight (shared), without the panels."""
        linear = Linear(self.d_in, self.d_out, device="meta")  # no weight allocated, none initialized
        linear.weight = self.weight
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.d_in
        if (
            x.dim() == 0
            or x.shape[-1] != self.d_in  # torch's product says what is wrong
            or rows > MAX_ROWS
            or rows == 0
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or x.dtype != torch.float32
            or x.device.type != "cpu"
        ):
            return x @ self.weight.T
        x, panels = x.contiguous(), self.panels  # held for the call, which releases the GIL
        y = x.new_empty(*x.shape[:-1], self.d_out)
        _panels.matmul(x.data_ptr(), panels.data_ptr(), y.data_ptr(), rows, self.d_in, self.d_out)
        return y

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, panels={self.panels.shape[0]}"
