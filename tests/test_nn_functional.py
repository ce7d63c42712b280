"""softmax, silu, attention and cross-entropy against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

from lmproject.nn import (
    cross_entropy,
    linear_cross_entropy,
    scaled_dot_product_attention,
    silu,
    softmax,
    token_losses,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dim):
    x = torch.randn(4, 5, 6)
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim), atol=1e-6, rtol=1e-5)


def test_softmax_is_stable_for_large_inputs():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [100.0, 200.0, 300.0]])
    out = softmax(x, dim=-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(x, dim=-1))
    torch.testing.assert_close(softmax(x + 1000.0, -1), out)


def test_silu_matches_torch_with_gradient():
    x = torch.randn(3, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    silu(x).sum().backward()
    F.silu(x_ref).sum().backward()
    torch.testing.assert_close(silu(x), F.silu(x_ref))
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("leading", [(5,), (2, 3), (2, 2, 2)])
def test_attention_matches_torch_with_mask_and_leading_dims(leading):
    q, k, v = torch.randn(*leading, 4, 8), torch.randn(*leading, 6, 8), torch.randn(*leading, 6, 3)
    mask = torch.rand(*leading, 4, 6) > 0.3
    mask[..., 0] = True  # every query may attend somewhere
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)
    unmasked = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), unmasked, atol=1e-6, rtol=1e-5)


def test_attention_masked_keys_get_zero_weight():
    q, k = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    v = torch.tensor([[[1.0], [2.0], [1e6]]])
    mask = torch.tensor([[True, True, False]])
    out = scaled_dot_product_attention(q, k, v, mask)
    assert (out >= 1.0).all() and (out <= 2.0).all()


@pytest.mark.parametrize("shape", [(7, 11), (2, 5, 11), (2, 3, 4, 11)])
def test_cross_entropy_matches_torch_over_any_leading_dims(shape):
    logits = torch.randn(*shape, requires_grad=True)
    targets = torch.randint(0, shape[-1], shape[:-1])
    logits_ref = logits.detach().clone().requires_grad_(True)
    ours = cross_entropy(logits, targets)
    expected = F.cross_entropy(logits_ref.reshape(-1, shape[-1]), targets.reshape(-1))
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(logits.grad, logits_ref.grad)


def test_token_losses_are_torchs_unreduced_cross_entropy_and_average_to_ours():
    logits, targets = torch.randn(2, 5, 11).bfloat16(), torch.randint(0, 11, (2, 5))
    losses = token_losses(logits, targets)
    assert losses.shape == (2, 5) and losses.dtype == torch.float32
    expected = F.cross_entropy(logits.float().reshape(-1, 11), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(losses, expected.reshape(2, 5))
    torch.testing.assert_close(losses.mean(), cross_entropy(logits, targets))


def test_cross_entropy_is_stable_for_large_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]])
    targets = torch.tensor([0, 2])
    loss = cross_entropy(logits, targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))


@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 1000])
def test_linear_cross_entropy_matches_torch_values_and_gradients(chunk_tokens):
    hidden = torch.randn(2, 8, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 12, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (2, 8))
    expected = F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten())
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens)
    grads = torch.autograd.grad(2.5 * loss, (hidden, weight))  # an upstream gradient other than 1
    torch.testing.assert_close(loss, expected.float())
    for grad, reference in zip(grads, expected_grads, strict=True):
        assert grad.dtype == torch.float64
        torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-5)


def test_linear_cross_entropy_under_bf16_autocast_matches_plain_path():
    """Under autocast the fused head gives what lm_head + cross_entropy give: bf16 matmuls, float32 loss."""
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = cross_entropy(hidden @ weight.T, targets)
        loss = linear_cross_entropy(hidden, weight, targets, 24)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=1e-3, rtol=1e-3)
    for grad, reference in zip(grads, expected_grads, strict=True):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, reference, atol=2e-3, rtol=2e-2)


def test_linear_cross_entropy_is_stable_for_large_logits():
    hidden = torch.full((3, 4), 100.0, requires_grad=True)
    weight = torch.randn(5, 4) * 10
    loss = linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2]), 2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(hidden.grad).all()
    torch.testing.assert_close(loss, F.cross_entropy(hidden.detach() @ weight.T, torch.tensor([0, 1, 2])))
