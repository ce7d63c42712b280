"""`lmproject fit|validate|test|predict`: LightningCLI with the project's defaults and up-front checks
(the other commands: lmproject.lit.commands).

Run layout (trainer.default_root_dir, e.g. runs/tinystories): checkpoints/ holds periodic checkpoints and
last.ckpt (the same directory on every resume, so `--ckpt_path last` finds it); logs/version_N/ holds each
invocation's metrics.csv and config.yaml.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from lmproject.accounting import steps_for_tokens
from lmproject.errors import DIVERGED, INTERRUPTED, TERMINATED, TIME_LIMIT, UserError, run_cli
from lmproject.lit.callbacks import RunCheckpoint, RunStop, RunStopped, ThroughputMonitor
from lmproject.lit.compat import set_max_steps
from lmproject.lit.datamodule import TokenDataModule
from lmproject.lit.module import LanguageModel, NonFiniteLossError
from lmproject.lit.plain_config import DEFAULT_RUN_DIR
from lmproject.lit.predict import (
    CompletionWriter,
    PredictOptions,
    TokenPrinter,
    add_predict_arguments,
    requests,
)
from lmproject.lit.progress import StepProgressBar
from lmproject.lit.resume import settings_kept_on_resume
from lmproject.lit.run_config import (
    max_time_seconds,
    one_line,
    prepare_words,
    resolve_checkpoint,
    runs_on_cpu,
)
from lmproject.lit.sharding import STATE_DICT_TYPES, fsdp_strategy, is_sharded_checkpoint
from lmproject.lit.summary import Ending, RunRecord, model_line, summary
from lmproject.precision import check_dtype, cpu_supports_bf16
from lmproject.run_lock import hold_run_lock
from lmproject.settings import check_settings
from lmproject.tokenizer import Tokenizer
from lmproject.training.checkpoint_files import find_last

T = TypeVar("T")
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
DESCRIPTION = (
    "Train, validate and sample small language models: fit, validate, test, predict (LightningCLI: "
    "`lmproject fit --help`); `lmproject accounting` (parameters, FLOPs, memory), `lmproject plot` "
    "(loss curves), `lmproject evaluate` (loss, perplexity, bits per byte of a file) and `lmproject "
    "export|import` (Hugging Face Llama folders) have their own --help. `--verbose` shows Lightning's "
    "start-up lines, which every command but fit hides."
)


class LMCLI(LightningCLI):
    """LightningCLI with the project's defaults, links and up-front checks."""

    _initial_weights: dict[str, torch.Tensor] | None = None  # fit from a weights-only checkpoint
    _kept_settings: dict[str, Any] = {}  # model settings that differ from the checkpoint's and apply

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # errors become one-line messages in main()
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--train_tokens",
            type=int | None,
            default=None,
            help="Training token budget: max_steps = tokens / (batch x context x accumulation x devices).",
        )
        parser.link_arguments("model.arch.vocab_size", "data.vocab_size")
        parser.link_arguments("model.arch.context_length", "data.context_length")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 1000})
        parser.add_lightning_class_args(ThroughputMonitor, "throughput")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        # a private method of LightningCLI: see lmproject.lit.compat.PRIVATE_OVERRIDES
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            add_predict_arguments(parser)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        words = sys.argv[1:] if args is None else args
        self._words = list(words)
        try:
            self.config = parser.parse_args(prepare_words(words))
        except ArgumentError as err:
            raise UserError(one_line(err, valid_keys(parser, words))) from None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        check_settings("", {name: config.get(name) for name in ("train_tokens", "seed_everything")})
        for section in ("model.arch", "model", "data", "trainer", "throughput"):
            check_settings(section, config[section].as_dict())
        if subcommand == "predict":
            self.sampling = PredictOptions.from_config(config)
        self._fill_run_layout(config)
        self._choose_precision(config.trainer)
        self._check_strategy(config.trainer)
        self._resolve_checkpoint(config, subcommand)

    @staticmethod
    def _fill_run_layout(config: Namespace) -> None:
        root = config.trainer.default_root_dir or DEFAULT_RUN_DIR
        config.trainer.default_root_dir = root
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        csv = Namespace(class_path=CSV_LOGGER, init_args=Namespace(save_dir=root, name="logs"))
        logger = config.trainer.logger
        if logger is None or logger is True:
            config.trainer.logger = csv
            return
        if logger is False:
            return
        loggers = logger if isinstance(logger, list) else [logger]
        for each in loggers:
            if isinstance(each, Namespace) and each.get("init_args.save_dir", "") is None:
                each.init_args.save_dir = root  # e.g. configs/wandb.yaml: files under the run directory
        if not any(isinstance(each, Namespace) and each.class_path == CSV_LOGGER for each in loggers):
            config.trainer.logger = [csv, *loggers]  # metrics.csv in every run: `lmproject plot` reads it

    @staticmethod
    def _choose_precision(trainer: Namespace) -> None:
        if str(trainer.precision).startswith("bf16") and runs_on_cpu(trainer) and not cpu_supports_bf16():
            print(
                f"lmproject: this CPU has no native bfloat16: running in float32 (precision 32-true, not "
                f"{trainer.precision})",
                file=sys.stderr,
            )
            trainer.precision = "32-true"

    @staticmethod
    def _check_strategy(trainer: Namespace) -> None:
        if trainer.get("strategy") in STATE_DICT_TYPES and runs_on_cpu(trainer):
            raise UserError(
                f"--trainer.strategy {trainer.strategy} needs CUDA GPUs (Lightning's FSDP refuses the CPU); "
                "on CPUs use the default strategy (DDP across processes with --trainer.devices N)"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with the project's parts in place of Lightning's: `--trainer.strategy fsdp` (or
        fsdp_sharded) becomes lmproject.lit.sharding's FSDPStrategy (one shard unit per TransformerBlock,
        and per RMSNorm under Muon); `--trainer.max_time` goes to RunStop (a fresh budget per run, and its
        own exit status); the progress bar is StepProgressBar (a plain TQDMProgressBar in a config becomes
        one, same refresh)."""
        config = self.config_init.get(str(self.subcommand), self.config_init)  # run=False: no subcommand
        trainer = config.get("trainer", {})
        strategy = kwargs.get("strategy", trainer.get("strategy"))
        if strategy in STATE_DICT_TYPES:
            kwargs["strategy"] = fsdp_strategy(strategy, config.get("model", {}).get("optimizer", "adamw"))
        # RunRecord first: it counts the step that RunStop may end the fit on; RunStop after the config's
        # callbacks and before the checkpoint and throughput ones (which then see a time-limited last step)
        callbacks = [RunRecord()]
        for callback in trainer.get("callbacks") or []:
            plain_bar = type(callback) is TQDMProgressBar
            callbacks.append(StepProgressBar(refresh_rate=callback.refresh_rate) if plain_bar else callback)
        if trainer.get("enable_progress_bar", True) is not False and not any(
            isinstance(callback, ProgressBar) for callback in callbacks
        ):
            callbacks.append(StepProgressBar())
        callbacks.append(RunStop(max_time_seconds(trainer.get("max_time"))))
        kwargs["max_time"] = None
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _resolve_checkpoint(self, config: Namespace, subcommand: str | None) -> None:
        """`last` becomes the newest last*.ckpt of the run (fit starts fresh when there is none); the file is
        then checked before anything is built. `fit` without a checkpoint refuses a run that has some, rather
        than start over on top of it; `fit` from a weights-only checkpoint (`lmproject import` writes one)
        starts a new run from those weights."""
        if not config.get("ckpt_path"):
            checkpoints = Path(config.checkpoint.dirpath)
            if subcommand == "fit" and checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
                raise UserError(
                    f"{checkpoints} has checkpoints: resume with --ckpt_path last, "
                    "or choose another --trainer.default_root_dir"
                )
            if subcommand in ("validate", "test"):  # the loss of random weights is no measurement
                raise UserError(
                    f"{subcommand} needs --ckpt_path (last, or a .ckpt file): without it the untrained "
                    "model would be scored"
                )
            return
        if (
            subcommand == "fit"
            and config.ckpt_path == "last"
            and find_last(Path(config.checkpoint.dirpath)) is None
        ):
            print(
                f"lmproject: no checkpoint in {config.checkpoint.dirpath} yet: starting fresh",
                file=sys.stderr,
            )
            config.ckpt_path = None
            return
        if subcommand == "fit" and config.trainer.get("strategy") in STATE_DICT_TYPES:
            sharded = find_last(Path(config.checkpoint.dirpath)) if config.ckpt_path == "last" else None
            sharded = sharded or Path(config.ckpt_path)
            if is_sharded_checkpoint(sharded):
                config.ckpt_path = str(sharded)
                return  # FSDP reads its shards itself
        path, checkpoint = resolve_checkpoint(config.ckpt_path, config)
        config.ckpt_path = str(path)
        self._kept_settings = settings_kept_on_resume(
            config.model.as_dict(), checkpoint.get("hyper_parameters") or {}, refuse=subcommand == "fit"
        )
        if subcommand == "fit" and "optimizer_states" not in checkpoint:
            print(
                f"lmproject: {path} holds weights only: training starts from them at step 0, with a fresh "
                "optimizer and learning-rate schedule",
                file=sys.stderr,
            )
            self._initial_weights = checkpoint["state_dict"]
            config.ckpt_path = None

    def before_instantiate_classes(self) -> None:
        """Lightning has replaced the model settings with the checkpoint's (to resume exactly): put back
        the ones this run may change (settings_kept_on_resume)."""
        if self._kept_settings:
            model = self.config[self.config.subcommand].model
            for name, value in self._kept_settings.items():
                model[name] = value

    def before_fit(self) -> None:
        self.datamodule.check_files("fit")  # before anything is written (logs, config.yaml)
        if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("RANK", 0)) == 0:
            hold_run_lock(self.trainer.default_root_dir)  # the other ranks run under rank 0's lock
        print(model_line(self.model.model.config), file=sys.stderr)
        if self._initial_weights is not None:
            self.model.load_state_dict(self._initial_weights)
        trainer = self.trainer
        if isinstance(trainer.val_check_interval, int):  # Lightning counts batches; the project, steps
            trainer.val_check_interval *= trainer.accumulate_grad_batches
        tokens = self.config.fit.train_tokens
        if tokens is None:
            return
        if trainer.max_steps != -1:
            raise UserError(
                "set either train_tokens or trainer.max_steps, not both (use --train_tokens null)"
            )
        set_max_steps(
            trainer,
            steps_for_tokens(
                tokens,
                self.datamodule.batch_size,
                self.datamodule.context_length,
                trainer.accumulate_grad_batches,
                trainer.world_size,
            ),
        )

    def before_validate(self) -> None:
        self.datamodule.check_files("validate")

    def before_test(self) -> None:
        self.datamodule.check_files("test")

    def _callback(self, kind: type[T]) -> T:
        return next(c for c in self.trainer.callbacks if isinstance(c, kind))

    def _run_subcommand(self, subcommand: str) -> None:
        """Every way a command can end, as its exit status, with the fit summary for fit:
        - Lightning answers Ctrl-C outside the training loop with exit status 1 (and ignores Ctrl-C from
          then on): 130, the status of an interrupted command, and Ctrl-C restored;
        - Ctrl-C or SIGTERM in training (RunStopped): 130 or 143; SIGTERM elsewhere (Lightning's
          SIGTERMException, a SystemExit with status 0): 143;
        - divergence (NonFiniteLossError): 3, raised on to main;
        - the time limit: 124 (after_fit).
        (A private method of LightningCLI: see lmproject.lit.compat.PRIVATE_OVERRIDES.)"""
        try:
            super()._run_subcommand(subcommand)
        except RunStopped as stop:
            self._print_summary(Ending(stop.reason, resume=True), str(stop.saved))
            raise SystemExit(stop.status) from None
        except NonFiniteLossError:
            if subcommand == "fit":
                self._print_summary(Ending("diverged", resume=False), self._last_checkpoint())
            raise
        except SIGTERMException:
            print(f"lmproject: {subcommand} terminated by SIGTERM", file=sys.stderr)
            raise SystemExit(TERMINATED) from None
        except SystemExit as exit_:
            if exit_.code != 1 or not self._callback(RunStop).keyboard_interrupt:
                raise
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(f"lmproject: {subcommand} interrupted", file=sys.stderr)
            raise SystemExit(INTERRUPTED) from None

    def _last_checkpoint(self) -> str | None:
        path = getattr(self.trainer.checkpoint_callback, "last_model_path", "")
        return path or None

    def _print_summary(self, ending: Ending, checkpoint: str | None) -> None:
        if self.trainer.is_global_zero:
            print(
                summary(self.trainer, self._callback(RunRecord), ending, checkpoint, self._words), flush=True
            )

    def after_fit(self) -> None:
        stop = self._callback(RunStop)
        if stop.stopped is not None:  # stopped by a signal where no validation followed
            self._print_summary(Ending(stop.stopped.reason, resume=True), str(stop.saved))
            raise SystemExit(stop.stopped.status)
        if stop.time_capped:
            limit = self.config.fit.trainer.get("max_time")
            ending = Ending(f"stopped by the time limit (trainer.max_time {limit})", resume=True)
            self._print_summary(ending, str(stop.saved))
            if self.trainer.is_global_zero:
                print(
                    "  a resumed run gets the whole time limit again; --trainer.max_time null removes it",
                    flush=True,
                )
            raise SystemExit(TIME_LIMIT)
        done = self.trainer.global_step >= self.trainer.max_steps > 0
        ending = Ending("finished" if done else "stopped", resume=not done)
        self._print_summary(ending, self._last_checkpoint())

    def predict(
        self, model: LanguageModel, datamodule: TokenDataModule, ckpt_path: str | None = None, **_
    ) -> None:
        """Sample completions of the prompts with the model (from ckpt_path) and print/write them."""
        options = self.sampling
        tokenizer = Tokenizer.from_dir(datamodule.tokenizer_dir)
        if tokenizer.vocab_size > model.model.config.vocab_size:
            raise UserError(
                f"{datamodule.tokenizer_dir}: tokenizer has {tokenizer.vocab_size} ids, "
                f"more than the model's vocab_size={model.model.config.vocab_size}"
            )
        if ckpt_path is None:
            print("lmproject: no --ckpt_path: sampling from an untrained model", file=sys.stderr)
        options.check_model(model.model, self.trainer.strategy.root_device)
        check_dtype(options.sampling.torch_dtype, self.trainer.strategy.root_device, "predict: --dtype")
        prompts = requests(options, tokenizer)
        single = len(prompts) == 1 and options.num_samples == 1 and self.trainer.world_size == 1
        stream = single and sys.stdout.isatty() if options.stream is None else options.stream
        if stream and not single:
            raise UserError("predict: --stream needs one prompt, --num_samples 1 and one device")
        # Lightning's predict sampler stops a rank that gets no request; the copies are written once
        prompts += [prompts[-1]] * (self.trainer.world_size - len(prompts))
        if stream:
            model.token_callback = TokenPrinter(tokenizer, prompts[0]["prompt"])
            if self.trainer.progress_bar_callback is not None:
                self.trainer.progress_bar_callback.disable()
        self.trainer.callbacks.append(CompletionWriter(tokenizer, options, ckpt_path))
        loader = DataLoader(prompts, batch_size=None, collate_fn=lambda request: request)
        warnings.filterwarnings("ignore", "Couldn't infer the batch indices")  # one request per batch: none
        self.trainer.predict(model, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=False)


class _ConfigOnly(LMCLI):
    """Parses and completes a run's config as LMCLI does, and builds nothing from it."""

    def instantiate_classes(self) -> None:
        pass


