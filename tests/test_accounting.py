"""The accounting module reproduces every figure of the reference analysis (CS336 assignment 1)."""

from dataclasses import replace

import pytest
import torch
import yaml

from lmproject import accounting as acc
from lmproject.lit.accounting_cli import main
from lmproject.matmul_rate import measure_matmul_flops

XL = acc.PRESETS["gpt2-xl"]
LOCAL_RATE = 2.5e10  # FLOP/s that the CLI's tests measure on "this machine"


@pytest.fixture(autouse=True)
def fixed_local_rate(monkeypatch):
    """The CLI's local estimate at a known rate, without spending a second measuring it in every test."""
    monkeypatch.setattr("lmproject.lit.accounting_cli.measure_matmul_flops", lambda *args: LOCAL_RATE)
    monkeypatch.setattr("lmproject.lit.accounting_cli.local_device", lambda: torch.device("cpu"))


def test_gpt2_xl_parameters_and_forward_flops():
    assert sum(acc.parameter_counts(XL).values()) == 2_127_057_600
    assert sum(acc.forward_flops(XL).values()) == 4_513_336_524_800
    shares = acc.flop_shares(XL)
    assert [round(shares[k], 2) for k in ("attention", "ffn", "lm head")] == [29.44, 66.91, 3.65]


@pytest.mark.parametrize(
    "preset, total, shares",
    [
        ("gpt2-small", 3.50e11, [27.64, 49.75, 22.61]),
        ("gpt2-medium", 1.03e12, [29.93, 59.87, 10.20]),
        ("gpt2-large", 2.26e12, [29.96, 64.20, 5.84]),
    ],
)
def test_gpt2_family_flops_and_shares(preset, total, shares):
    shape = acc.PRESETS[preset]
    assert float(f"{sum(acc.forward_flops(shape).values()):.2e}") == total
    got = acc.flop_shares(shape)
    assert [round(got[k], 2) for k in ("attention", "ffn", "lm head")] == shares


def test_gpt2_xl_long_context_is_dominated_by_attention():
    shape = replace(XL, context_length=16_384)
    assert float(f"{sum(acc.forward_flops(shape).values()):.2e}") == 1.50e14
    got = acc.flop_shares(shape)
    assert [round(got[k], 2) for k in ("attention", "ffn", "lm head")] == [65.92, 32.32, 1.76]


def test_adamw_memory_line_and_largest_batch():
    per_batch = acc.adamw_memory_bytes(XL, 1)["activations"] / acc.GB
    fixed = acc.adamw_memory_bytes(XL, 0)
    assert round(per_batch, 2) == 15.52
    # The reference's 34.04 adds the three components after rounding each; the exact sum is 34.03.
    rounded = [round(fixed[k] / acc.GB, 2) for k in ("parameters", "gradients", "optimizer state")]
    assert rounded == [8.51, 8.51, 17.02] and round(sum(rounded), 2) == 34.04
    assert round(sum(fixed.values()) / acc.GB, 2) == 34.03
    assert acc.max_batch_size(XL, 80e9) == 2
    assert acc.max_batch_size(XL, 20e9) == 0


def test_training_time_of_gpt2_xl():
    seconds = acc.training_seconds(XL, batch_size=1024, steps=400_000, mfu=0.5, peak_flops=19.5e12)
    assert seconds / 86_400 == pytest.approx(6_583.6, abs=0.1)
    # The reference's "about 6,581 days" uses the per-step FLOPs rounded to 4 significant digits.
    step = float(f"{acc.train_step_flops(XL, 1024):.3e}")
    assert step == 1.386e16 and round(step * 400_000 / (0.5 * 19.5e12) / 86_400) == 6_581


def test_train_flops_per_token_matches_the_step_formula():
    per_token = acc.train_flops_per_token(XL)
    assert per_token == 3 * 4_513_336_524_800 / 1024
    silu = acc.train_flops_per_token(replace(XL, ffn="silu"))
    assert per_token - silu == 3 * 2 * 1600 * 6400 * 48


def test_cli_prints_tables_from_a_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  class_path: x.Y\n  init_args:\n    arch:\n      vocab_size: 50257\n"
        "      context_length: 1024\n"
        "      d_model: 1600\n      num_layers: 48\n      num_heads: 25\n      d_ff: 6400\n"
        "data:\n  init_args:\n    batch_size: 1024\ntrainer:\n  max_steps: 400000\n"
    )
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "2,127,057,600" in out and "4,513,336,524,800" in out
    assert "15.52 * batch + 34.03 GB; largest batch in 80 GB: 2" in out
    assert "6,583.6 days" in out


