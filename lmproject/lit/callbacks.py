"""Training callbacks: throughput and MFU logging; last.ckpt at the newest step; stopping at a step boundary
with a checkpoint (Ctrl-C, SIGTERM, the time limit)."""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ModelCheckpoint

from lmproject.accounting import train_flops_per_token
from lmproject.errors import INTERRUPTED, TERMINATED
from lmproject.lit.compat import logs_written_this_step, save_checkpoint_file
from lmproject.lit.module import NonFiniteLossError

# Dense tensor-core peaks of GPUs missing from Lightning's table (vendor datasheets, FLOP/s). The H200 is the
# H100 SXM's chip with more memory: the same arithmetic peaks.
_EXTRA_PEAK_FLOPS = {"h200": {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, torch.float32: 66.9e12}}


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device in `dtype`: Lightning's table, then _EXTRA_PEAK_FLOPS; None if unknown
    (CPUs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns "FLOPs not found" for chips we may know
        peak = get_available_flops(device, dtype)
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        peak = next((table.get(dtype) for chip, table in _EXTRA_PEAK_FLOPS.items() if chip in name), None)
    return peak


class StepBoundary(L.Callback):
    """Base for callbacks that act only after a batch that completed an optimizer step (with gradient
    accumulation, most batches do not)."""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        self._step_before = trainer.global_step

    def stepped(self, trainer: L.Trainer) -> bool:
        """Whether the batch that just ended ran an optimizer step (call from on_train_batch_end)."""
        return trainer.global_step != self._step_before


class ThroughputMonitor(StepBoundary):
    """On every row the loggers write (every trainer.log_every_n_steps optimizer steps), values measured
    for that row:

    - throughput/tokens_per_s: training tokens per second, all devices together, over the steps since the
      previous row (time spent in validation is not counted);
    - throughput/mfu: tokens/s x training FLOPs per token / (peak FLOP/s x devices). The FLOPs per token are
      lmproject.accounting's: every matmul including the lm_head, and the full T x T attention matrix (no
      saving for the causal mask), so fused causal attention does fewer FLOPs than counted. `peak_flops` is
      the peak of one device; by default Lightning's table for the GPU and precision in use, completed by
      device_peak_flops for GPUs it lacks such as the H200 (no MFU on CPUs, whose peak is not in the table);
    - time/elapsed_s: wall-clock seconds since this fit started, validation included (the x axis of
      `lmproject plot`'s curves against time);
    - memory/max_allocated_gb, on a GPU: torch.cuda.max_memory_allocated so far (GB = 1e9 bytes), the peak
      `lmproject accounting` predicts;
    - time/optimizer_ms and time/optimizer_share, once measured: the optimizer's update (after clipping:
      Muon's Newton–Schulz or AdamW's moments) in milliseconds, the mean over the updates timed since the
      previous row (on a GPU, those whose CUDA events have completed: usually all but the last), and that
      mean over the row's mean optimizer-step time. A row with no newly timed update has neither.
    """

    def __init__(self, peak_flops: float | None = None):
        self.peak_flops = peak_flops
        self._fit_start = self._row_start = self._validation_start = 0.0
        self._validation_seconds = 0.0
        self._tokens = self._steps = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.flops_per_token = train_flops_per_token(pl_module.model.config)
        if self.peak_flops is None:
            precision = str(trainer.precision)
            dtype = (
                torch.bfloat16
                if "bf16" in precision
                else torch.float16
                if "16" in precision
                else torch.float32
            )
            self.peak_flops = device_peak_flops(trainer.strategy.root_device, dtype)

    def _new_row(self, now: float) -> None:
        self._row_start, self._validation_seconds, self._tokens, self._steps = now, 0.0, 0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._new_row(self._fit_start)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_seconds += time.perf_counter() - self._validation_start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        self._tokens += batch[0].numel() * trainer.world_size
        self._steps += self.stepped(trainer)
        if not self.stepped(trainer) or not logs_written_this_step(trainer):
            return  # inside gradient accumulation, or a step whose values no row receives
        now = time.perf_counter()
        seconds = now - self._row_start - self._validation_seconds
        tokens_per_s = self._tokens / seconds
        pl_module.log("throughput/tokens_per_s", tokens_per_s)
        pl_module.log("time/elapsed_s", now - self._fit_start)
        optimizer_ms = pl_module.optimizer_clock.take()
        if optimizer_ms:
            mean_ms = sum(optimizer_ms) / len(optimizer_ms)
            pl_module.log("time/optimizer_ms", mean_ms)
            pl_module.log("time/optimizer_share", mean_ms / (seconds * 1e3 / self._steps))
        if self.peak_flops:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * trainer.world_size)
            pl_module.log("throughput/mfu", mfu)
        device = trainer.strategy.root_device
        if device.type == "cuda":
            pl_module.log("memory/max_allocated_gb", torch.cuda.max_memory_allocated(device) / 1e9)
        self._new_row(now)


