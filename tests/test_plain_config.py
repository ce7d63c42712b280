"""A run's config read without LightningCLI (export, evaluate, the checks before fit): overrides typed as
LightningCLI types them, files layered in order, the run layout completed as fit completes it."""

import pytest

from lmproject.errors import UserError
from lmproject.lit.plain_config import checkpoint_dir, flag_values, overrides, read_run_config, tokenizer_dir


def test_overrides_are_nested_and_typed_as_on_lightnings_command_line():
    words = ["--model.lr_max", "1e-3", "--model.arch.qk_norm=true", "--model.betas", "[0.9, 0.99]",
             "--data.train_path", "a: [b", "--trainer.max_steps", "-1",
             "--checkpoint.dirpath", "null"]  # fmt: skip
    assert overrides(words) == {
        "model": {"lr_max": 1e-3, "arch": {"qk_norm": True}, "betas": [0.9, 0.99]},
        "data": {"train_path": "a: [b"},
        "trainer": {"max_steps": -1},
        "checkpoint": {"dirpath": None},
    }
    with pytest.raises(UserError, match="--prompt: not a setting"):
        overrides(["--prompt", "x"])
    assert overrides(["fit", "--prompt", "x", "--data.val_path=v.npy"], strict=False) == {
        "data": {"val_path": "v.npy"}
    }
    with pytest.raises(UserError, match="--data.val_path: expected a value"):
        overrides(["--data.val_path"])


def test_files_layer_in_order_and_the_run_layout_is_fits(tmp_path):
    base, top = tmp_path / "base.yaml", tmp_path / "top.yaml"
    base.write_text("trainer: {default_root_dir: runs/a}\ndata: {train_path: d/train.npy, batch_size: 4}\n")
    top.write_text("data: {batch_size: 8}\n")
    config = read_run_config([str(base), str(top), "{trainer: {max_steps: 3}}"], {"data": {"seed": 1}})
    assert config["data"] == {"train_path": "d/train.npy", "batch_size": 8, "seed": 1}
    assert config["trainer"] == {"default_root_dir": "runs/a", "max_steps": 3}
    assert str(checkpoint_dir(config)) == "runs/a/checkpoints"
    assert str(checkpoint_dir({})) == "runs/default/checkpoints"
    assert str(checkpoint_dir({"checkpoint": {"dirpath": "ck"}})) == "ck"
    assert str(tokenizer_dir(config["data"])) == "d/tokenizer"
    assert flag_values(["-c", "a", "--config=b", "--config", "c"], ("--config", "-c")) == ["a", "b", "c"]
