"""Attention, blocks and the whole LM against the torch-built-ins reference; switches; training sanity."""

import itertools
import math

import pytest
import torch
from reference_model import attention, leaf_params, reference_lm, single_thread

from lmproject.nn import ModelConfig, MultiHeadSelfAttention, RotaryEmbedding, TransformerLM, cross_entropy
from lmproject.training.optim import AdamW

SMALL = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48)


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    torch.manual_seed(0)
    with single_thread():  # many small models: one thread is faster on the shared CPU
        yield


def randomize_gains(model):
    """Norm gains start at 1; make them random so the test sees whether they are applied."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.uniform_(0.5, 1.5)


def assert_lm_matches_reference(model, token_ids):
    params = leaf_params(model)
    ours = model(token_ids)
    expected = reference_lm(params, token_ids, model.config)
    scale = max(1.0, expected.abs().max().item())  # unnormalized variants reach logits in the hundreds
    torch.testing.assert_close(ours, expected, atol=1e-5 * scale, rtol=1e-5)
    upstream = torch.randn_like(ours)
    (ours * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name, p in model.named_parameters():
        expected_grad = params[name].grad
        scale = expected_grad.abs().max().item()  # gradients of a summed loss are O(100): compare relatively
        assert (p.grad - expected_grad).abs().max().item() <= 1e-5 * scale, name


ATTN_CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=1, num_heads=4, d_ff=48)


@pytest.mark.parametrize("attention_kind", ["fused", "math"])
def test_attention_matches_reference(attention_kind):
    rope = RotaryEmbedding(10000.0, 8, 16)
    attn = MultiHeadSelfAttention(ATTN_CONFIG, rope, attention=attention_kind)
    x = torch.randn(2, 10, 32)
    params = {name: p.detach() for name, p in attn.named_parameters()}
    expected = attention(x, params, "", 4, 10000.0)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    positions = torch.tensor([list(range(3, 13)), list(range(10))])
    expected = attention(x, params, "", 4, 10000.0, positions[:, None])
    torch.testing.assert_close(attn(x, positions), expected, atol=1e-5, rtol=1e-5)


def test_fused_and_math_attention_agree_with_and_without_mask():
    fused = MultiHeadSelfAttention(ATTN_CONFIG, RotaryEmbedding(10000.0, 8, 16), attention="fused")
    math = MultiHeadSelfAttention(ATTN_CONFIG, RotaryEmbedding(10000.0, 8, 16), attention="math")
    math.load_state_dict(fused.state_dict())
    x = torch.randn(3, 12, 32)
    torch.testing.assert_close(fused(x), math(x), atol=1e-5, rtol=1e-5)
    mask = torch.rand(3, 1, 12, 12) > 0.5
    mask |= torch.eye(12, dtype=torch.bool)
    torch.testing.assert_close(fused(x, mask=mask), math(x, mask=mask), atol=1e-5, rtol=1e-5)


SWITCHES = list(
    itertools.product(["pre", "post", "none"], ["rope", "none"], ["swiglu", "silu"], [False, True])
)


@pytest.mark.parametrize("norm,position,ffn,tie", SWITCHES)
def test_lm_matches_reference_for_every_switch(norm, position, ffn, tie):
    switches = dict(norm=norm, position=position, ffn=ffn, tie_embeddings=tie)
    model = TransformerLM(**SMALL, **switches, attention="math")
    randomize_gains(model)
    assert_lm_matches_reference(model, torch.randint(0, 64, (2, 16)))


def test_default_lm_with_fused_attention_matches_reference():
    model = TransformerLM(**SMALL)
    randomize_gains(model)
    assert all(layer.attn.attention == "fused" for layer in model.layers)
    assert_lm_matches_reference(model, torch.randint(0, 64, (3, 11)))


def expected_names(num_layers, norm="pre", ffn="swiglu", tie=False):
    layer = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "ffn.w1", "ffn.w2"]
    layer += ["ffn.w3"] if ffn == "swiglu" else []
    layer += ["ln1", "ln2"] if norm != "none" else []
    names = ["token_embeddings", "lm_head"] + [f"layers.{i}.{n}" for i in range(num_layers) for n in layer]
    names += ["ln_final"] if norm == "pre" else []
    return {name + ".weight" for name in names}


def test_state_dict_with_the_documented_names_loads():
    model = TransformerLM(**SMALL)
    assert set(model.state_dict()) == expected_names(2)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    assert shapes["layers.0.ffn.w1.weight"] == (48, 32)  # Linear weights are (d_out, d_in)
    assert shapes["lm_head.weight"] == (64, 32)
    written = {name: torch.randn(shape) for name, shape in shapes.items()}
    model.load_state_dict(written)
    assert torch.equal(model.layers[1].attn.k_proj.weight, written["layers.1.attn.k_proj.weight"])


def test_the_cs336_keywords_and_a_model_config_build_the_same_model():
    """TransformerLM(vocab_size=..., ..., rope_theta=...), the CS336 signature, is
    TransformerLM(ModelConfig(...)): the same config, and from one seed the same weights and names."""
    torch.manual_seed(0)
    by_keywords = TransformerLM(
        vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48, rope_theta=10000.0
    )
    torch.manual_seed(0)
    by_config = TransformerLM(ModelConfig(**SMALL))
    assert by_keywords.config == by_config.config == ModelConfig(**SMALL) and by_config.config.d_head == 8
    assert by_keywords.state_dict().keys() == by_config.state_dict().keys()
    assert all(torch.equal(by_keywords.state_dict()[k], t) for k, t in by_config.state_dict().items())
    with pytest.raises(TypeError, match="not both"):
        TransformerLM(ModelConfig(**SMALL), d_model=64)
    with pytest.raises(TypeError, match="unexpected keyword argument 'width'"):
        TransformerLM(**SMALL, width=64)


STRUCTURES = [("post", "swiglu", False), ("none", "silu", False), ("pre", "silu", True)]


@pytest.mark.parametrize("norm,ffn,tie", STRUCTURES)
def test_switches_change_the_structure_as_documented(norm, ffn, tie):
    model = TransformerLM(**SMALL, norm=norm, ffn=ffn, tie_embeddings=tie)
    assert set(model.state_dict()) == expected_names(2, norm, ffn, tie)
    assert (model.lm_head.weight is model.token_embeddings.weight) == tie
    untied = sum(p.numel() for p in TransformerLM(**SMALL, norm=norm, ffn=ffn).parameters())
    assert sum(p.numel() for p in model.parameters()) == untied - (64 * 32 if tie else 0)


def test_tied_embeddings_start_at_a_loss_near_ln_vocab_and_untied_keep_the_cs336_inits():
    vocab, d_model = 512, 64
    shape = dict(vocab_size=vocab, context_length=32, d_model=d_model, num_layers=2, num_heads=4, d_ff=128)
    torch.manual_seed(0)
    x, y = torch.randint(0, vocab, (8, 32)), torch.randint(0, vocab, (8, 32))
    for tie in (False, True):
        model = TransformerLM(**shape, tie_embeddings=tie)
        with torch.no_grad():
            assert abs(cross_entropy(model(x), y).item() - math.log(vocab)) < 0.3, tie
    head_std = math.sqrt(2 / (vocab + d_model))
    assert model.token_embeddings.weight.std().item() == pytest.approx(head_std, rel=0.05)  # tied: head's
    untied = TransformerLM(**shape)
    assert untied.token_embeddings.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert untied.lm_head.weight.std().item() == pytest.approx(head_std, rel=0.05)


def test_nope_model_has_no_rotary_embedding():
    model = TransformerLM(**SMALL, position="none")
    assert all(layer.attn.rope is None for layer in model.layers)
    assert TransformerLM(**SMALL).layers[0].attn.rope is not None


def test_lm_is_causal():
    model = TransformerLM(**SMALL)
    ids = torch.randint(0, 64, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 64
    torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="norm"):
        TransformerLM(**SMALL, norm="sandwich")
    with pytest.raises(ValueError, match="num_heads"):
        TransformerLM(**{**SMALL, "num_heads": 5})
    with pytest.raises(ValueError, match="context_length"):
        TransformerLM(**SMALL)(torch.zeros(1, 17, dtype=torch.long))


def test_tiny_lm_overfits_one_batch_with_adamw():
    model = TransformerLM(**SMALL)
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batch = torch.randint(0, 64, (4, 17))
    for _ in range(40):
        loss = cross_entropy(model(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_bf16_autocast_forward_and_backward_close_to_float32():
    model = TransformerLM(**SMALL)
    batch = torch.randint(0, 64, (4, 17))
    loss32 = cross_entropy(model(batch[:, :-1]), batch[:, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch[:, :-1])
        loss16 = cross_entropy(logits, batch[:, 1:])
    assert logits.dtype == torch.bfloat16
    loss16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.02)


@pytest.mark.parametrize(("bad", "shown"), [(-1, -1), (64, 64)])
def test_token_ids_outside_the_vocabulary_are_a_value_error(bad, shown):
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(ValueError, match=f"token id {shown} is outside the vocabulary 0..63"):
        TransformerLM(**SMALL)(ids)
    with pytest.raises(ValueError, match="token_ids must be integers"):
        TransformerLM(**SMALL)(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"token_ids must be \(batch, seq\), got shape \(3,\)"):
        TransformerLM(**SMALL)(torch.tensor([1, 2, 3]))


def gradients(model, token_ids, targets, chunk_tokens=None):
    model.zero_grad()
    loss = model.loss(token_ids, targets, chunk_tokens)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(("norm", "tie"), [("pre", False), ("post", True)])
def test_activation_checkpointing_gives_the_same_losses_and_gradients_over_training_steps(norm, tie):
    plain = TransformerLM(**SMALL, norm=norm, tie_embeddings=tie)
    recomputed = TransformerLM(**SMALL, norm=norm, tie_embeddings=tie, activation_checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    optimizers = [AdamW(m.parameters(), lr=1e-2) for m in (plain, recomputed)]
    for _ in range(3):
        token_ids, targets = torch.randint(0, 64, (2, 4, 16))
        (loss, grads), (loss_ac, grads_ac) = (gradients(m, token_ids, targets) for m in (plain, recomputed))
        torch.testing.assert_close(loss_ac, loss, atol=1e-6, rtol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grads_ac[name], grad, atol=1e-6, rtol=1e-5, msg=name)
        for optimizer in optimizers:
            optimizer.step()


def test_activation_checkpointing_recomputes_each_block_in_backward():
    model = TransformerLM(**SMALL, activation_checkpointing=True)
    calls = []
    for layer in model.layers:  # (forward hooks do not fire when checkpoint recomputes)
        layer.ffn.forward = lambda x, forward=layer.ffn.forward: calls.append(1) or forward(x)
    model.loss(*torch.randint(0, 64, (2, 3, 16))).backward()
    assert len(calls) == 2 * SMALL["num_layers"]  # forward, then again in backward
    calls.clear()
    with torch.no_grad():
        model(torch.randint(0, 64, (3, 16)))
    assert len(calls) == SMALL["num_layers"]  # nothing to recompute without gradients


def test_chunked_loss_gives_the_plain_loss_and_gradients():
    model = TransformerLM(**SMALL, tie_embeddings=True)
    token_ids, targets = torch.randint(0, 64, (2, 3, 16))
    loss, grads = gradients(model, token_ids, targets)
    torch.testing.assert_close(loss, cross_entropy(model(token_ids), targets))
    chunked_loss, chunked_grads = gradients(model, token_ids, targets, chunk_tokens=10)
    torch.testing.assert_close(chunked_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
