"""`lmproject evaluate`: loss, perplexity and bits per byte of a checkpoint on every token of a file.

    lmproject evaluate --config CFG --ckpt_path PATH|last (--text FILE | --tokens FILE.npy)
        [--stride N] [--batch_size B] [--output results.json]

Unlike `validate`, which averages a fixed sample of windows, every token of the file but the first is scored
exactly once. Windows of context_length tokens start every `stride` tokens (the last one is moved back to end
with the file); the first window scores all its tokens, each later one only the tokens past the previous
window, so every token is predicted from at least context_length - stride tokens of context, and at most
context_length. The default stride, half the context, gives every token at least half a context for twice
the work of non-overlapping windows (stride = context_length, the cheapest, gives the first tokens of each
window almost no context). Only the scored positions go through ln_final and lm_head.

bits_per_byte = total nats / ln 2 / bytes, where bytes is the UTF-8 size of the text (--text) or of the
tokens' text (--tokens), so that models with different tokenizers compare; the first token is context only.
bf16 autocast is used when the config trains in bf16 (and the device has it, as for `fit`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmproject.atomic import atomic_write, check_writable
from lmproject.data import open_tokens, windows
from lmproject.errors import UserError, run_cli
from lmproject.nn import TransformerLM, token_losses
from lmproject.tokenizer import Tokenizer
from lmproject.tokenizer.files import iter_text_blocks

_CHUNK = 1 << 22  # tokens per pass when checking ids and counting bytes of a token file
AUTOCAST = {"bf16": torch.bfloat16, "16": torch.float16}  # Lightning precision's prefix -> autocast dtype


def window_plan(num_tokens: int, context_length: int, stride: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts, first_scored, length): where each window starts, the first of its positions it scores, and
    the windows' common length (context_length, or less for a file shorter than one window).

    >>> window_plan(10, 4, 2)
    (array([0, 2, 4, 5]), array([0, 2, 2, 3]), 4)
    """
    length = min(context_length, num_tokens - 1)
    last = num_tokens - 1 - length
    starts = np.arange(0, last + 1, stride)
    if starts[-1] != last:
        starts = np.append(starts, last)
    first_scored = np.zeros_like(starts)
    first_scored[1:] = starts[:-1] + length - starts[1:]  # the targets the previous window did not reach
    return starts, first_scored, length


def score(
    model: TransformerLM,
    tokens: np.ndarray,
    stride: int,
    batch_size: int,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> float:
    """Total negative log-likelihood (nats) of tokens[1:] under the model, windows as in window_plan."""
    device = model.lm_head.weight.device
    starts, first_scored, length = window_plan(len(tokens), model.config.context_length, stride)
    total = torch.zeros((), dtype=torch.float64, device=device)
    bar = tqdm(total=len(tokens) - 1, unit="tok", unit_scale=True, desc="evaluate", disable=not progress)
    with (
        bar,
        torch.inference_mode(),
        torch.autocast(device.type, autocast or torch.float32, enabled=bool(autocast)),
    ):
        for at in range(0, len(starts), batch_size):
            x, y = windows(tokens, starts[at : at + batch_size], length)  # (batch, length) each
            first = first_scored[at : at + batch_size, None]
            rows, positions = np.nonzero(np.arange(length) >= first)  # the scored positions, row by row
            scored = torch.from_numpy(rows * length + positions).to(device)  # indices: no device sync
            hidden = model.hidden_states(x.to(device)).flatten(0, 1).index_select(0, scored)
            logits = model.lm_head(model.ln_final(hidden))  # (scored, vocab)
            targets = y.flatten().to(device).index_select(0, scored)
            total += token_losses(logits, targets).double().sum()
            bar.update(len(scored))
    return total.item()


def results(nats: float, tokens: int, size: int, stride: int, checkpoint: str) -> dict:
    """The figures `evaluate` prints and writes."""
    loss = nats / tokens
    return {
        "tokens": tokens,
        "bytes": size,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nats / math.log(2) / size,
        "stride": stride,
        "checkpoint": checkpoint,
    }


def main(argv: list[str]) -> int:
    """`lmproject evaluate ...` (argv without the command's name)."""
    return run_cli(lambda: _evaluate(argv), "lmproject")


def _parser() -> argparse.ArgumentParser:
    from lmproject.lit.cli import add_run_arguments  # Lightning's import is slow: only here

    parser = argparse.ArgumentParser(
        prog="lmproject evaluate",
        allow_abbrev=False,
        description="Loss, perplexity and bits per byte on every token of a file. Other --model.*/--data.*/"
        "--trainer.* arguments override the config, as for fit.",
    )
    add_run_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=Path, help="a UTF-8 text file, encoded with the run's tokenizer")
    source.add_argument("--tokens", type=Path, help="a token file (.npy) encoded with the run's tokenizer")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: context_length/2)")
    parser.add_argument("--batch_size", type=int, help="windows per forward (default: data.batch_size)")
    parser.add_argument("--output", type=Path, help="also write the results to this JSON file")
    return parser


