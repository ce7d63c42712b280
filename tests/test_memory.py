"""The predicted peak training memory (lmproject.memory) against peaks measured on CPU, and its report."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lmproject.accounting import parameter_counts
from lmproject.lit.accounting_cli import main
from lmproject.memory import layer_activation_bytes, measure_in_subprocess, training_memory
from lmproject.nn import ModelConfig, TransformerLM

WIDE = ModelConfig(vocab_size=8000, context_length=64, d_model=256, num_layers=2, num_heads=8, d_ff=688)
DEEP = ModelConfig(vocab_size=6000, context_length=128, d_model=192, num_layers=3, num_heads=6, d_ff=512)
CASES = [  # architecture, batch, precision, activation checkpointing, loss chunk tokens: peaks of 120-200 MB
    (WIDE, 16, "32-true", False, None),
    (WIDE, 16, "bf16-mixed", True, None),
    (DEEP, 8, "bf16-mixed", False, 256),
]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures through Linux's /proc")
@pytest.mark.slow
def test_predicted_peaks_are_within_15_percent_of_measured_ones():
    with ThreadPoolExecutor(len(CASES)) as pool:  # each measurement is its own process: they can overlap
        measured = list(pool.map(lambda case: measure_in_subprocess(*case)["peak_bytes"], CASES))
    ratios = [training_memory(*case)["peak"] / peak for case, peak in zip(CASES, measured, strict=True)]
    assert all(0.85 <= ratio <= 1.15 for ratio in ratios), list(zip(CASES, measured, ratios, strict=True))


def test_checkpointing_and_the_chunked_loss_lower_the_prediction_and_batch_raises_it():
    plain = training_memory(WIDE, 16, "bf16-mixed")["peak"]
    assert training_memory(WIDE, 16, "bf16-mixed", activation_checkpointing=True)["peak"] < plain
    assert training_memory(WIDE, 16, "bf16-mixed", loss_chunk_tokens=128)["peak"] < plain
    assert training_memory(WIDE, 32, "bf16-mixed")["peak"] > plain
    with pytest.raises(ValueError, match="precision"):
        training_memory(WIDE, 16, "64-true")


@pytest.mark.slow
def test_accounting_prints_the_predicted_peaks_for_the_configs_precision(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "trainer:\n  precision: bf16-mixed\nmodel:\n  arch:\n    vocab_size: 8000\n    context_length: 64\n"
        "    d_model: 256\n    num_layers: 2\n    num_heads: 8\n    d_ff: 688\ndata:\n  batch_size: 16\n"
    )
    assert main(["--config", str(config)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  bf16-mixed")]
    assert [row[1] for row in rows] == ["off", "on"]
    for row, checkpointing in zip(rows, (False, True), strict=True):
        expected = training_memory(WIDE, 16, "bf16-mixed", checkpointing)["peak"] / 1e9
        assert float(row[-1]) == pytest.approx(expected, abs=5e-4)


@pytest.mark.slow
def test_accounting_refuses_a_precision_it_cannot_predict(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "gpt2-small", "--precision", "64-true"])
    assert exit_info.value.code == 2
    assert "precision" in capsys.readouterr().err


def saved_bytes_per_token(model, tokens, bf16):
    """Bytes of the distinct non-parameter tensors autograd saves in one forward, per token."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.loss(tokens[0], tokens[1])
    return sum(saved.values()) / tokens[0].numel()


@pytest.mark.parametrize("ffn", ["swiglu", "silu"])
@pytest.mark.parametrize("bf16", [False, True])
def test_a_layer_saves_the_bytes_the_prediction_counts(bf16, ffn):
    """One more layer adds exactly layer_activation_bytes per token (under bf16-mixed, besides the bfloat16
    copies of its weights and of RoPE's tables, which do not grow with the batch)."""
    config = ModelConfig(
        vocab_size=512, context_length=32, d_model=64, num_layers=1, num_heads=4, d_ff=176, ffn=ffn
    )
    tokens = torch.randint(0, 512, (2, 4, 32))
    per_token = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = TransformerLM(replace(config, num_layers=layers))
        per_token.append(saved_bytes_per_token(model, tokens, bf16))
    weights = parameter_counts(config)
    fixed = 2 * (weights["attention"] + weights["ffn"]) + 4 * 32 * 16 * 2 if bf16 else 0  # weights, cos/sin
    assert per_token[1] - per_token[0] == layer_activation_bytes(config, bf16) + fixed / tokens[0].numel()
