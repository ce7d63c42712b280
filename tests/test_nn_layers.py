"""Linear, Embedding, RMSNorm, the FFNs and RoPE against torch built-ins on the same weights."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference_model import feed_forward, rms_norm, rope

from lmproject.nn import Embedding, Linear, RMSNorm, RotaryEmbedding, SiLUFFN, SwiGLU


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_same_forward_and_grads(module, reference, x):
    """module(x) == reference(params, x) and all gradients (inputs and weights) agree to 1e-5."""
    params = {name: p.detach().clone().requires_grad_(True) for name, p in module.named_parameters()}
    x_ref = x.detach().clone().requires_grad_(x.is_floating_point())
    ours, expected = module(x), reference(params, x_ref)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(ours)
    (ours * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, atol=1e-5, rtol=1e-5)
    if x.is_floating_point():
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


def test_linear_matches_f_linear():
    layer = Linear(16, 24)
    assert layer.weight.shape == (24, 16)
    x = torch.randn(2, 5, 16, requires_grad=True)
    assert_same_forward_and_grads(layer, lambda p, x: F.linear(x, p["weight"]), x)


def test_linear_init_is_truncated_normal_with_fan_variance():
    layer = Linear(300, 500)
    std = math.sqrt(2 / 800)
    assert layer.weight.abs().max() <= 3 * std
    assert layer.weight.std().item() == pytest.approx(std * 0.9866, rel=0.02)  # truncation at ±3σ shrinks σ


def test_embedding_matches_f_embedding_and_init():
    table = Embedding(50, 8)
    assert table.weight.shape == (50, 8)
    assert table.weight.abs().max() <= 3.0
    ids = torch.randint(0, 50, (3, 7))
    assert_same_forward_and_grads(table, lambda p, ids: F.embedding(ids, p["weight"]), ids)


def test_rmsnorm_matches_f_rms_norm():
    norm = RMSNorm(12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 12, requires_grad=True)
    assert_same_forward_and_grads(norm, lambda p, x: rms_norm(x, p["weight"]), x)


def test_rmsnorm_computes_in_float32_and_returns_input_dtype():
    norm = RMSNorm(64)
    x = (torch.randn(2, 64) * 1e3).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = norm(x.float()).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_swiglu_and_silu_ffn_match_reference():
    x = torch.randn(2, 3, 16, requires_grad=True)
    assert_same_forward_and_grads(SwiGLU(16, 40), lambda p, x: feed_forward(x, p, "", "swiglu"), x)
    x = torch.randn(2, 3, 16, requires_grad=True)
    assert_same_forward_and_grads(SiLUFFN(16, 64), lambda p, x: feed_forward(x, p, "", "silu"), x)
    assert set(SiLUFFN(16, 64).state_dict()) == {"w1.weight", "w2.weight"}


def test_rope_matches_complex_reference_with_default_and_given_positions():
    rotary = RotaryEmbedding(theta=10000.0, d_k=16, max_seq_len=64)
    x = torch.randn(2, 3, 10, 16)
    torch.testing.assert_close(rotary(x), rope(x, torch.arange(10), 10000.0), atol=1e-5, rtol=1e-5)
    positions = torch.randint(0, 64, (2, 1, 10))  # per-sequence positions, broadcast over the head axis
    torch.testing.assert_close(rotary(x, positions), rope(x, positions, 10000.0), atol=1e-5, rtol=1e-5)


def test_rope_rotates_adjacent_pairs_and_keeps_norms():
    rotary = RotaryEmbedding(theta=100.0, d_k=4, max_seq_len=8)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]]).repeat(3, 1)
    out = rotary(x, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out[0], x[0])  # position 0 is the identity
    torch.testing.assert_close(out[1, :2], torch.tensor([math.cos(1.0), math.sin(1.0)]))  # pair 0 by 1 rad
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


def test_rope_tables_are_not_in_the_state_dict():
    rotary = RotaryEmbedding(10000.0, 8, 16)
    assert dict(rotary.state_dict()) == {}
    assert {name for name, _ in rotary.named_buffers()} == {"cos", "sin"}
