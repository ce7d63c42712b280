"""AdamW against torch.optim.AdamW, its state round-trip, the cosine schedule and gradient clipping."""

import copy
import math

import pytest
import torch
from reference_model import single_thread

from lmproject.training.optim import AdamW, clip_grad_norm, clip_gradients, cosine_lr


def toy_regression():
    """A small noisy linear regression with a fixed seed: (model, inputs, targets)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    inputs = torch.randn(32, 6)
    targets = inputs @ torch.randn(6, 3) + 0.1 * torch.randn(32, 3)
    return model, inputs, targets


def train(model, optimizer, inputs, targets, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


@pytest.mark.slow
def test_adamw_matches_torch_adamw_over_1000_steps():
    model, inputs, targets = toy_regression()
    reference = copy.deepcopy(model)
    settings = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    with single_thread():
        train(model, AdamW(model.parameters(), **settings), inputs, targets, 1000)
        train(reference, torch.optim.AdamW(reference.parameters(), **settings), inputs, targets, 1000)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert (ours - theirs).abs().max().item() < 1e-4
    assert (model.weight - toy_regression()[0].weight).abs().max() > 0.1  # it did train


def test_adamw_first_step_is_lr_times_sign_and_decay_is_decoupled():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, -3.0])
    AdamW([p], lr=0.1, weight_decay=0.5).step()
    # step 1: m/√v = sign(g) (up to ε); then θ ← θ − lr·λ·θ
    expected = (torch.tensor([1.0, -2.0]) - 0.1 * torch.tensor([1.0, -1.0])) * (1 - 0.1 * 0.5)
    torch.testing.assert_close(p.detach(), expected)


def test_adamw_state_dict_round_trip_continues_identically():
    model, inputs, targets = toy_regression()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    train(model, optimizer, inputs, targets, 5)
    resumed = copy.deepcopy(model)
    resumed_optimizer = AdamW(resumed.parameters(), lr=1e-2)
    resumed_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(model, optimizer, inputs, targets, 5)
    train(resumed, resumed_optimizer, inputs, targets, 5)
    for ours, theirs in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    assert resumed_optimizer.state[next(resumed.parameters())]["step"] == 10


def test_adamw_rejects_bad_hyperparameters():
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="lr"):
        AdamW(params, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW(params, betas=(0.9, 1.0))
    for bad in ({"lr": math.nan}, {"eps": math.nan}, {"weight_decay": math.nan}):  # NaN would train silently
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdamW(params, **bad)
    params[0].grad = torch.ones(1)
    with pytest.raises(ValueError, match="max_norm must be > 0"):  # -1 would flip the gradient
        clip_grad_norm(params, -1.0)


def test_cosine_lr_boundaries():
    args = dict(lr_max=1.0, lr_min=0.1, warmup_iters=10, cosine_cycle_iters=110)
    assert cosine_lr(0, **args) == 0.0
    assert cosine_lr(5, **args) == pytest.approx(0.5)
    assert cosine_lr(10, **args) == pytest.approx(1.0)
    assert cosine_lr(60, **args) == pytest.approx(0.55)  # half way: cos(π/2) = 0
    assert cosine_lr(35, **args) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert cosine_lr(110, **args) == pytest.approx(0.1)
    assert cosine_lr(111, **args) == 0.1
    assert cosine_lr(10_000, **args) == 0.1


def test_cosine_lr_without_warmup_starts_at_lr_max():
    assert cosine_lr(0, 3e-4, 3e-5, 0, 100) == pytest.approx(3e-4)


def make_grads(seed):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 5)) for _ in range(3)]
    for p in params[:2]:
        p.grad = torch.randn_like(p) * 3
    return params  # the third one has no gradient


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch_and_skips_params_without_grads(max_norm):
    ours, theirs = make_grads(1), make_grads(1)
    norm = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm == pytest.approx(expected.item(), rel=1e-6)
    for p, q in zip(ours, theirs, strict=True):
        if q.grad is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad)
    clipped = math.sqrt(sum(p.grad.pow(2).sum().item() for p in ours[:2]))
    assert clipped == pytest.approx(min(norm, max_norm), rel=1e-5)


def test_clip_gradients_never_reads_a_value_back_to_the_host():
    # Meta tensors have no values: any Python branch on the norm (or float/item) would raise here, and on a
    # GPU it would stall the training step until the device catches up.
    params = [torch.nn.Parameter(torch.empty(4, 3, device="meta")) for _ in range(2)]
    for p in params:
        p.grad = torch.empty(4, 3, device="meta")
    norm = clip_gradients(params, 1.0)
    assert norm.device.type == "meta" and norm.shape == ()
