"""`fit` with activation checkpointing and the chunked loss trains the same run as without them."""

import pytest
from test_training_cli import BATCH, TINY_MODEL, fails, one_thread, train_losses, write_config, write_tokens  # noqa: F401

from lmproject.cli import main

STEPS = 6


def test_checkpointing_and_the_chunked_loss_give_the_plain_runs_losses(tmp_path):
    write_tokens(tmp_path)
    budget = ["--train_tokens", str(STEPS * BATCH * TINY_MODEL["context_length"])]
    runs = {
        "plain": [],
        "memory": ["--model.activation_checkpointing", "true", "--model.loss_chunk_tokens", "24"],
    }
    losses = {}
    for name, options in runs.items():
        main(["fit", "--config", str(write_config(tmp_path, tmp_path / name)), *budget, *options])
        losses[name] = train_losses(tmp_path / name)
    assert sorted(losses["plain"]) == list(range(STEPS))
    assert losses["memory"] == pytest.approx(losses["plain"], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.loss_chunk_tokens", "0"], "model.loss_chunk_tokens=0: must be null or an integer >= 1"),
        (["--model.compile_mode", "fast"], "model.compile_mode='fast': must be null or one of default,"),
    ],
)
def test_a_chunk_of_no_tokens_or_an_unknown_compile_mode_is_refused(tmp_path, capsys, args, message):
    write_tokens(tmp_path)
    config = str(write_config(tmp_path, tmp_path / "run"))
    assert message in fails(["fit", "--config", config, *args], capsys)
