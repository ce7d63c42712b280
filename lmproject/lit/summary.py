"""What `lmproject fit` prints when it ends, however it ends (done, Ctrl-C, SIGTERM, the time limit,
divergence): the steps and tokens of this run, its time and rate, the last losses, the checkpoint to use,
and the next command."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

import lightning as L

from lmproject.accounting import parameter_counts, train_flops_per_token
from lmproject.lit.module import LanguageModel
from lmproject.nn import ModelConfig


def model_line(config: ModelConfig) -> str:
    """One line about the model a fit trains (in place of Lightning's module table): its size and the
    training FLOPs per token that MFU is computed from (lmproject.accounting)."""
    counts = parameter_counts(config)
    total = sum(counts.values())
    embeddings = counts["token embeddings"] + counts["lm head"]
    return (
        f"lmproject: model: {total / 1e6:.2f}M parameters ({(total - embeddings) / 1e6:.2f}M outside the "
        f"embeddings and lm head), {config.num_layers} layers x d_model {config.d_model}, context "
        f"{config.context_length}; {train_flops_per_token(config) / 1e9:.3g} GFLOPs per training token"
    )


class RunRecord(L.Callback):
    """Records what the summary reports: where this process's training started (step, time), the tokens it
    trained on, and the last training loss (LanguageModel.step_loss is kept only until it is logged)."""

    def __init__(self) -> None:
        self.start_step = 0
        self.started = 0.0
        self.tokens = 0
        self.train_loss: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step, self.started = trainer.global_step, time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        self.tokens += batch[0].numel() * trainer.world_size
        if isinstance(pl_module, LanguageModel) and pl_module.step_loss is not None:
            self.train_loss = pl_module.step_loss


@dataclass
class Ending:
    """How a fit ended: a phrase for the first line, and the commands to suggest."""

    outcome: str
    resume: bool  # an unfinished run: suggest resuming it


def summary(
    trainer: L.Trainer, record: RunRecord, ending: Ending, checkpoint: str | None, argv: list[str]
) -> str:
    """The summary's lines (see the module docstring). `argv` is the fit command's arguments, from which the
    next commands are written."""
    seconds = time.monotonic() - record.started if record.started else 0.0
    total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
    lines = [
        f"lmproject fit: {ending.outcome} at step {trainer.global_step}{total} "
        f"({trainer.global_step - record.start_step} steps in this run, {_duration(seconds)})",
    ]
    if record.tokens:
        rate = f", {record.tokens / seconds:,.0f} tokens/s" if seconds > 0 else ""
        lines.append(f"  tokens: {record.tokens:,} in this run{rate}")
    losses = []
    if record.train_loss is not None:
        losses.append(f"train {record.train_loss:.4f} (last step)")
    val = trainer.callback_metrics.get("val/loss")
    if val is not None:
        losses.append(f"val {float(val):.4f} (last validation)")
    if losses:
        lines.append("  loss: " + ", ".join(losses))
    if checkpoint:
        lines.append(f"  checkpoint: {checkpoint}")
    rest = shlex.join(_without_checkpoint_choice(argv))
    if ending.resume:
        lines.append(f"  resume: lmproject fit {rest} --ckpt_path last")
    if checkpoint:
        lines.append(f"  next: lmproject validate {rest} --ckpt_path last")
        lines.append(f"        lmproject predict {rest} --ckpt_path last --prompt 'Once upon a time'")
    return "\n".join(lines)


def _without_checkpoint_choice(argv: list[str]) -> list[str]:
    """The fit command's arguments without its subcommand and --ckpt_path."""
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--ckpt_path":
            skip = True
        elif word != "fit" and not word.startswith("--ckpt_path="):
            words.append(word)
    return words


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h {minutes:02d}m {secs:02d}s"
        if hours
        else f"{minutes}m {secs:02d}s"
        if minutes
        else f"{secs}s"
    )