def test_cli_rejects_missing_or_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--d-model", "64"])
    assert exit_info.value.code == 2
    assert "missing model hyperparameters --vocab-size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "gpt2-small", "--num-heads", "0"])
    assert exit_info.value.code == 2
    assert "model.arch.num_heads=0: must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "absent.yaml")])
    assert exit_info.value.code == 2
    assert "absent.yaml: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"arch": {"d_model": 66, "num_heads": 4}},
            "model.arch.num_heads=4: must be a divisor of d_model=66",
        ),
        (
            {"arch": {"d_model": 34, "num_heads": 2}},
            "model.arch.num_heads=2: must be a divisor of d_model=34 with an even",
        ),
        ({"lr_min": -1e-3}, "model.lr_min=-0.001: must be in [0, lr_max=0.001]"),
        (
            {"arch": {"logit_softcap": 15.0}, "loss_chunk_tokens": 64},
            "model.loss_chunk_tokens=64: must be null when model.arch.logit_softcap=15.0 is set",
        ),
        (
            {"d_model": 64},
            "model.d_model is not a setting of the model (lmproject.lit.module.LanguageModel) "
            "(did you mean --model.arch.d_model?)",
        ),
        ({"arch": {"bogus": 1}}, "model.arch.bogus is not an architecture field"),
        ({"bogus_setting": 1}, "model.bogus_setting is not a setting of the model"),
        ({"arch": {"qk_norm": "no"}}, "model.arch.qk_norm='no': must be true or false"),
    ],
)
def test_a_config_that_fit_refuses_is_refused_by_the_same_check(tmp_path, capsys, model, message):
    sizes = {"vocab_size": 100, "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 2}
    sizes["d_ff"] = 64
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {**model, "arch": {**sizes, **model.get("arch", {})}}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_binary_config_file_is_a_one_line_error(tmp_path, capsys):
    binary = tmp_path / "program"
    binary.write_bytes(b"\x7fELF\x02\x01\xd0\x00")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(binary)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"{binary}: invalid UTF-8 at byte offset 6")


