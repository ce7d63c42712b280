"""The modern-recipe switches (Muon, QK-norm, ReLU² FFN, zero-init, logit soft-cap, WSD) and overlays."""

import functools
import logging
import math
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from shipped_configs import build

from lmproject.errors import UserError
from lmproject.interop.hf_llama import check_llama_expressible
from lmproject.lit.module import LanguageModel
from lmproject.nn import ModelConfig, TransformerLM
from lmproject.training.muon import Muon, muon_param_groups, orthogonalize
from lmproject.training.optim import AdamW, wsd_lr

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)
ARCH = ModelConfig(**SMALL)
RECIPES = Path(__file__).resolve().parent.parent / "configs" / "recipes"
CS336_NAMES = {"ln1.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
               "attn.output_proj.weight", "ln2.weight", "ffn.w1.weight", "ffn.w2.weight",
               "ffn.w3.weight"}  # fmt: skip


def layer_names(model: TransformerLM) -> set[str]:
    return {k.removeprefix("layers.0.") for k in model.state_dict() if k.startswith("layers.0.")}


def settings(module: LanguageModel) -> dict:
    """Every setting of a LanguageModel, the architecture's fields among the others."""
    return {**asdict(module.model.config), **{k: v for k, v in module.hparams.items() if k != "arch"}}


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (48, 48)])
def test_newton_schulz_gives_singular_values_near_one_with_the_same_singular_vectors(shape):
    torch.manual_seed(0)
    u, _, vt = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
    spectrum = torch.logspace(0, -2, min(shape))  # condition number 100, like a real gradient's
    matrix = u @ torch.diag(spectrum) @ vt
    result = orthogonalize(matrix)
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.6 and singular.max() < 1.25
    in_basis = u.T @ result @ vt.T  # diagonal iff result shares matrix's singular vectors
    assert (in_basis - torch.diag(in_basis.diagonal())).abs().max() < 1e-4
    assert orthogonalize(matrix * 1000).allclose(result, atol=1e-4)  # the step size ignores the scale


def test_muon_groups_are_built_by_name_hidden_matrices_against_the_rest():
    muon, rest = muon_param_groups(TransformerLM(**SMALL, tie_embeddings=True, qk_norm=True))
    assert (muon["muon"], rest["muon"]) == (True, False)
    assert {n.removeprefix("layers.1.") for n in muon["names"] if n.startswith("layers.1.")} == {
        "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.output_proj.weight",
        "ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight",
    }  # fmt: skip
    assert len(muon["names"]) == 2 * 7
    assert {n for n in rest["names"] if not n.startswith("layers.")} == {
        "token_embeddings.weight",
        "ln_final.weight",
    }
    assert all(
        n.split(".")[-2] in ("ln1", "ln2", "q_norm", "k_norm")
        for n in rest["names"]
        if n.startswith("layers.")
    )


def test_muon_steps_matrices_along_the_orthogonalized_momentum_and_the_rest_like_adamw():
    torch.manual_seed(0)
    # Two matrices of one shape (orthogonalized in one batch) and one of another.
    matrices = [torch.nn.Parameter(torch.randn(*shape)) for shape in ((8, 32), (8, 32), (32, 8))]
    vector = torch.nn.Parameter(torch.randn(32))
    twin = torch.nn.Parameter(vector.detach().clone())
    groups = [{"muon": True, "params": matrices}, {"params": [vector]}]
    muon, adamw = (
        Muon(groups, lr=0.1, weight_decay=0.5, momentum=0.9),
        AdamW([twin], lr=0.1, betas=(0.9, 0.95), weight_decay=0.5),
    )
    momenta = [torch.zeros_like(m) for m in matrices]
    for _ in range(3):
        befores = [m.detach().clone() for m in matrices]
        gradients = [torch.randn_like(m) for m in matrices]
        for m, gradient in zip(matrices, gradients, strict=True):
            m.grad = gradient
        vector.grad = torch.randn(32)
        twin.grad = vector.grad.clone()
        muon.step()
        adamw.step()
        for i, (matrix, before, gradient) in enumerate(zip(matrices, befores, gradients, strict=True)):
            momenta[i] = 0.9 * momenta[i] + gradient
            nesterov = gradient + 0.9 * momenta[i]
            expected = before * (1 - 0.1 * 0.5) - 0.1 * 0.2 * math.sqrt(32) * orthogonalize(nesterov)
            assert torch.allclose(matrix, expected, atol=1e-6)
            step_rms = (expected - before * (1 - 0.1 * 0.5)).pow(2).mean().sqrt() / 0.1
            assert 0.1 < step_rms < 0.3  # about AdamW's step size: the two kinds share one lr
        assert torch.equal(vector, twin)