def all_finite(trainer: L.Trainer) -> bool:
    """Whether this rank's weights and optimizer state hold only finite values (one device sync)."""
    tensors = list(trainer.lightning_module.parameters())
    for optimizer in trainer.optimizers:
        for state in optimizer.state.values():
            tensors += [
                value for value in state.values() if torch.is_tensor(value) and value.is_floating_point()
            ]
    checks = [torch.isfinite(tensor).all() for tensor in tensors if tensor.numel()]
    return bool(torch.stack(checks).all()) if checks else True


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` always holds the newest step, in that one file: written with each
    periodic checkpoint, at the end of training (Lightning's stays at the last periodic one) and on request
    (Ctrl-C). Lightning's own would start a `last-v1.ckpt` whenever a resumed run did not know the existing
    file (after a Ctrl-C, or with another every_n_train_steps), leaving `last.ckpt` behind."""

    _last_file_step: int | None = None  # the step last.ckpt was written at by this process

    def save_last_now(self, trainer: L.Trainer) -> Path:
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if self._last_file_step != trainer.global_step or not path.exists():
            self.last_model_path = str(path)  # before saving: it is part of the saved state
            save_checkpoint_file(self, trainer, str(path))
            self._last_file_step = trainer.global_step
        return path

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # a private method of ModelCheckpoint: see lmproject.lit.compat.PRIVATE_OVERRIDES. Every checkpoint
        # of a run is written here, on every rank together, so all refuse together.
        finite = all_finite(trainer)
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            last = self.last_model_path or "none saved yet"
            raise NonFiniteLossError(
                f"the weights or optimizer state are not finite at step {trainer.global_step}: the run "
                f"diverged, and no checkpoint was written for it (last good checkpoint: {last}); try a lower "
                "lr_max or max_grad_norm"
            )
        super()._save_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # a private method of ModelCheckpoint: see lmproject.lit.compat.PRIVATE_OVERRIDES
        if self.save_last:
            self.save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last:
            self.save_last_now(trainer)


class RunStopped(Exception):
    """Raised on every rank when the fit that a Ctrl-C or SIGTERM stopped (last.ckpt saved) would validate:
    it ends the fit at once, and the CLI turns it into the signal's exit status."""

    def __init__(self, reason: str, status: int, saved: Path):
        super().__init__(f"{reason}; saved {saved}")
        self.reason, self.status, self.saved = reason, status, saved


STOP_SIGNALS = {  # signal -> (what the summary calls it, exit status)
    signal.SIGINT: ("interrupted by Ctrl-C", INTERRUPTED),
    signal.SIGTERM: ("terminated by SIGTERM", TERMINATED),
}


class RunStop(StepBoundary):
    """Ends a fit cleanly at an optimizer-step boundary, with last.ckpt saved:

    - Ctrl-C (SIGINT) or SIGTERM (what `timeout`, SLURM preemption and `docker stop` send): finish the
      current step, save, stop without validating (RunStopped; exit 130 or 143). The same signal again
      aborts at once, without a checkpoint, at any moment (validation included).
    - trainer.max_time (`max_time` here; the CLI takes it from Lightning, whose Timer would count the time
      of earlier runs of a resumed run and end it with status 0): after that much time in this process's
      training, save and stop after a last validation; the CLI exits 124. Each resume gets the full time.

    Outside training (setup, validate, predict) Ctrl-C is Lightning's KeyboardInterrupt, which it turns into
    exit status 1; `keyboard_interrupt` records it so the CLI can exit 130 instead."""

    def __init__(self, max_time: float | None = None):
        self.max_time = max_time
        self.requested: int | None = None  # the signal received, until the step boundary acts on it
        self.stopped: RunStopped | None = None  # how a signal stopped the fit, once last.ckpt is saved
        self.time_capped = False
        self.keyboard_interrupt = False
        self.saved: Path | None = None
        self._train_start = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        reason, status = STOP_SIGNALS[signum]
        if self.requested is not None:  # not KeyboardInterrupt: Lightning turns that into exit status 1
            print(f"\nlmproject: {reason} again: aborting without a checkpoint", file=sys.stderr)
            raise SystemExit(status)
        self.requested = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        print(
            f"\nlmproject: {reason}: saving last.ckpt after this step, then stopping "
            f"({again} again: abort now)",
            file=sys.stderr,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        self.keyboard_interrupt = isinstance(exception, KeyboardInterrupt)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if not self.stepped(trainer):
            return  # only stop between optimizer steps, never inside gradient accumulation
        over_time = self.max_time is not None and time.monotonic() - self._train_start >= self.max_time
        # one collective per step: whether any rank stops; which reason, only once one does
        if not trainer.strategy.reduce_boolean_decision(self.requested is not None or over_time, all=False):
            return
        signalled = trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False)
        self.saved = self._save(trainer)
        trainer.should_stop = True  # this step's row is logged; then Lightning would validate once more
        if signalled:
            reason, status = STOP_SIGNALS.get(self.requested, STOP_SIGNALS[signal.SIGINT])  # another rank's
            self.stopped = RunStopped(reason, status, self.saved)
        else:
            self.time_capped = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped is not None:  # a signal asked to stop now, not after a validation
            raise self.stopped

    @staticmethod
    def _save(trainer: L.Trainer) -> Path:
        checkpointer = trainer.checkpoint_callback
        if isinstance(checkpointer, RunCheckpoint):
            return checkpointer.save_last_now(trainer)
        path = Path(trainer.default_root_dir) / "interrupted.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        return path
