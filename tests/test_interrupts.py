"""Ctrl-C anywhere exits with status 130 and one line: during start-up, and outside the training loop
(where Lightning itself would exit 1 and leave Ctrl-C ignored)."""

import importlib
import os
import signal

import lightning as L
import pytest
from tiny_fit import write_config, write_tokens

from lmproject import launch
from lmproject.lit.commands import main

pytestmark = pytest.mark.usefixtures("one_thread")


class SigintAtValidationBatch(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize(
    ("command", "prog"), [(launch.lmproject, "lmproject"), (launch.lmproject_bpe, "lmproject-bpe")]
)
def test_ctrl_c_while_the_modules_load_is_status_130_without_a_traceback(monkeypatch, capsys, command, prog):
    def interrupted_import(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted_import)
    assert command() == 130
    assert capsys.readouterr().err == f"{prog}: interrupted\n"


@pytest.mark.slow
def test_ctrl_c_during_validate_is_status_130_and_ctrl_c_works_again(tmp_path, capsys):
    write_tokens(tmp_path)
    run = tmp_path / "run"
    main(["fit", "--config", str(write_config(tmp_path, run)), "--trainer.max_steps", "2"])
    config = write_config(tmp_path, run, callbacks=[(SigintAtValidationBatch, {})])
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(config), "--ckpt_path", "last"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "lmproject: validate interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