def test_muon_refuses_a_group_that_is_not_matrices():
    optimizer = Muon([{"muon": True, "params": [torch.nn.Parameter(torch.ones(3))]}])
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    with pytest.raises(ValueError, match="2-D matrices only"):
        optimizer.step()


def test_the_module_logs_the_split_and_schedules_both_groups(caplog):
    module = LanguageModel(
        ARCH, optimizer="muon", warmup_iters=10, cosine_cycle_iters=100, lr_max=1e-2, lr_min=1e-3
    )
    with caplog.at_level(logging.INFO):
        setup = module.configure_optimizers()
    assert "Muon  14 tensors" in caplog.text and "AdamW" in caplog.text and "token_embeddings" in caplog.text
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, Muon) and [g["muon"] for g in optimizer.param_groups] == [True, False]
    for _ in range(100):
        schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3])
    plain = LanguageModel(ARCH, cosine_cycle_iters=100).configure_optimizers()["optimizer"]
    assert type(plain) is AdamW and len(plain.param_groups) == 1


def test_switches_off_keep_the_cs336_model_and_state_dict_names():
    torch.manual_seed(0)
    default = TransformerLM(**SMALL)
    torch.manual_seed(0)
    explicit = TransformerLM(**SMALL, qk_norm=False, zero_init=False, logit_softcap=None)
    assert layer_names(default) == CS336_NAMES
    assert all(
        torch.equal(a, b)
        for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True)
    )


def test_qk_norm_adds_per_head_gains_and_makes_attention_blind_to_the_scale_of_q_and_k():
    torch.manual_seed(0)
    model = TransformerLM(**SMALL, qk_norm=True)
    assert layer_names(model) == CS336_NAMES | {"attn.q_norm.weight", "attn.k_norm.weight"}
    assert model.state_dict()["layers.0.attn.q_norm.weight"].shape == (
        SMALL["d_model"] // SMALL["num_heads"],
    )
    tokens = torch.randint(0, 50, (2, 16))
    before = model(tokens)
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.q_proj.weight.mul_(5.0)
            layer.attn.k_proj.weight.mul_(0.5)
    assert torch.allclose(model(tokens), before, atol=1e-3)  # without qk_norm the logits would change


def test_qk_norm_normalizes_before_rope_and_still_matches_under_the_kv_cache():
    torch.manual_seed(0)
    model = TransformerLM(**SMALL, qk_norm=True).eval()
    attn = model.layers[0].attn
    x = torch.randn(2, 16, SMALL["d_model"])
    heads = lambda t: t.view(2, 16, 4, 8).transpose(1, 2)  # noqa: E731
    rms = lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5)  # noqa: E731
    q, k = attn.rope(rms(heads(attn.q_proj(x)))), attn.rope(rms(heads(attn.k_proj(x))))
    out = F.scaled_dot_product_attention(q, k, heads(attn.v_proj(x)), is_causal=True)
    assert torch.allclose(attn(x), attn.output_proj(out.transpose(1, 2).reshape(2, 16, -1)), atol=1e-5)


def test_relu2_ffn_is_w2_relu_w1x_squared_with_two_matrices():
    torch.manual_seed(0)
    model = TransformerLM(**{**SMALL, "d_ff": 128}, ffn="relu2")
    assert layer_names(model) == CS336_NAMES - {"ffn.w3.weight"}
    ffn, x = model.layers[0].ffn, torch.randn(3, SMALL["d_model"])
    assert torch.allclose(ffn(x), F.relu(x @ ffn.w1.weight.T).square() @ ffn.w2.weight.T, atol=1e-5)


def test_zero_init_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = TransformerLM(**SMALL, zero_init=True)
    for layer in model.layers:
        assert not layer.attn.output_proj.weight.any() and not layer.ffn.w2.weight.any()
        assert layer.attn.q_proj.weight.any() and layer.ffn.w1.weight.any()  # the rest keeps its init
    tokens = torch.randint(0, 50, (2, 16))
    assert torch.equal(model(tokens), model.lm_head(model.ln_final(model.token_embeddings(tokens))))


def test_logit_softcap_is_cap_tanh_of_the_plain_logits():
    torch.manual_seed(0)
    plain = TransformerLM(**SMALL)
    capped = TransformerLM(**SMALL, logit_softcap=2.0)
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.lm_head.weight.mul_(50.0)
        capped.lm_head.weight.mul_(50.0)
    tokens = torch.randint(0, 50, (2, 16))
    logits = capped(tokens)
    assert plain(tokens).abs().max() > 2.0 and logits.abs().max() <= 2.0
    assert torch.allclose(logits, 2.0 * torch.tanh(plain(tokens) / 2.0), atol=1e-5)
    assert torch.allclose(capped.next_token_logits(tokens), logits[:, -1], atol=1e-5)  # generation too
    with pytest.raises(ValueError, match="logit_softcap=0.0: must be null or a number > 0"):
        TransformerLM(**SMALL, logit_softcap=0.0)
    with pytest.raises(ValueError, match="the chunked loss has no soft-cap"):
        LanguageModel(ModelConfig(**SMALL, logit_softcap=15.0), loss_chunk_tokens=64)
    with pytest.raises(ValueError, match="no logit soft-cap"):
        capped.loss(tokens, tokens, chunk_tokens=8)
    assert torch.allclose(
        capped.loss(tokens, tokens), F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    )