def test_a_config_with_a_key_given_twice_is_refused_naming_the_line(tmp_path, capsys):
    """(The last of the two values won silently.)"""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  arch: {d_model: 64, d_model: 32}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"{path}: line 2: key 'd_model' is given twice (one value per key)")
    )


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--steps", "0"), ("--steps", "-3")])
def test_cli_rejects_a_non_positive_batch_size_or_step_count(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "gpt2-small", flag, value])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"lmproject accounting: error: {flag} must be a positive integer, got {value}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "gpt2-small", "--config", "c.yaml"], "--config: not allowed with argument --preset"),
        (["--preset", "nope"], "argument --preset: invalid choice: 'nope'"),
        (["--preset", "gpt2-small", "--loss-chunk-tokens", "0"], "--loss-chunk-tokens must be a positive"),
    ],
)  # fmt: skip
def test_cli_argument_errors_are_one_line_without_the_usage_block(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert out == "" and line.startswith("lmproject accounting: error: ") and message in line


@pytest.mark.parametrize(
    "switches",
    [{}, {"norm": "post"}, {"norm": "none"}, {"ffn": "silu", "d_ff": 64}, {"tie_embeddings": True}],
)
def test_parameter_count_matches_the_model_it_describes(switches):
    from lmproject.nn import TransformerLM

    args = {
        "vocab_size": 97,
        "context_length": 16,
        "d_model": 16,
        "num_layers": 2,
        "num_heads": 4,
        "d_ff": 48,
    }
    args.update(switches)
    model = TransformerLM(**args)
    assert sum(acc.parameter_counts(model.config).values()) == sum(p.numel() for p in model.parameters())


def test_cli_layers_overlays_like_lightningcli(tmp_path, capsys):
    base, overlay = tmp_path / "base.yaml", tmp_path / "silu.yaml"
    base.write_text(
        "model:\n  arch:\n    vocab_size: 1000\n    context_length: 64\n    d_model: 32\n    num_layers: 2\n"
        "    num_heads: 4\n    d_ff: 96\n"
    )
    overlay.write_text("model:\n  arch:\n    ffn: silu\n    d_ff: 128\n")
    assert main(["--config", str(base), "--config", str(overlay)]) == 0
    out = capsys.readouterr().out
    assert "d_ff=128," in out and "ffn=silu," in out and f"{2 * 2 * 32 * 128:,}" in out  # two FFN matrices


def test_cli_counts_a_configs_token_budget_as_fit_does(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "train_tokens: 3840\nmodel:\n  arch:\n    vocab_size: 64\n    context_length: 16\n    d_model: 32\n"
        "    num_layers: 2\n    num_heads: 2\n    d_ff: 64\ndata:\n  batch_size: 4\n"
        "trainer:\n  accumulate_grad_batches: 2\n  devices: auto\n"
    )
    assert main(["--config", str(config)]) == 0  # 3840 tokens / (4 x 16 x 2) = 30 steps
    captured = capsys.readouterr()
    assert "training time for 30 steps of batch 8 (4 per device x 2 accumulated x 1 devices)" in captured.out
    assert "trainer.devices is auto" in captured.err and "give --devices N" in captured.err
    assert "AdamW peak memory, float32, batch 4 (one device's micro-batch)" in captured.out
    assert main(["--config", str(config), "--devices", "3"]) == 0  # 3840 / (4 x 16 x 2 x 3) = 10
    assert "for 10 steps of batch 24 (4 per device x 2 accumulated x 3 devices)" in capsys.readouterr().out
    config.write_text(config.read_text().replace("devices: auto", "devices: [0, 1]\n  num_nodes: 2"))
    assert main(["--config", str(config)]) == 0  # 4 devices: 3840 / (4 x 16 x 2 x 4) rounds up to 8
    assert "for 8 steps of batch 32 (4 per device x 2 accumulated x 4 devices)" in capsys.readouterr().out
    assert acc.steps_for_tokens(3840, 4, 16, 2, 4) == 8


def test_training_time_divides_the_step_flops_over_the_devices():
    one = acc.training_seconds(XL, batch_size=1024, steps=10, mfu=0.5, peak_flops=19.5e12)
    assert acc.training_seconds(XL, 1024, 10, 0.5, 19.5e12, devices=4) == pytest.approx(one / 4)


@pytest.mark.parametrize(
    ("flag", "value"), [("--memory-gb", "nan"), ("--peak-flops", "inf"), ("--mfu", "nan")]
)
def test_cli_rejects_numbers_that_are_not_finite(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "gpt2-small", flag, value])
    assert exit_info.value.code == 2
    assert "--peak-flops and --memory-gb must be positive" in capsys.readouterr().err


def test_the_time_is_estimated_for_the_assumed_gpu_and_for_this_machine(capsys):
    """A run that took minutes on the CPU was estimated at "1 s": the A100 assumption is now said, and
    beside it stands the time at the matmul rate measured on this machine."""
    assert main(["--preset", "gpt2-small", "--batch-size", "2", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    gpu = acc.training_seconds(acc.PRESETS["gpt2-small"], 2, 3, 0.5, 19.5e12)
    assert f"at 50% MFU of 19.5 TFLOP/s (assumed: an A100, float32; --peak-flops, --mfu): {gpu:,.0f} s" in out
    here = acc.training_seconds(acc.PRESETS["gpt2-small"], 2, 3, 1.0, LOCAL_RATE)
    assert f"training time on this machine: the CPU, {torch.get_num_threads()} threads" in out
    assert f"(25.0 GFLOP/s; a busy machine measures less): {acc.duration(here)}" in out
    assert main(["--preset", "gpt2-small", "--peak-flops", "1e15", "--measure-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "(assumed: an A100" not in out and "on this machine" not in out


def test_each_memory_total_says_what_it_answers(capsys):
    assert main(["--preset", "gpt2-xl", "--batch-size", "1024", "--measure-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "total                         15,924.21" in out
    assert "total: the handout's estimate of a float32 AdamW step" in out
    assert "what this implementation needs: the predicted peak below" in out
    assert "10458.495" in out and "peak: what `lmproject fit` needs on one device" in out


def test_the_matmul_rate_is_measured_on_the_cpu():
    assert measure_matmul_flops(torch.device("cpu"), seconds=0.05) > 1e6


def test_a_negative_measuring_time_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "gpt2-small", "--measure-seconds", "-1"])
    assert exit_info.value.code == 2
    assert "--measure-seconds must be a number >= 0, got -1.0" in capsys.readouterr().err
