"""Decoding's panel products (lmproject/nn/panel_linear.py, nn/_panels.c) give x Wᵀ, and generation through
them gives the tokens of torch's products."""

from __future__ import annotations

import os

import pytest
import torch
from reference_model import single_thread
from test_generate import greedy, small_model

from lmproject import generate as generate_module
from lmproject.generate import for_decoding, generate
from lmproject.nn import Linear
from lmproject.nn import panel_linear as panel_module
from lmproject.nn.panel_linear import MAX_ROWS, MAX_THREADS, PANEL, PanelLinear, kernels_available, pack
from lmproject.precision import cpu_supports_bf16

needs_kernels = pytest.mark.skipif(
    not kernels_available(), reason="the panel kernels need AVX-512F and a C compiler at install"
)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():  # where decoding uses the panels (at most MAX_THREADS)
        yield


@pytest.mark.skipif(not os.environ.get("LMPROJECT_REQUIRE_COMPILED"), reason="build not required here")
def test_the_install_built_the_panel_kernels():
    """CI sets LMPROJECT_REQUIRE_COMPILED: there a failed build is an error, not a silent slowdown."""
    assert panel_module._panels is not None


def test_panels_hold_each_outputs_weights_side_by_side():
    weight = torch.randn(37, 5)  # 37 outputs: two full panels and one of 5, padded with zeros
    panels = pack(weight)
    assert panels.shape == (3, 5, PANEL) and panels.is_contiguous()
    for out in range(37):
        assert torch.equal(panels[out // PANEL, :, out % PANEL], weight[out])
    assert not panels[2, :, 5:].any()


@needs_kernels
@pytest.mark.parametrize("d_in,d_out", [(64, 48), (13, 37), (512, 1344), (1, 1)])
def test_every_row_count_gives_x_times_w_transposed(d_in, d_out):
    torch.manual_seed(0)
    linear = PanelLinear(Linear(d_in, d_out))
    with torch.no_grad():
        for rows in range(1, MAX_ROWS + 1):
            x = torch.randn(rows, d_in)
            exact = (x.double() @ linear.weight.double().T).float()
            torch.testing.assert_close(linear(x), exact, rtol=1e-5, atol=1e-5 * d_in**0.5)


@needs_kernels
def test_leading_dims_and_strided_inputs_keep_their_shape():
    linear = PanelLinear(Linear(24, 40))
    x = torch.randn(3, 8, 24)[:, ::2]  # (3, 4, 24): 12 rows, not contiguous
    with torch.no_grad():
        torch.testing.assert_close(linear(x), x @ linear.weight.T)
        assert linear(x).shape == (3, 4, 40)


@needs_kernels
def test_an_input_of_the_wrong_width_gets_torchs_error_not_a_product():
    linear = PanelLinear(Linear(8, 20))
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be multiplied"):
        linear(torch.randn(1, 32))  # 32 floats: as many as 4 rows of 8


def test_only_float32_cpu_weights_are_packed():
    with pytest.raises(ValueError, match="float32 CPU weight, not torch.bfloat16"):
        PanelLinear(Linear(8, 20, dtype=torch.bfloat16))


def test_more_rows_or_gradients_go_through_torch():
    linear = PanelLinear(Linear(16, 32))
    x = torch.randn(MAX_ROWS + 1, 16)
    with torch.no_grad():
        assert torch.equal(linear(x), x @ linear.weight.T)
    y = linear(x[:2])  # grad on: torch's product, which autograd follows
    y.sum().backward()
    assert linear.weight.grad is not None


@needs_kernels
def test_the_decoding_copy_uses_panels_and_samples_the_tokens_of_torchs_products(monkeypatch):
    model = small_model()
    decoding = for_decoding(model)
    linears = [m for m in decoding.modules() if isinstance(m, (Linear, PanelLinear))]
    assert linears and all(isinstance(m, PanelLinear) for m in linears)
    assert all(isinstance(m, Linear) for m in model.modules() if isinstance(m, (Linear, PanelLinear)))
    assert decoding.layers[0].ffn.w1.weight is not model.layers[0].ffn.w1.weight  # a copy's parameters
    assert torch.equal(decoding.layers[0].ffn.w1.weight, model.layers[0].ffn.w1.weight)
    assert for_decoding(decoding) is decoding
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]
    with_panels = generate(model, prompts, greedy(30, window_slide=3))
    monkeypatch.setattr(generate_module, "panels_pay_off", lambda: False)
    assert isinstance(for_decoding(model).layers[0].ffn.w1, Linear)
    torch_products = generate(model, prompts, greedy(30, window_slide=3))
    assert with_panels == torch_products


@needs_kernels
def test_a_paneled_copy_converts_without_stale_panels():
    """for_decoding of a decoding copy: plain Linears for the compiled step (panels=False) and for bf16,
    panels made again from the converted weights when it goes back to float32."""
    paneled = for_decoding(small_model())
    plain = for_decoding(paneled, panels=False)
    assert not any(isinstance(m, PanelLinear) for m in plain.modules())
    assert plain.layers[0].ffn.w1.weight.t().is_contiguous()  # the column-major layout of torch's path
    if cpu_supports_bf16():
        halved = for_decoding(paneled, torch.bfloat16)
        assert not any(isinstance(m, PanelLinear) for m in halved.modules())
        again = for_decoding(halved, torch.float32)
        w1 = again.layers[0].ffn.w1
        assert torch.equal(w1.panels, pack(w1.weight))  # the rounded weights, not the old panels
        assert not torch.equal(w1.weight, paneled.layers[0].ffn.w1.weight)


@needs_kernels
def test_torch_on_more_threads_keeps_its_own_products():
    model = small_model()
    with single_thread():
        torch.set_num_threads(MAX_THREADS + 1)
        assert not any(isinstance(m, PanelLinear) for m in for_decoding(model).modules())
