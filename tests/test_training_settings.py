"""The training settings' defaults live once, in lmproject.training.settings: LanguageModel's parameters
(which give LightningCLI its `--model.*` flags) are exactly the dataclass's fields, with the same defaults
and types."""

import inspect
from dataclasses import fields

from lmproject.lit.module import LanguageModel
from lmproject.training.settings import TrainingSettings, default_settings


def test_language_model_signature_and_the_dataclass_agree():
    parameters = list(inspect.signature(LanguageModel.__init__).parameters.values())[2:]  # self, arch
    assert [(p.name, p.default, p.annotation) for p in parameters] == [
        (field.name, field.default, field.type) for field in fields(TrainingSettings)
    ]


def test_default_settings_are_the_dataclass_defaults():
    assert default_settings() == {field.name: field.default for field in fields(TrainingSettings)}
    assert default_settings()["lr_max"] == 1e-3 and default_settings()["betas"] == (0.9, 0.95)
