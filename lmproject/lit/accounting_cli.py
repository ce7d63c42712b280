"""`lmproject accounting`: the command line over lmproject.accounting's figures and lmproject.memory's
prediction, for a run's config (its `model.arch` and training settings), a GPT-2 preset or flags. The
config's other model settings are checked as `fit` checks them (lmproject.lit.plain_config), so accounting
never reports on a model that training would refuse. Besides the time on the GPU it assumes (--peak-flops,
--mfu), it prints the time on this machine's own device at the matmul rate it measures there."""

from __future__ import annotations

import math
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import get_args, get_type_hints

from lmproject.accounting import (
    A100_FLOAT32,
    PRESETS,
    duration,
    read_config,
    report,
    steps_for_tokens,
    training_seconds,
)
from lmproject.errors import ArgumentParser, UserError, run_cli
from lmproject.lit.plain_config import check_model_section
from lmproject.matmul_rate import device_name, local_device, measure_matmul_flops
from lmproject.memory import memory_report
from lmproject.nn.config import ModelConfig


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="lmproject accounting",
        description="Parameters, FLOPs, AdamW memory and training time of a Transformer LM.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        type=Path,
        action="append",
        help="LightningCLI YAML whose `model: arch:` holds the architecture; repeat to layer overlays",
    )
    source.add_argument("--preset", choices=sorted(PRESETS), help="a GPT-2 shape instead of a config")
    types = get_type_hints(ModelConfig)
    for field in fields(ModelConfig):  # --vocab-size ... --logit-softcap: model.arch.*, overridden
        flag, kind = f"--{field.name.replace('_', '-')}", types[field.name]
        if kind is bool:
            p.add_argument(flag, action="store_true", default=None, help=f"set model.arch.{field.name} true")
        else:
            kind = next(k for k in get_args(kind) if k is not type(None)) if get_args(kind) else kind
            p.add_argument(flag, type=kind, help=f"model.arch.{field.name} (default: the config's)")
    p.add_argument(
        "--batch-size", type=int, help="sequences per device and micro-batch (default: the config's, else 1)"
    )
    p.add_argument(
        "--accumulation",
        type=int,
        help="micro-batches per optimizer step (default: the config's accumulate_grad_batches, else 1)",
    )
    p.add_argument(
        "--devices", type=int, help="devices in data parallel (default: the config's devices x nodes, else 1)"
    )
    p.add_argument("--memory-gb", type=float, default=80.0, help="accelerator memory, GB = 1e9 bytes")
    p.add_argument("--mfu", type=float, default=0.5, help="model FLOPs utilization, 0 < mfu <= 1")
    p.add_argument(
        "--peak-flops", type=float, default=A100_FLOAT32, help="peak FLOP/s (default A100 float32)"
    )
    p.add_argument(
        "--measure-seconds",
        type=float,
        default=1.0,
        help="time spent measuring this machine's float32 matmul rate for the local estimate (0: skip it)",
    )
    p.add_argument("--steps", type=int, help="default: the config's max_steps or train_tokens, else 1")
    p.add_argument(
        "--precision",
        help="for the predicted peak: 32-true or bf16-mixed (default: the config's, else 32-true)",
    )
    p.add_argument("--loss-chunk-tokens", type=int, help="for the predicted peak (default: the config's)")
    return p


def _count(flag: str, given: int | None, from_config: int | None) -> int:
    """The flag's value, else the config's, else 1; zero or negative is an error (never silently 1)."""
    value = given if given is not None else from_config
    if value is not None and value <= 0:
        source = flag if given is not None else f"{flag} (from the config)"
        raise UserError(f"{source} must be a positive integer, got {value}")
    return 1 if value is None else value


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    arch: dict = {}
    defaults: dict = {}
    if args.preset:
        arch = asdict(PRESETS[args.preset])
    if args.config:
        arch, defaults = read_config(args.config)
    for field in fields(ModelConfig):
        if getattr(args, field.name) is not None:
            arch[field.name] = getattr(args, field.name)
    missing = [f.name for f in fields(ModelConfig) if f.default is MISSING and f.name not in arch]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise UserError(f"missing model hyperparameters {flags} (give --config, --preset or the flags)")
    config = ModelConfig(**arch)
    check_model_section(config, defaults.get("model", {}))
    batch = _count("--batch-size", args.batch_size, defaults.get("batch_size"))
    accumulation = _count("--accumulation", args.accumulation, defaults.get("accumulation"))
    devices = _count("--devices", args.devices, defaults.get("devices"))
    steps = _count("--steps", args.steps, defaults.get("steps"))
    tokens = defaults.get("train_tokens")
    if args.steps is None and tokens:  # the config's train_tokens sets max_steps, as in `lmproject fit`
        steps = steps_for_tokens(tokens, batch, config.context_length, accumulation, devices)
    if args.loss_chunk_tokens is not None and args.loss_chunk_tokens < 1:
        raise UserError(f"--loss-chunk-tokens must be a positive integer, got {args.loss_chunk_tokens}")
    numbers = (args.mfu, args.peak_flops, args.memory_gb)
    if not (math.isfinite(args.measure_seconds) and args.measure_seconds >= 0):
        raise UserError(f"--measure-seconds must be a number >= 0, got {args.measure_seconds}")
    if not all(map(math.isfinite, numbers)) or not 0 < args.mfu <= 1 or min(numbers) <= 0:
        raise UserError("--mfu must be in (0, 1]; --peak-flops and --memory-gb must be positive and finite")
    if args.config and args.devices is None and defaults.get("devices") is None:
        print(
            "lmproject accounting: the config's trainer.devices is auto (every visible device): "
            "counting 1; give --devices N for more",
            file=sys.stderr,
        )
    print(report(config, batch, args.memory_gb, args.mfu, args.peak_flops, steps, accumulation, devices))
    if args.measure_seconds > 0:
        print(_local_estimate(config, batch * accumulation * devices, steps, args.measure_seconds))
    print()
    precision = args.precision or defaults.get("precision") or "32-true"
    chunk = (
        args.loss_chunk_tokens
        if args.loss_chunk_tokens is not None
        else defaults.get("model", {}).get("loss_chunk_tokens")
    )
    print(_predicted_peaks(config, batch, precision, chunk))
    return 0


def _local_estimate(config: ModelConfig, step_batch: int, steps: int, seconds: float) -> str:
    """The training time on this machine's device (one of them), if the run's FLOPs went at the float32
    matmul rate measured here for `seconds` (other programs' load lowers it)."""
    device = local_device()
    rate = measure_matmul_flops(device, seconds)
    time = training_seconds(config, step_batch, steps, 1.0, rate)
    return (
        f"training time on this machine: {device_name(device)}, at the float32 matmul rate measured now "
        f"({rate / 1e9:,.1f} GFLOP/s; a busy machine measures less): {duration(time)}"
    )


def _predicted_peaks(config: ModelConfig, batch: int, precision: str, loss_chunk_tokens: int | None) -> str:
    try:
        return memory_report(config, batch, precision, loss_chunk_tokens)
    except ValueError as err:
        raise UserError(str(err)) from None


def main(argv: list[str]) -> int:
    """`lmproject accounting ...` (argv without the command's name): print the accounting tables; bad input
    exits 2 with a one-line error."""
    return run_cli(lambda: _run(argv), "lmproject accounting")
