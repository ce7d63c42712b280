"""The training settings of a run's `model:` section besides the architecture, at their defaults, in one
place that needs no Lightning: LanguageModel's parameters take their defaults from here (LightningCLI's
`--model.*` flags and their help stay LanguageModel's), and `lmproject accounting` and `lmproject import`
read them without importing Lightning. What each setting means: LanguageModel's docstring."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingSettings:
    """A run's `model:` settings besides `arch`, at their defaults (lmproject.settings checks the values)."""

    attention: str = "fused"
    zero_init: bool = False
    activation_checkpointing: bool = False
    optimizer: str = "adamw"
    muon_momentum: float = 0.95
    schedule: str = "cosine"
    wsd_decay_fraction: float = 0.2
    lr_max: float = 1e-3
    lr_min: float = 1e-4
    warmup_iters: int = 100
    cosine_cycle_iters: int | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    compile: bool = False
    compile_mode: str | None = None
    loss_chunk_tokens: int | None = None


DEFAULTS = TrainingSettings()


def default_settings() -> dict[str, Any]:
    """The settings at their defaults, by name: the names a run config's `model:` section may hold besides
    `arch`, and the training settings saved beside imported weights (a Hugging Face folder has none)."""
    return asdict(DEFAULTS)