def test_wsd_schedule_warms_up_holds_then_decays_linearly():
    lr = lambda t: wsd_lr(t, lr_max=1.0, lr_min=0.1, warmup_iters=10, total_iters=110, decay_iters=20)  # noqa: E731
    assert [lr(t) for t in (0, 5, 10, 50, 90)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])
    assert [lr(t) for t in (100, 110, 200)] == pytest.approx([0.55, 0.1, 0.1])


def test_the_module_schedules_wsd_over_the_run_when_asked():
    module = LanguageModel(ARCH, schedule="wsd", wsd_decay_fraction=0.25, warmup_iters=10,
                           cosine_cycle_iters=100, lr_max=1.0, lr_min=0.1)  # fmt: skip
    setup = module.configure_optimizers()
    schedule, rates = setup["lr_scheduler"]["scheduler"], {}
    for step in range(101):
        rates[step] = schedule.get_last_lr()[0]
        schedule.step()
    assert [rates[t] for t in (5, 10, 75, 80, 100)] == pytest.approx([0.5, 1.0, 1.0, 0.82, 0.1])


SWITCHES = {
    "muon": {"optimizer": "muon"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"ffn": "relu2", "d_ff": 2048},
    "zero_init": {"zero_init": True},
    "softcap": {"logit_softcap": 15.0},
    "wsd": {"schedule": "wsd"},
}


@functools.cache
def tinystories_settings() -> dict:
    return settings(build("tinystories.yaml").model)


@pytest.mark.parametrize("recipe", sorted(SWITCHES))
@pytest.mark.slow
def test_each_recipe_overlay_turns_on_its_switch_and_nothing_else(recipe):
    base = tinystories_settings()
    switched = settings(build("tinystories.yaml", f"recipes/{recipe}.yaml").model)
    changed = {k: switched[k] for k in switched if switched[k] != base[k]}
    assert changed == SWITCHES[recipe]


def test_recipe_overlays_compose_with_ablations_and_sweeps():
    built = build("smoke.yaml", "recipes/modern.yaml", "ablations/post_norm.yaml", "sweeps/lr/lr_1e-2.yaml")
    hp = settings(built.model)
    expected = {"optimizer": "muon", "qk_norm": True, "ffn": "relu2", "zero_init": True,
                "logit_softcap": 15.0, "schedule": "wsd", "norm": "post", "lr_max": 1e-2,
                "lr_min": 1e-3}  # fmt: skip
    assert {k: hp[k] for k in expected} == expected
    assert all(f"{name}.yaml" in {p.name for p in RECIPES.iterdir()} for name in SWITCHES)


def test_bad_recipe_settings_are_refused_by_name():
    for setting, message in [({"optimizer": "sgd"}, "model.optimizer='sgd': must be one of adamw, muon"),
                             ({"schedule": "linear"}, "must be one of cosine, wsd"),
                             ({"wsd_decay_fraction": 0.0}, "must be a number in (0, 1]"),
                             ({"muon_momentum": 1.0}, "must be a number in [0, 1)")]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            LanguageModel(ARCH, **setting)


def test_export_refuses_the_switches_llama_cannot_express_and_takes_the_others():
    for switch, value in [("qk_norm", True), ("logit_softcap", 15.0), ("ffn", "relu2")]:
        with pytest.raises(UserError, match=f"model.arch.{switch}={value!r} cannot be exported"):
            check_llama_expressible(ModelConfig(**SMALL, **{switch: value}))
    check_llama_expressible(ARCH)  # zero_init, muon and wsd are not the architecture: Llama takes them


def test_muon_under_fsdp_knows_each_matrix_whole_shape():
    module = LanguageModel(ARCH, optimizer="muon", cosine_cycle_iters=100)
    module._trainer = type("Trainer", (), {"strategy": type("FSDPStrategy", (), {})()})()
    optimizer = module.configure_optimizers()["optimizer"]  # FSDP's flat pieces: tests/test_muon.py
    assert isinstance(optimizer, Muon) and optimizer.split is None  # one process: nothing to share
    assert {p: p.shape for p in module.model.parameters()} == optimizer.whole_shapes
