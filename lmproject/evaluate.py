"""`lmproject evaluate`: loss, perplexity and bits per byte of a checkpoint on every token of a file.

    lmproject evaluate --config CFG --ckpt_path PATH|last (--text FILE | --tokens FILE.npy)
        [--stride N | --documents] [--batch_size B] [--output results.json]

Two conventions:

- The file as one text (the default). Unlike `validate`, which averages a fixed sample of windows, every
  token of the file but the first is scored exactly once. Windows of context_length tokens start every
  `stride` tokens (the last one is moved back to end with the file); the first window scores all its tokens,
  each later one only the tokens past the previous window, so every token is predicted from at least
  context_length - stride tokens of context, and at most context_length. The default stride, half the
  context, gives every token at least half a context for twice the work of non-overlapping windows
  (stride = context_length, the cheapest, gives the first tokens of each window almost no context).
- `--documents`: lm-evaluation-harness's rolling loglikelihood (its `loglikelihood_rolling`, as in the
  wikitext task). The file is split at `<|endoftext|>` into documents, each scored on its own: every token
  of a document is predicted, the first one from `<|endoftext|>` alone; non-overlapping windows of
  context_length predictions (lm-eval's get_rolling_token_windows with context_len=1, then
  make_disjoint_window), the last one moved back to end with the document so that its predictions have as
  much preceding context as fits. That is the first convention with stride = context_length over
  `<|endoftext|>` + document, once per document. Only the documents' bytes count (not the separators').

bits_per_byte = total nats / ln 2 / bytes, where bytes is the UTF-8 size of the text (--text) or of the
tokens' text (--tokens), so that models with different tokenizers compare; in the first convention the
file's first token is context only. bf16 autocast is used when the config trains in bf16 (and the device
has it, as for `fit`). Only the scored positions go through ln_final and lm_head.

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


Plan = tuple[np.ndarray, np.ndarray, int]  # window_plan's (starts, first_scored, length)


def score(
    model: TransformerLM,
    tokens: np.ndarray,
    stride: int,
    batch_size: int,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> float:
    """Total negative log-likelihood (nats) of tokens[1:] under the model, windows as in window_plan."""
    plan = window_plan(len(tokens), model.config.context_length, stride)
    return _score_plans(model, tokens, [plan], batch_size, autocast, progress)


def split_documents(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """The documents between `<|endoftext|>` ids (eos_id), empty ones left out."""
    bounds = [-1, *np.flatnonzero(np.asarray(tokens) == eos_id).tolist(), len(tokens)]
    return [tokens[a + 1 : b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a + 1]


def score_documents(
    model: TransformerLM,
    documents: list[np.ndarray],
    eos_id: int,
    batch_size: int,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> float:
    """Total negative log-likelihood (nats) of every token of every document, each document scored alone
    after `<|endoftext|>` in non-overlapping windows (lm-eval's rolling loglikelihood, see the module's
    docstring). Windows of the same length from all documents share batches."""
    context_length = model.config.context_length
    lengths = np.array([len(document) + 1 for document in documents])
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    stream = np.full(int(lengths.sum()), eos_id, dtype=np.int64)  # each document with EOS in front
    groups: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for document, offset, length in zip(documents, offsets, lengths, strict=True):
        stream[offset + 1 : offset + length] = document
        starts, first_scored, window = window_plan(int(length), context_length, context_length)
        group = groups.setdefault(window, ([], []))
        group[0].append(starts + offset)
        group[1].append(first_scored)
    plans = [
        (np.concatenate(starts), np.concatenate(first), window) for window, (starts, first) in groups.items()
    ]
    return _score_plans(model, stream, plans, batch_size, autocast, progress)


def _score_plans(
    model: TransformerLM,
    tokens: np.ndarray,
    plans: list[Plan],
    batch_size: int,
    autocast: torch.dtype | None,
    progress: bool,
) -> float:
    """Total negative log-likelihood (nats) of the positions the plans' windows score."""
    device = model.lm_head.weight.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    targets_in_all = sum(int((length - first).sum()) for _, first, length in plans)
    bar = tqdm(total=targets_in_all, unit="tok", unit_scale=True, desc="evaluate", disable=not progress)
    with (
        bar,
        torch.inference_mode(),
        torch.autocast(device.type, autocast or torch.float32, enabled=bool(autocast)),
    ):
        for starts, first_scored, length in plans:
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


def results(
    nats: float, tokens: int, size: int, stride: int, checkpoint: str, documents: int | None = None
) -> dict:
    """The figures `evaluate` prints and writes (with the number of documents under --documents)."""
    loss = nats / tokens
    return {
        "tokens": tokens,
        "bytes": size,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nats / math.log(2) / size,
        "stride": stride,
        "checkpoint": checkpoint,
        **({} if documents is None else {"documents": documents}),
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
