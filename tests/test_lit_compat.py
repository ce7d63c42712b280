"""The installed Lightning still has every private part lmproject.lit.compat relies on: an upgrade that
renames one fails here, by name, instead of silently skipping an override or a logging decision."""

import inspect

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lmproject.lit import compat
from lmproject.lit.callbacks import RunCheckpoint
from lmproject.lit.cli import LMCLI

OURS = {ModelCheckpoint: RunCheckpoint, L.pytorch.cli.LightningCLI: LMCLI}


@pytest.mark.parametrize(("base", "name"), list(compat.PRIVATE_OVERRIDES))
def test_each_overridden_private_method_still_exists_with_our_parameters(base, name):
    assert hasattr(base, name), f"Lightning no longer has {base.__name__}.{name}"
    theirs, ours = getattr(base, name), getattr(OURS[base], name)
    assert ours is not theirs  # the project does override it
    assert inspect.signature(ours).parameters.keys() == inspect.signature(theirs).parameters.keys()


def test_the_private_attributes_behind_the_helpers_are_there():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=5)
    assert isinstance(trainer._logger_connector.should_update_logs, bool)
    compat.set_max_steps(trainer, 12)
    assert trainer.max_steps == 12
    parameters = inspect.signature(ModelCheckpoint._save_checkpoint).parameters
    assert list(parameters) == ["self", "trainer", "filepath"]
