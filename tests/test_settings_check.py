"""Every numeric and choice setting is checked at start-up, before any work, with one line naming it."""

from dataclasses import fields

import lightning as L
import pytest
from tiny_fit import fails, write_config, write_tokens

from lmproject.lit.callbacks import ThroughputMonitor
from lmproject.lit.datamodule import TokenDataModule
from lmproject.lit.module import LanguageModel
from lmproject.lit.run_config import join_negative_numbers
from lmproject.nn import ModelConfig, TransformerLM
from lmproject.settings import RULES, SettingError, check_settings

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_SETTINGS = [
    (["--model.lr_min=-1e-3"], "model.lr_min=-0.001: must be in [0, lr_max=0.01]"),
    (["--model.lr_min", "0.1"], "model.lr_min=0.1: must be in [0, lr_max=0.01]"),
    (["--model.lr_max", "-1e-3"], "model.lr_max=-0.001: must be a number > 0"),  # with a space
    (["--model.lr_max", "0"], "model.lr_max=0.0: must be a number > 0"),
    (["--model.warmup_iters", "-1"], "model.warmup_iters=-1: must be an integer >= 0"),
    (["--model.cosine_cycle_iters", "1"], "model.cosine_cycle_iters=1: must be null or an integer >= 1 and"),
    (["--model.betas", "[0.9, 1.0]"], "model.betas=[0.9, 1.0]: must be two numbers in [0, 1)"),
    (["--model.eps", "0"], "model.eps=0.0: must be a number > 0"),
    (["--model.weight_decay=-1"], "model.weight_decay=-1.0: must be a number >= 0"),
    (["--model.max_grad_norm", "0"], "model.max_grad_norm=0.0: must be null or a number > 0"),
    (["--model.arch.num_heads", "0"], "model.arch.num_heads=0: must be an integer >= 1"),
    (["--model.arch.num_heads", "3"], "model.arch.num_heads=3: must be a divisor of d_model=32"),
    (
        ["--model.arch.d_model", "66", "--model.arch.num_heads", "2"],
        "model.arch.num_heads=2: must be a divisor of d_model=66 ",
    ),
    (["--model.arch.context_length", "0"], "model.arch.context_length=0: must be an integer >= 1"),
    (["--model.arch.d_ff", "0"], "model.arch.d_ff=0: must be an integer >= 1"),
    (["--model.arch.rope_theta", "0"], "model.arch.rope_theta=0.0: must be a number > 0"),
    (["--model.arch.norm", "sandwich"], "model.arch.norm='sandwich': must be one of pre, post, none"),
    (["--model.attention", "flash"], "model.attention='flash': must be one of fused, math"),
    (
        ["--model.arch.logit_softcap", "15", "--model.loss_chunk_tokens", "64"],
        "model.loss_chunk_tokens=64: must be null when model.arch.logit_softcap=15.0 is set",
    ),
    (["--data.batch_size", "0"], "data.batch_size=0: must be an integer >= 1"),
    (["--data.seed=-1"], "data.seed=-1: must be an integer in [0, 4294967295]"),
    (["--data.num_workers=-2"], "data.num_workers=-2: must be an integer >= 0"),
    (["--train_tokens", "0"], "train_tokens=0: must be null or an integer >= 1"),
    (
        ["--trainer.max_steps", "0"],
        "trainer.max_steps=0: must be -1 (set by train_tokens) or an integer >= 1",
    ),
    (
        ["--trainer.accumulate_grad_batches", "0"],
        "trainer.accumulate_grad_batches=0: must be an integer >= 1",
    ),
    (
        ["--trainer.val_check_interval", "0"],
        "trainer.val_check_interval=0: must be > 0 (steps) or a duration",
    ),
    (["--throughput.peak_flops=-1"], "throughput.peak_flops=-1.0: must be null or a number > 0"),
    (
        ["--trainer.devices", "0"],
        "`Trainer(devices='0')` value is not a valid input",
    ),  # Lightning's own check
    (["--checkpoint.every_n_train_steps=-1"], "Invalid value for every_n_train_steps=-1. Must be >= 0"),
    (["--seed_everything=-1"], "seed_everything=-1: must be true, false or an integer in [0, 4294967295]"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), BAD_SETTINGS)
def test_a_bad_setting_is_refused_before_any_work(tmp_path, capsys, args, message):
    write_tokens(tmp_path)
    run = tmp_path / "run"
    config = write_config(tmp_path, run)
    assert message in fails(["fit", "--config", str(config), "--trainer.max_steps", "2", *args], capsys)
    assert not run.exists()  # no logs, no checkpoints: nothing ran


def test_a_binary_config_file_is_a_one_line_error(tmp_path, capsys):
    binary = tmp_path / "program"
    binary.write_bytes(b"\x7fELF\x02\x01\xd0\x00")
    assert fails(["fit", "--config", str(binary)], capsys).endswith(
        f"--config {binary}: invalid UTF-8 at byte offset 6"
    )


def test_negative_numbers_in_scientific_notation_keep_their_option():
    words = ["fit", "--model.lr_max", "-1e-3", "--x", "-2", "--y=-3", "-5E+2", "--z", "-inf", "--w", "-x"]
    assert join_negative_numbers(words) == [
        "fit", "--model.lr_max=-1e-3", "--x=-2", "--y=-3", "-5E+2", "--z=-inf", "--w", "-x"
    ]  # fmt: skip


def test_the_python_api_refuses_the_same_settings_with_a_value_error():
    sizes = {"vocab_size": 64, "context_length": 16, "d_model": 66, "num_layers": 1, "num_heads": 4}
    sizes["d_ff"] = 8
    with pytest.raises(ValueError, match="model.arch.num_heads=4: must be a divisor of d_model=66"):
        TransformerLM(**sizes)
    with pytest.raises(ValueError, match="model.arch.num_heads=0: must be an integer >= 1"):
        ModelConfig(**{**sizes, "num_heads": 0})
    with pytest.raises(SettingError, match="model.lr_min=-1: must be in"):
        LanguageModel(ModelConfig(**{**sizes, "d_model": 32}), lr_min=-1)
    with pytest.raises(SettingError, match="data.seed=-1"):
        TokenDataModule("t.npy", "v.npy", 4, vocab_size=64, context_length=16, seed=-1)


def test_every_rule_names_a_setting_of_its_section():
    """A rule for a misspelt setting would never run: each names a real argument of its section."""
    import inspect

    arguments = {
        "model.arch": {field.name for field in fields(ModelConfig)},
        "model": inspect.signature(LanguageModel.__init__).parameters,
        "data": inspect.signature(TokenDataModule.__init__).parameters,
        "trainer": inspect.signature(L.Trainer.__init__).parameters,
        "throughput": inspect.signature(ThroughputMonitor.__init__).parameters,
        "": {"train_tokens", "seed_everything"},
    }
    for section, rules in RULES.items():
        for rule in rules:
            assert rule.name in arguments[section], (section, rule.name)


def test_partial_sections_check_what_they_have():
    check_settings("model", {"lr_max": 1e-3})  # no lr_min to compare with: nothing to refuse
    with pytest.raises(SettingError, match="model.eps=-1"):
        check_settings("model", {"eps": -1})
