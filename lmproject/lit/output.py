"""What Lightning prints around a command that imports it (accounting, plot, evaluate, export and import do
not: lmproject.lit.commands runs them outside this).

The commands whose output is a result (validate, test, predict) hide
Lightning's informational lines ("GPU available: ...", "TPU available: ...", "Seed set to 0", "Restoring
states from the checkpoint path ...") unless run with `--verbose`; `fit` keeps them, with its progress bar.
Every command hides the lines that never help: Lightning's advertisement for its cloud logger, a
deprecation notice between Lightning and torch, and the warning that the run's checkpoint directory is not
empty (`lmproject fit` makes that check itself, with a clearer message). Other warnings and every error
still show."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch  # noqa: F401  (its import sets its loggers' levels: it must come before ours)

# Lightning's informational lines come from these loggers and their children (rank_zero_info).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
# rank_zero_info logs through these two; a filter must sit on the logger a record starts from.
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
NOISE_LINES = ("litlogger",)
NOISE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"Checkpoint directory .* exists and is not empty",
)
RESULT_COMMANDS = frozenset({"validate", "test", "predict"})


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE_LINES)


@contextmanager
def lightning_output(command: str | None, verbose: bool) -> Iterator[None]:
    """Within the block, Lightning prints what `command` should show (see the module's docstring);
    logger levels, filters and warning filters are restored afterwards."""
    hide_info = command in RESULT_COMMANDS and not verbose
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    sources = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    drop = _DropNoise()
    with warnings.catch_warnings():
        if not verbose:
            for pattern in NOISE_WARNINGS:
                warnings.filterwarnings("ignore", pattern)
            for source in sources:
                source.addFilter(drop)
        if hide_info:
            for logger in loggers:
                logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            for source in sources:
                source.removeFilter(drop)