def _evaluate(argv: list[str]) -> int:
    args, overrides = _parser().parse_known_args(argv)
    from lmproject.lit.cli import parse_run_config, resolve_checkpoint, runs_on_cpu
    from lmproject.lit.datamodule import TokenDataModule
    from lmproject.lit.module import LanguageModel

    config = parse_run_config(args.config, overrides)
    context_length = config.model.arch.context_length
    stride = max(1, context_length // 2) if args.stride is None else args.stride
    batch_size = config.data.batch_size if args.batch_size is None else args.batch_size
    if not 1 <= stride <= context_length:
        raise UserError(f"--stride must be between 1 and context_length={context_length}, got {stride}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if args.output is not None:
        check_writable(args.output)  # before the scoring, not after it
    path, checkpoint = resolve_checkpoint(args.ckpt_path, config)
    data = TokenDataModule(**config.data.as_dict())
    tokenizer = Tokenizer.from_dir(data.tokenizer_dir)
    vocab_size = config.model.arch.vocab_size
    if tokenizer.vocab_size > vocab_size:
        raise UserError(
            f"{data.tokenizer_dir}: the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
            f"vocab_size={vocab_size}: not the tokenizer this model was trained with"
        )
    if args.text is not None:
        tokens, size = _encode(tokenizer, args.text), args.text.stat().st_size
    else:
        tokens = open_tokens(args.tokens, data.dtype)
        size = _token_bytes(tokens, tokenizer, args.tokens)
    source = args.text or args.tokens
    if len(tokens) < 2:
        raise UserError(f"{source}: {len(tokens)} token(s): too short to score (at least 2 are needed)")

    module = LanguageModel(**config.model.as_dict())
    module.load_state_dict(checkpoint["state_dict"])
    if runs_on_cpu(config.trainer):
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise UserError(
            f"trainer.accelerator={config.trainer.accelerator}: no GPU here (use --trainer.accelerator cpu)"
        )
    model = module.model.to(device).eval()
    autocast = AUTOCAST.get(str(config.trainer.precision).split("-")[0])
    nats = score(model, tokens, stride, batch_size, autocast, progress=True)
    report = results(nats, len(tokens) - 1, size, stride, str(path))
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        with atomic_write(args.output) as file:
            file.write(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _encode(tokenizer: Tokenizer, path: Path) -> np.ndarray:
    """The ids of a UTF-8 text file (invalid UTF-8 is a UserError naming the byte offset)."""
    if not path.is_file():
        raise UserError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    return np.fromiter(tokenizer.encode_iterable(iter_text_blocks(path)), dtype=np.int64)


def _token_bytes(tokens: np.ndarray, tokenizer: Tokenizer, path: Path) -> int:
    """The UTF-8 size of the tokens' text; an id the tokenizer lacks is a UserError (another tokenizer's
    file)."""
    lengths = np.zeros(tokenizer.vocab_size + 1, dtype=np.int64)
    for token_id, token in tokenizer.vocab.items():
        lengths[token_id] = len(token)
    missing = np.ones_like(lengths, dtype=bool)
    missing[list(tokenizer.vocab)] = False
    missing[-1] = True  # every id past the tokenizer's lands here
    size = 0
    for start in range(0, len(tokens), _CHUNK):
        chunk = np.minimum(np.asarray(tokens[start : start + _CHUNK], dtype=np.int64), tokenizer.vocab_size)
        bad = np.flatnonzero(missing[chunk])
        if len(bad):
            where = start + int(bad[0])
            raise UserError(
                f"{path}: token id {int(tokens[where])} at position {where} is not in the tokenizer "
                f"(was the file encoded with a different tokenizer?)"
            )
        size += int(lengths[chunk].sum())
    return size
