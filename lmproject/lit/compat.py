"""Every private (underscored, or public but undocumented as writable) part of Lightning the project relies
on, in one place, each with what it is for and what breaks if Lightning changes it.

pyproject.toml keeps lightning below 3, but a minor release may still rename any of these. The functions
below are the only callers of private attributes; PRIVATE_OVERRIDES lists the private methods the project
overrides, which tests/test_lit_compat.py checks still exist (a renamed one would silently stop being
called)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI


def logs_written_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning passes the values logged during this optimizer step to the loggers (every
    trainer.log_every_n_steps steps). A value logged on another step would be written again on the next
    row that is written, stale, so per-step values are logged only on these steps.

    Private: `trainer._logger_connector.should_update_logs`. If it goes, the fallback (True) logs on every
    step: rows stay correct, and each step pays for Lightning's logging."""
    connector = getattr(trainer, "_logger_connector", None)
    return getattr(connector, "should_update_logs", True)


def set_max_steps(trainer: L.Trainer, max_steps: int) -> None:
    """Set the step limit of a Trainer that is already built (`train_tokens` becomes steps only once the
    data's batch size and the world size are known).

    Undocumented: `trainer.max_steps` is read-only; the limit lives in
    `trainer.fit_loop.epoch_loop.max_steps`. If that moves, this raises AttributeError (fit with
    train_tokens fails at start-up, loudly); if it stays but is no longer read, training runs without a
    limit, which tests/test_cli.py catches (it checks the step count that train_tokens gives)."""
    trainer.fit_loop.epoch_loop.max_steps = max_steps


def save_checkpoint_file(checkpoint: ModelCheckpoint, trainer: L.Trainer, path: str) -> None:
    """Write the trainer's checkpoint to `path` as ModelCheckpoint does (through the trainer, so every rank
    takes part under DDP/FSDP, and the loggers are told), for RunCheckpoint's `last.ckpt`.

    Private: `ModelCheckpoint._save_checkpoint(trainer, filepath)`. If it goes, AttributeError at the first
    checkpoint: no run silently goes without one."""
    checkpoint._save_checkpoint(trainer, path)


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The Trainer a LightningModule is attached to, or None (`module.trainer` raises when there is none,
    e.g. when a test or a script calls configure_optimizers on a bare module).

    Private: `LightningModule._trainer`. If it goes, AttributeError wherever this is called."""
    return module._trainer


# Private methods the project overrides, with why. If Lightning renames one, the override is never called and
# nothing fails: tests/test_lit_compat.py checks that each still exists with the same parameters.
PRIVATE_OVERRIDES = {
    (ModelCheckpoint, "_save_last_checkpoint"): (
        "RunCheckpoint: last.ckpt always holds the newest step in that one file; without the override a "
        "resumed run starts a last-v1.ckpt and `--ckpt_path last` resumes from the older file"
    ),
    (ModelCheckpoint, "_save_checkpoint"): (
        "RunCheckpoint: no checkpoint is written with non-finite weights or optimizer state (a diverged "
        "step); without the override a diverged run's 'last good checkpoint' could hold NaN weights"
    ),
    (LightningCLI, "_prepare_subcommand_parser"): (
        "LMCLI: predict's sampling options (--prompt, --top_p, ...); without it predict refuses them"
    ),
    (LightningCLI, "_run_subcommand"): (
        "LMCLI: each ending's exit status (Ctrl-C 130, SIGTERM 143, divergence 3) and the fit summary; "
        "without it Ctrl-C outside the training loop exits 1, SIGTERM 0, and no summary is printed"
    ),
}
