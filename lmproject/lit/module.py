"""The LightningModule: the from-scratch TransformerLM with its loss, optimizer, schedule and clipping.

One training step is `training_step` (forward, cross-entropy); Lightning runs backward, then
`configure_gradient_clipping` clips with the project's `clip_gradients` (under FSDP, FSDP's over all shards)
and checks that the loss and gradient norm are finite, then the project's AdamW steps and the LambdaLR
advances the warmup + cosine schedule by one optimizer step. That check is the step's one wait for the GPU
(once per optimizer step, not per micro-batch): it is what lets a diverged run stop before a bad update
reaches the weights. The micro-batches' losses are summed on the device and read in that same wait, so
train/loss is the mean loss of the whole optimizer step (all micro-batches of gradient accumulation,
averaged over DDP ranks when it is logged).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from lmproject.errors import UserError
from lmproject.lit.clock import IntervalClock
from lmproject.lit.compat import attached_trainer, logs_written_this_step
from lmproject.lit.sharding import clip_gradients_of
from lmproject.nn import ModelConfig, TransformerLM, token_losses
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import for_decoding, generate, generate_steps
from lmproject.settings import check_settings
from lmproject.training.muon import FSDP_PREFIX, Muon, describe_groups, muon_param_groups
from lmproject.training.optim import AdamW, cosine_lr, wsd_lr
from lmproject.training.settings import DEFAULTS


class NonFiniteLossError(UserError):
    """Training diverged: the loss became NaN or infinite."""


class LanguageModel(L.LightningModule):
    """LightningCLI's `model:` section: the architecture (model.arch) and how a run trains it."""

    def __init__(
        self,
        arch: ModelConfig,
        attention: str = DEFAULTS.attention,
        zero_init: bool = DEFAULTS.zero_init,
        activation_checkpointing: bool = DEFAULTS.activation_checkpointing,
        optimizer: str = DEFAULTS.optimizer,
        muon_momentum: float = DEFAULTS.muon_momentum,
        schedule: str = DEFAULTS.schedule,
        wsd_decay_fraction: float = DEFAULTS.wsd_decay_fraction,
        lr_max: float = DEFAULTS.lr_max,
        lr_min: float = DEFAULTS.lr_min,
        warmup_iters: int = DEFAULTS.warmup_iters,
        cosine_cycle_iters: int | None = DEFAULTS.cosine_cycle_iters,
        betas: tuple[float, float] = DEFAULTS.betas,
        eps: float = DEFAULTS.eps,
        weight_decay: float = DEFAULTS.weight_decay,
        max_grad_norm: float | None = DEFAULTS.max_grad_norm,
        compile: bool = DEFAULTS.compile,
        compile_mode: str | None = DEFAULTS.compile_mode,
        loss_chunk_tokens: int | None = DEFAULTS.loss_chunk_tokens,
    ):
        """
        Args:
            arch: the architecture (`model.arch` in a run's config; its fields: lmproject.nn.ModelConfig).
            attention: "fused" (torch's scaled_dot_product_attention) or "math" (the from-scratch softmax
                attention): the same result.
            zero_init: every block's attn.output_proj and ffn.w2 start at zero (the modern recipe).
            activation_checkpointing: recompute each TransformerBlock in backward instead of keeping its
                activations (less memory, about a third more compute).
            optimizer: "adamw" for every parameter, or "muon": Muon for the 2-D matrices inside the blocks and
                AdamW for embeddings, head and norms, at the same learning rate (lmproject.training.muon).
            muon_momentum: Muon's (Nesterov) momentum.
            schedule: "cosine" (warmup, cosine decay) or "wsd" (warmup, constant, linear decay over the last
                wsd_decay_fraction of the run).
            lr_max: peak learning rate, reached after warmup_iters optimizer steps.
            lr_min: learning rate at the end of the decay and after it.
            warmup_iters: optimizer steps of linear warmup.
            cosine_cycle_iters: optimizer step where the schedule (cosine or wsd) reaches lr_min (default: the
                run's max_steps).
            betas, eps, weight_decay: AdamW (and Muon's decoupled weight decay).
            max_grad_norm: clip the global gradient norm to this (null: no clipping, norm still logged).
            compile: torch.compile the model and its loss for `fit` (checkpoint names do not change).
            compile_mode: torch.compile's mode, e.g. reduce-overhead (CUDA graphs) or
                max-autotune-no-cudagraphs (null: the default mode).
            loss_chunk_tokens: compute the lm head and cross-entropy fused, this many tokens at a time
                (lmproject.nn.linear_cross_entropy): no float32 logits for the whole batch (null: plain).
        """
        super().__init__()
        config = arch if isinstance(arch, ModelConfig) else ModelConfig(**arch)  # dict: load_from_checkpoint
        # save_hyperparameters saves the arguments as bound here: the architecture as plain data, so that
        # checkpoints load with weights_only=True and hparams.yaml stays readable
        arch = asdict(config)
        self.save_hyperparameters()
        check_settings("model", self.hparams)
        self.model = TransformerLM(
            config,
            attention=attention,
            activation_checkpointing=activation_checkpointing,
            zero_init=zero_init,
        )
        self._compute_loss = self.model.loss
        # the parameters' shapes before FSDP (if any) turns them into flat pieces: Muon needs them whole
        self._built_shapes = {name: p.shape for name, p in self.model.named_parameters()}
        self.eval_loss = MeanMetric()
        self.grad_norm: float | None = None
        self.step_loss: float | None = None  # mean loss of this rank's micro-batches in the last step
        self.step_lr: float | None = None
        self._step_loss_sum: torch.Tensor | None = None  # on the device: no wait per micro-batch
        self._micro_batches = 0
        self.token_callback: Callable[[int], None] | None = None  # `lmproject predict --stream` sets it
        self._decoding: tuple[torch.dtype | None, TransformerLM] | None = None  # see _decoding_model
        self.optimizer_clock = IntervalClock()  # the optimizer's update, after clipping (ThroughputMonitor)

    def on_fit_start(self) -> None:
        if self.hparams.compile:  # training only: sampling's growing KV cache would recompile at every length
            compiled = torch.compile(self.model.loss, mode=self.hparams.compile_mode)
            # Under CUDA graphs (reduce-overhead) an output lives in a buffer that the next replay overwrites;
            # the loss is kept past that (logging, the divergence check), so it leaves as a copy.
            self._compute_loss = lambda x, y, chunk_tokens: compiled(x, y, chunk_tokens).clone()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model(token_ids)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return self._compute_loss(x, y, self.hparams.loss_chunk_tokens)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        total = self._step_loss_sum
        self._step_loss_sum = loss.detach() if total is None else total + loss.detach()  # NaN/inf stays
        self._micro_batches += 1
        return loss

    def _stop(self, what: str) -> None:
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        raise NonFiniteLossError(
            f"{what} at step {self.global_step}; training stopped before the weights were touched "
            f"(last good checkpoint: {checkpoint}); try a lower lr_max or max_grad_norm"
        )

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val is not None:
            raise UserError("set model.max_grad_norm instead of trainer.gradient_clip_val")
        limit = math.inf if self.hparams.max_grad_norm is None else self.hparams.max_grad_norm
        norm = clip_gradients_of(self.trainer.strategy.model, limit)  # under FSDP: over every rank's shard
        loss = self._step_loss_sum.float() / self._micro_batches
        self._step_loss_sum, self._micro_batches = None, 0
        self.step_loss, self.grad_norm = torch.stack([loss, norm.to(loss.device)]).tolist()  # one sync
        self.step_lr = optimizer.param_groups[0]["lr"]  # the rate this step applies
        problem = None
        if not math.isfinite(self.step_loss):
            problem = f"loss is {self.step_loss}"
        elif not math.isfinite(self.grad_norm) and not self._gradients_are_scaled():
            problem = f"gradient norm is {self.grad_norm}"
        # DDP ranks decide together, so all stop or none does
        if not self.trainer.strategy.reduce_boolean_decision(problem is None, all=True):
            self._stop(problem or "loss or gradient norm is not finite on another rank")
        self.optimizer_clock.start(self.device)  # the last thing before the update

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's step (the closure runs forward, backward and clipping, then the optimizer updates),
        the update timed by optimizer_clock."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.optimizer_clock.stop()

    def _gradients_are_scaled(self) -> bool:
        """Under a GradScaler (precision 16-mixed) non-finite gradients are routine: the scaler skips that
        step and lowers its scale, so they are no reason to stop."""
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """After the last micro-batch of an optimizer step, on the steps that write logs: the step's loss
        (averaged over the DDP ranks: one collective on those steps only), learning rate and gradient norm.
        A self.log call costs a fixed amount of Python whatever the device (Lightning walks the logged
        metric's state), a large share of a small model's step on a GPU, so they are logged only there."""
        if self.step_loss is None:
            return  # gradient accumulation: the step is not complete
        if logs_written_this_step(self.trainer):
            self.log("train/loss", self.step_loss, prog_bar=True, sync_dist=True)
            self.log("lr", self.step_lr)
            self.log("grad_norm", self.grad_norm)
        self.step_loss = None

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Add a batch of validation windows to the loss: weight 1 per window, 0 for the copies that only
        even out the DDP ranks (lmproject.training.data.FixedWindows). Windows are equally long, so this is
        the mean over tokens."""
        x, y, weight = batch
        self.eval_loss.update(token_losses(self.model(x), y).mean(dim=-1), weight=weight)

    def _log_evaluation(self, stage: str) -> None:
        loss = self.eval_loss.compute()  # synced across DDP ranks
        self.eval_loss.reset()
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/perplexity", torch.exp(loss))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, request: dict[str, Any], batch_idx: int) -> list[list[int]]:
        """Sample request["num_samples"] completions of request["prompt_ids"] as request["sampling"] (a
        SamplingConfig's fields, as a dict) says; with a token_callback (one sample), each token goes to it
        as soon as it is sampled. The arithmetic is in the sampling dtype: a mixed training precision's
        autocast (which Lightning also opens around predict) is turned off. On a GPU each token replays a
        captured decode step (generate's cuda_graph); on the CPU, with request["compiled_step"], each token
        runs one compiled step (generate's compiled_step)."""
        prompts = [request["prompt_ids"]] * request["num_samples"]
        sampling = SamplingConfig(**request["sampling"])
        model = self._decoding_model(sampling.torch_dtype)
        cuda_graph = self.device.type == "cuda"  # one replayed decode step per token: 5x on an H200
        compiled = request.get("compiled_step", False) and self.device.type == "cpu"  # opt-in
        step = {"cuda_graph": cuda_graph, "compiled_step": compiled}
        with torch.autocast(self.device.type, enabled=False):
            if self.token_callback is None:
                return generate(model, prompts, sampling, **step)
            completion = []
            for (token,) in generate_steps(model, prompts[:1], sampling, **step):
                completion.append(token)
                self.token_callback(token)
            return [completion]

    def on_predict_start(self) -> None:
        self._decoding = None  # the weights may have changed since the last predict

    def _decoding_model(self, dtype: torch.dtype | None) -> TransformerLM:
        """The model in the layout and dtype (None: its own) generation runs, converted once per predict
        run."""
        if self._decoding is None or self._decoding[0] != dtype:
            self._decoding = (dtype, for_decoding(self.model, dtype))
        return self._decoding[1]

    def _muon(self, settings: dict[str, Any]) -> Muon:
        """Muon for the hidden matrices, AdamW for the rest, set up for the strategy: under DDP the ranks
        share the Newton–Schulz work; under FSDP the matrices are flat pieces, gathered whole for it (their
        whole shapes are those the model was built with)."""
        sharded = type(getattr(attached_trainer(self), "strategy", None)).__name__ == "FSDPStrategy"
        whole_shapes = None
        if sharded:
            named = self.model.named_parameters()
            whole_shapes = {p: self._built_shapes[n.replace(FSDP_PREFIX, "")] for n, p in named}
        groups = muon_param_groups(self.model, whole_shapes)
        rank_zero_info("optimizer groups:\n" + describe_groups(groups))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        group = torch.distributed.group.WORLD if distributed else None
        return Muon(
            groups,
            momentum=self.hparams.muon_momentum,
            compile=self.hparams.compile,
            process_group=group,
            whole_shapes=whole_shapes,
            **settings,
        )

    def _cycle(self) -> int:
        """The schedule's length in optimizer steps: cosine_cycle_iters, or the run's max_steps."""
        cycle = self.hparams.cosine_cycle_iters or self.trainer.max_steps
        if cycle is None or cycle <= 0:
            raise UserError(
                "the learning-rate schedule needs a length: set train_tokens or model.cosine_cycle_iters"
            )
        return cycle

    def _lr_factor(self, step: int) -> float:
        """The learning rate at `step` over lr_max: LambdaLR multiplies lr_max (the groups' initial lr) by
        it. It reads the settings at each call, so those a resume changes apply from its first step."""
        hp, cycle = self.hparams, self._cycle()
        if hp.schedule == "wsd":
            decay_iters = round(hp.wsd_decay_fraction * cycle)
            return wsd_lr(step, hp.lr_max, hp.lr_min, hp.warmup_iters, cycle, decay_iters) / hp.lr_max
        return cosine_lr(step, hp.lr_max, hp.lr_min, hp.warmup_iters, cycle) / hp.lr_max

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming keeps the optimizer state and the schedule's position, and runs the schedule of this
        run's settings: the saved learning rates are recomputed from them (the same values when they did
        not change; lmproject.lit.cli applies a changed lr_max, warmup, ... to a resumed run)."""
        trainer = attached_trainer(self)
        if trainer is None or trainer.state.fn != "fit":  # load_from_checkpoint, validate, ...: no schedule
            return
        lr_max = self.hparams.lr_max
        for scheduler in checkpoint.get("lr_schedulers", []):
            step = scheduler["last_epoch"]
            scheduler["base_lrs"] = [lr_max] * len(scheduler["base_lrs"])
            scheduler["_last_lr"] = [lr_max * self._lr_factor(step)] * len(scheduler["base_lrs"])
            for optimizer in checkpoint.get("optimizer_states", []):
                for group in optimizer["param_groups"]:
                    group["initial_lr"], group["lr"] = lr_max, lr_max * self._lr_factor(step)

    def configure_optimizers(self):
        hp = self.hparams
        self._cycle()  # refuse a schedule without a length before building anything
        settings = dict(lr=hp.lr_max, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay)
        optimizer = self._muon(settings) if hp.optimizer == "muon" else AdamW(self.parameters(), **settings)
        schedule = LambdaLR(optimizer, lambda step: self._lr_factor(step))  # a function: not saved
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
