"""The parameterized building blocks: Linear, Embedding, RMSNorm, the feed-forward nets and RoPE."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmproject.nn.functional import relu_squared, silu


class Linear(nn.Module):
    """y = x Wᵀ, no bias; W is (d_out, d_in), truncated normal with variance 2/(d_in+d_out), cut at ±3σ."""

    def __init__(self, d_in: int, d_out: int, device=None, dtype=None):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        std = math.sqrt(2.0 / (d_in + d_out))
        weight = torch.empty(d_out, d_in, device=device, dtype=dtype)
        self.weight = nn.Parameter(nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


class Embedding(nn.Module):
    """Row lookup in a (num_embeddings, d_model) table, truncated-normal init σ=1 cut at ±3."""

    def __init__(self, num_embeddings: int, d_model: int, device=None, dtype=None):
        super().__init__()
        weight = torch.empty(num_embeddings, d_model, device=device, dtype=dtype)
        self.weight = nn.Parameter(nn.init.trunc_normal_(weight, std=1.0, a=-3.0, b=3.0))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[token_ids]


RMS_NORM_EPS = 1e-5


class RMSNorm(nn.Module):
    """x / rms(x) * gain over the last dim; computed in float32 (stable under bf16) and cast back."""

    def __init__(self, d_model: int, eps: float = RMS_NORM_EPS, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * inv_rms * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """Gated feed-forward net: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(silu(self.w1(x)) * self.w3(x))


class UngatedFFN(nn.Module):
    """Feed-forward w2(activation(w1 x)) with two matrices: d_ff = 4·d_model gives about SwiGLU's parameter
    count and FLOPs. Subclasses set `activation`."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.activation(self.w1(x)))


class SiLUFFN(UngatedFFN):
    """w2(silu(w1 x)), the SwiGLU ablation."""

    activation = staticmethod(silu)


class ReLUSquaredFFN(UngatedFFN):
    """w2(relu(w1 x)²), the ReLU² FFN (So et al., Primer) of the modern recipe."""

    activation = staticmethod(relu_squared)


class RotaryEmbedding(nn.Module):
    """RoPE: rotates each adjacent pair (x0,x1), (x2,x3), … of the last dim by the angle position·θ^(-2k/d_k).

    Rotating the pair (a, b) by φ gives (a·cos φ − b·sin φ, a·sin φ + b·cos φ) = (a, b)·cos φ + (−b, a)·sin φ,
    so the whole vector is x·cos + rot90(x)·sin with each pair's cos/sin repeated twice. The tables for
    positions 0..max_seq_len-1 live in non-persistent buffers (not in the state dict).
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_k={d_k}")
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float32) / d_k)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq
        angles = angles.repeat_interleave(2, dim=-1)  # (max_seq_len, d_k): both members of a pair
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate x (..., seq, d_k) to token_positions (..., seq), which broadcast against x's leading dims;
        the default is 0..seq-1."""
        if token_positions is None:  # positions 0..seq-1: a slice of the tables, no gather
            cos, sin = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
        else:
            cos, sin = self.cos[token_positions], self.sin[token_positions]
        return _Rotate.apply(x, cos.to(x.dtype), sin.to(x.dtype))


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rot90(x)·sin, where rot90 maps each adjacent pair (a, b) to (−b, a)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rot90 = torch.stack((-odd, even), dim=-1).flatten(-2)
    return rot90.mul_(sin).addcmul_(x, cos)  # in place on the fresh rot90: no more temporaries


class _Rotate(torch.autograd.Function):
    """Pairwise rotation whose gradient is the inverse rotation (angle −φ: same cos, negated sin), one
    pass instead of autograd's walk back through the strided slices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return rotate_pairs(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return rotate_pairs(grad, cos, -sin), None, None
