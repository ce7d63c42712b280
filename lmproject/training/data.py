"""Token files and batches (plain PyTorch, no Lightning): memory-mapped token arrays, random training windows,
fixed validation windows. The Lightning data module over them is lmproject.lit.datamodule.

A token file is a flat array of token ids: `.npy` (what `lmproject-bpe encode` writes) or raw `.bin` with a
declared dtype. Files are memory-mapped, never read into RAM; a batch gathers its windows straight from disk.

Training batches are counter-based: batch k on DDP rank r comes from a generator seeded with (seed, r, k).
The whole sampler state is therefore (seed, batches drawn so far); it goes into checkpoints, a resumed run
draws exactly the batches the uninterrupted run would have, and dataloader worker w of W draws batches
w, w+W, w+2W, ... so the stream is the same for any number of workers. Validation is a fixed set of evenly
spaced windows, so val loss is comparable across runs and resumes, and each window counts once on any
number of devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lmproject.errors import UserError, check_regular_file
from lmproject.settings import TOKEN_DTYPES

NPY_MAGIC = b"\x93NUMPY"
ID_CHECK_CHUNK_TOKENS = 1 << 22  # 8-16 MB read at a time: bounds the memory whatever the file size


def open_tokens(path: str | Path, dtype: str | None = None) -> np.ndarray:
    """Memory-map a token file: `.npy` by its header, anything else as raw `dtype` (required for `.bin`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a token file")
    check_regular_file(path, "token file")
    if not path.is_file():
        raise UserError(f"{path}: token file not found")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise UserError(f"{path}: not a readable .npy array ({err})") from None
        if dtype is not None and str(tokens.dtype) != dtype:
            raise UserError(f"{path}: holds {tokens.dtype} token ids but the config declares dtype {dtype}")
    else:
        if dtype is None:
            raise UserError(
                f"{path}: raw token files need a declared dtype (one of {', '.join(TOKEN_DTYPES)})"
            )
        if dtype not in TOKEN_DTYPES:
            raise UserError(f"{path}: dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"{path}: token file is empty")
        with open(path, "rb") as file:
            if file.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise UserError(f"{path}: is a .npy file (it has a .npy header): name it {path.stem}.npy")
        itemsize = np.dtype(dtype).itemsize
        if size % itemsize:
            raise UserError(
                f"{path}: {size} bytes is not a whole number of {dtype} token ids ({itemsize} bytes each)"
            )
        tokens = np.memmap(path, dtype=dtype, mode="r")
    if tokens.ndim != 1:
        raise UserError(f"{path}: expected a 1-D array of token ids, got shape {tokens.shape}")
    if str(tokens.dtype) not in TOKEN_DTYPES:
        raise UserError(f"{path}: token ids must be {' or '.join(TOKEN_DTYPES)}, got {tokens.dtype}")
    return tokens


def check_tokens(tokens: np.ndarray, path: str | Path, context_length: int, vocab_size: int) -> None:
    """Fail early when a token file cannot feed this model: too short, or any id outside the vocabulary.

    Every id is checked, a chunk of the memory map at a time (np.max runs at about the memory's bandwidth:
    bench/RESULTS.md, "Token-file id check"); a bad id anywhere would otherwise fail mid-run.
    """
    if len(tokens) <= context_length + 1:
        raise UserError(
            f"{path}: {len(tokens)} tokens is too short for context_length={context_length} "
            f"(need more than {context_length + 1})"
        )
    for start in range(0, len(tokens), ID_CHECK_CHUNK_TOKENS):
        if int(np.asarray(tokens[start : start + ID_CHECK_CHUNK_TOKENS]).max()) >= vocab_size:
            _refuse_ids(tokens, path, vocab_size, start)


def _refuse_ids(tokens: np.ndarray, path: str | Path, vocab_size: int, start: int) -> None:
    """The error for a token file whose ids from chunk `start` on are not all below vocab_size: the first
    such id, how many more there are and the largest (a second pass over the rest of the file)."""
    count, largest, first = 0, 0, None
    for at in range(start, len(tokens), ID_CHECK_CHUNK_TOKENS):
        chunk = np.asarray(tokens[at : at + ID_CHECK_CHUNK_TOKENS])
        bad = np.flatnonzero(chunk >= vocab_size)
        if len(bad):
            first = at + int(bad[0]) if first is None else first
            count, largest = count + len(bad), max(largest, int(chunk.max()))
    more = f", nor are {count - 1:,} more, up to token id {largest}" if count > 1 else ""
    raise UserError(
        f"{path}: token id {int(tokens[first])} at position {first} is not below the vocab_size={vocab_size}"
        f"{more} (was the file encoded with a different tokenizer?)"
    )


def windows(tokens: np.ndarray, starts: np.ndarray, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[s : s+T] and next-token targets tokens[s+1 : s+T+1] for each start s, as int64."""
    rows = np.asarray(tokens[starts[:, None] + np.arange(context_length + 1)], dtype=np.int64)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


def random_starts(
    rng: np.random.Generator, num_tokens: int, batch_size: int, context_length: int
) -> np.ndarray:
    """Uniform window starts: every s with s + context_length + 1 <= num_tokens is equally likely."""
    return rng.integers(0, num_tokens - context_length, size=batch_size)


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (inputs, targets), each (batch_size, context_length), at uniformly random offsets."""
    if batch_size < 1 or context_length < 1:
        raise ValueError(f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}")
    if len(tokens) <= context_length:
        raise ValueError(f"{len(tokens)} tokens are too few for context_length={context_length}")
    rng = np.random.default_rng() if rng is None else rng
    x, y = windows(tokens, random_starts(rng, len(tokens), batch_size, context_length), context_length)
    return x.to(device), y.to(device)


class RandomWindows(IterableDataset):
    """An endless stream of training batches; batch k of rank r comes from a generator seeded (seed, r, k)."""

    def __init__(
        self,
        path: Path,
        dtype: str | None,
        batch_size: int,
        context_length: int,
        seed: int,
        rank: int,
        start: int,
    ):
        self.path, self.dtype = path, dtype
        self.batch_size, self.context_length = batch_size, context_length
        self.seed, self.rank, self.start = seed, rank, start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tokens = open_tokens(self.path, self.dtype)  # opened where iterated: each worker maps it itself
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        k = self.start + worker_id
        while True:
            rng = np.random.default_rng([self.seed, self.rank, k])
            yield windows(
                tokens,
                random_starts(rng, len(tokens), self.batch_size, self.context_length),
                self.context_length,
            )
            k += num_workers


class FixedWindows(Dataset):
    """`count` evenly spaced, non-random windows over a token file: the same validation set every time.

    Item i is (inputs, targets, weight). DDP splits the items evenly over the ranks, and a rank-count that
    does not divide the windows would make torch's DistributedSampler repeat some of them, which would count
    twice in the loss. So the set is padded to a multiple of `ranks` with copies of the first windows whose
    weight is 0: every window counts exactly once, whatever the device count, and every rank still runs
    the same number of batches (DDP's forward exchanges buffers, so an uneven count would hang).
    """

    def __init__(self, path: Path, dtype: str | None, context_length: int, count: int, ranks: int = 1):
        self.tokens = open_tokens(path, dtype)
        last_start = len(self.tokens) - context_length - 1
        self.starts = np.unique(np.linspace(0, last_start, count, dtype=np.int64))
        self.context_length = context_length
        self.padded_length = -(-len(self.starts) // ranks) * ranks

    def __len__(self) -> int:
        return self.padded_length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        real = i < len(self.starts)
        start = self.starts[i % len(self.starts)]
        x, y = windows(self.tokens, np.array([start]), self.context_length)
        return x[0], y[0], torch.tensor(1.0 if real else 0.0)
