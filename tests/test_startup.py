"""Commands that train nothing start without Lightning (seconds of imports), and fit/validate/test/predict
refuse a missing config or token file before they load it, saying what is missing and what makes it.
(The start-up times themselves are measured by bench/bench_startup.py, not here.)"""

from __future__ import annotations

import pytest
import yaml
from fresh_run import run_fresh
from metrics_files import write_metrics
from tiny_fit import fails


@pytest.mark.slow
def test_accounting_and_plot_never_import_lightning(tmp_path):
    accounting = run_fresh(["accounting", "--preset", "gpt2-small", "--measure-seconds", "0.05"])
    assert accounting == {"status": 0, "lightning": []}
    write_metrics(tmp_path / "run", [3.0, 2.5, 2.0, 1.8, 1.7, 1.6])
    plot = run_fresh(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")])
    assert plot == {"status": 0, "lightning": []}
    assert (tmp_path / "curves.png").is_file()
    assert run_fresh(["plot", str(tmp_path / "missing")]) == {"status": 2, "lightning": []}


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "--config", "missing.yaml"],
        ["validate"],
        ["predict", "--ckpt_path", "last"],
        ["export", "--config", "missing.yaml", "--ckpt_path", "last", "--out", "hf"],
    ],
)
def test_a_missing_config_fails_before_lightning_loads(argv, tmp_path):
    assert run_fresh(argv, cwd=tmp_path) == {"status": 2, "lightning": []}


@pytest.mark.parametrize("command", ["validate", "predict", "test", "fit"])
def test_a_run_command_without_config_names_the_flag(command, capsys):
    """Bare `lmproject validate` said `model.arch.vocab_size: expected int, got None`."""
    message = fails([command], capsys)
    assert message.startswith(f"lmproject: error: {command} needs --config: the run's config file")


def write_run_config(path, train: str, val: str, tokenizer: str | None = None) -> str:
    data = {"train_path": train, "val_path": val, "batch_size": 2} | (
        {"tokenizer_dir": tokenizer} if tokenizer else {}
    )
    path.write_text(yaml.safe_dump({"model": {"arch": {"vocab_size": 64}}, "data": data}))
    return str(path)


@pytest.mark.parametrize(
    ("folder", "remedy"),
    [
        ("data/tinystories", "make it with `make data tokenizer tokenize DATASET=tinystories`"),
        ("data/owt", "make it with `make data tokenizer tokenize DATASET=owt`"),
        ("data/smoke", "make it with `make smoke-data`"),
    ],
)
def test_a_missing_token_file_names_the_make_targets_that_make_it(
    folder, remedy, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    config = write_run_config(tmp_path / "c.yaml", f"{folder}/train.npy", f"{folder}/valid.npy")
    message = fails(["fit", "--config", config], capsys)
    assert (
        message == f"lmproject: error: {folder}/train.npy: token file not found (data.train_path); {remedy}"
    )
    message = fails(["validate", "--config", config, "--ckpt_path", "last"], capsys)
    assert message == f"lmproject: error: {folder}/valid.npy: token file not found (data.val_path); {remedy}"


def test_a_missing_token_file_of_ones_own_data_names_the_encode_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/train.npy").write_bytes(b"")  # present: only the missing one is named
    config = write_run_config(tmp_path / "c.yaml", "mine/train.npy", "mine/valid.npy", tokenizer="mine/tok")
    assert fails(["fit", "--config", config], capsys) == (
        "lmproject: error: mine/valid.npy: token file not found (data.val_path); encode a text file into it "
        "with `lmproject-bpe encode --tokenizer mine/tok TEXT_FILE mine/valid.npy`"
    )
    missing = fails(["validate", "--config", config, "--ckpt_path", "nope.ckpt"], capsys)
    assert missing == "lmproject: error: nope.ckpt: checkpoint not found"  # the checkpoint first, as before
    # an override on the command line is what counts, as in LightningCLI
    message = fails(["fit", "--config", config, "--data.val_path=mine/v2.npy"], capsys)
    assert "mine/v2.npy: token file not found (data.val_path)" in message
    assert "--config" in fails(["test", "--config", str(tmp_path / "c.yml")], capsys)
