"""An independent Transformer LM built only from torch built-ins, for equivalence tests and benchmarks.

It reads weights by their state-dict names (as lmproject.nn.TransformerLM writes them), so tests and
benches run it on exactly the same random weights as the project's model. RoPE is written with complex
multiplication, attention is torch's fused kernel, norms are F.rms_norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lmproject.nn import ModelConfig
from lmproject.training.muon import NEWTON_SCHULZ


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate adjacent pairs of x (..., seq, d) as complex numbers by e^{i·pos·θ^(-2k/d)}."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    rotation = torch.polar(torch.ones_like(angles), angles)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps=1e-5).to(x.dtype)


def feed_forward(x: torch.Tensor, params: dict, prefix: str, ffn: str) -> torch.Tensor:
    hidden = F.silu(F.linear(x, params[prefix + "w1.weight"]))
    if ffn == "swiglu":
        hidden = hidden * F.linear(x, params[prefix + "w3.weight"])
    return F.linear(hidden, params[prefix + "w2.weight"])


def attention(
    x: torch.Tensor, params: dict, prefix: str, num_heads: int, theta: float | None, positions=None
) -> torch.Tensor:
    """Causal multi-head self-attention; RoPE on q and k when theta is given."""
    batch, seq, d_model = x.shape

    def heads(name: str) -> torch.Tensor:
        projected = F.linear(x, params[prefix + name + ".weight"])
        return projected.reshape(batch, seq, num_heads, d_model // num_heads).permute(0, 2, 1, 3)

    q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
    if theta is not None:
        if positions is None:
            positions = torch.arange(seq, device=x.device)
        q, k = rope(q, positions, theta), rope(k, positions, theta)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    merged = out.permute(0, 2, 1, 3).reshape(batch, seq, d_model)
    return F.linear(merged, params[prefix + "output_proj.weight"])


def block(x: torch.Tensor, params: dict, i: int, config: ModelConfig) -> torch.Tensor:
    prefix = f"layers.{i}."
    theta = config.rope_theta if config.position == "rope" else None

    def attn(h: torch.Tensor) -> torch.Tensor:
        return attention(h, params, prefix + "attn.", config.num_heads, theta)

    def ffn(h: torch.Tensor) -> torch.Tensor:
        return feed_forward(h, params, prefix + "ffn.", config.ffn)

    if config.norm == "pre":
        x = x + attn(rms_norm(x, params[prefix + "ln1.weight"]))
        return x + ffn(rms_norm(x, params[prefix + "ln2.weight"]))
    if config.norm == "post":
        x = rms_norm(x + attn(x), params[prefix + "ln1.weight"])
        return rms_norm(x + ffn(x), params[prefix + "ln2.weight"])
    x = x + attn(x)
    return x + ffn(x)


def reference_lm(params: dict, token_ids: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Logits (batch, seq, vocab) of the LM of architecture `config` whose weights are `params` (state-dict
    names). It reads num_layers, num_heads, rope_theta, norm, position and ffn (swiglu or silu)."""
    x = F.embedding(token_ids, params["token_embeddings.weight"])
    for i in range(config.num_layers):
        x = block(x, params, i, config)
    if config.norm == "pre":
        x = rms_norm(x, params["ln_final.weight"])
    return F.linear(x, params["lm_head.weight"])


def leaf_params(model) -> dict:
    """A detached copy of the model's weights that requires grad (tied weights stay one tensor)."""
    copies: dict = {}
    params = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in copies:
            copies[id(tensor)] = tensor.detach().clone().requires_grad_(True)
        params[name] = copies[id(tensor)]
    return params


def top_p_by_full_sort(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter by ranking the whole vocabulary: keep a token while the mass ranked above it is below
    p, then renormalize."""
    ranked, order = probs.sort(dim=-1, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ranked.cumsum(-1) - ranked < p)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny-tensor training loops on one thread: on a shared 2-core CPU that is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def greedy_recompute(model, prompt: list[int], max_new_tokens: int, window_slide: int = 1) -> list[int]:
    """Greedy decoding of one prompt without a cache: every step runs the model on the whole window, the
    baseline the KV-cached generator must reproduce. The window holds the sequence's last tokens: at most
    context_length of them, and once longer it jumps forward so that it keeps the last
    context_length - window_slide + 1 (window_slide=1: always the last context_length tokens)."""
    ids = list(prompt)
    context_length = model.config.context_length
    start = max(0, len(ids) - context_length)
    device = next(model.parameters()).device
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if len(ids) - start > context_length:
                start = len(ids) - (context_length - window_slide + 1)
            window = torch.tensor(ids[start:], device=device)[None]
            ids.append(int(model(window)[0, -1].argmax()))
    return ids[len(prompt) :]


def reference_orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton–Schulz of one matrix, as Muon ran it matrix by matrix before it batched them (float32): the
    reference of tests/test_muon.py and bench/bench_muon.py."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.float()
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT
