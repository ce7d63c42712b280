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

This module is the scoring; the command line, which reads a run's config and checkpoint, is
lmproject.lit.evaluate_cli.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmproject.errors import UserError
from lmproject.nn import TransformerLM, token_losses
from lmproject.tokenizer import Tokenizer
from lmproject.tokenizer.files import iter_text_blocks
from lmproject.training.data import windows

_CHUNK = 1 << 22  # tokens per pass when checking ids and counting bytes of a token file


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


def encode_text_file(tokenizer: Tokenizer, path: Path) -> np.ndarray:
    """The ids of a UTF-8 text file (invalid UTF-8 is a UserError naming the byte offset)."""
    if not path.is_file():
        raise UserError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    return np.fromiter(tokenizer.encode_iterable(iter_text_blocks(path)), dtype=np.int64)


def token_bytes(tokens: np.ndarray, tokenizer: Tokenizer, path: Path) -> int:
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