def parse_run_config(config_files: list[str], overrides: list[str]) -> Namespace:
    """The config of `--config FILE ...` plus `--model.* --data.* --trainer.*` overrides, completed as
    `fit` completes it (run directory, checkpoint directory, precision)."""
    argv = [word for path in config_files for word in ("--config", path)] + overrides
    with warnings.catch_warnings():  # it warns that argv differs from sys.argv: by design here
        warnings.filterwarnings("ignore", "LightningCLI's args parameter")
        return run_lightning(argv, run=False, cli_class=_ConfigOnly).config


def run_lightning(argv: list[str] | None, run: bool = True, cli_class: type[LMCLI] = LMCLI) -> LMCLI:
    """Parse argv (None: the command line), build the trainer, model and data, and run the subcommand
    (run=False: parse and build only, argv without a subcommand)."""
    caller_group = torch.distributed.is_available() and torch.distributed.is_initialized()  # by the caller
    try:
        return cli_class(
            LanguageModel,
            TokenDataModule,
            args=argv,
            run=run,
            parser_kwargs={"description": DESCRIPTION},
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "plugins": [{"class_path": "lmproject.lit.checkpoints.AtomicCheckpointIO"}],
                "enable_model_summary": False,  # fit prints model_line instead
                "check_val_every_n_epoch": None,
                "val_check_interval": 1000,
                "max_epochs": -1,
            },
        )
    except ArgumentError as err:
        raise UserError(one_line(err)) from None
    except MisconfigurationException as err:  # Lightning's word for a bad Trainer or callback setting
        raise UserError(one_line(err)) from None
    finally:
        # A multi-process run leaves the process group it made here, also when it fails (divergence, bad
        # input), not at interpreter exit, where gloo's threads sometimes aborted a rank with SIGABRT after
        # it had finished its work ("terminate called without an active exception"). Best effort: a
        # failure to leave must not replace the run's own result or error.
        if not caller_group and torch.distributed.is_available() and torch.distributed.is_initialized():
            with contextlib.suppress(RuntimeError, ValueError):
                torch.distributed.destroy_process_group()


def valid_keys(parser: LightningArgumentParser, words: list[str]) -> list[str]:
    """Every key the parser accepts for the subcommand in words (all of them without one)."""
    subcommands = parser._subcommands_action  # jsonargparse's; None without subcommands
    if subcommands is not None:
        chosen = next((word for word in words if word in subcommands.choices), None)
        parser = subcommands.choices.get(chosen, parser)
    return sorted(
        action.dest for action in parser._actions if action.dest and action.dest not in ("help", "config")
    )


def main(argv: list[str]) -> int:
    """`lmproject fit|validate|test|predict ...`; divergence exits with status 3 (a result of a run, not
    bad input)."""

    def run() -> LMCLI:
        try:
            return run_lightning(argv)
        except NonFiniteLossError as err:
            print(f"lmproject: error: {err}", file=sys.stderr)
            raise SystemExit(DIVERGED) from None

    run_cli(run, "lmproject")
    return 0
