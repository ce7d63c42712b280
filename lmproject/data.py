"""Token files and batches: memory-mapped token arrays, random training windows, fixed validation windows.

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

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from lmproject.errors import UserError
from lmproject.settings_check import TOKEN_DTYPES, check_settings

NPY_MAGIC = b"\x93NUMPY"
VOCAB_SAMPLE_CHUNKS = 16
VOCAB_SAMPLE_CHUNK_TOKENS = 1 << 16


def open_tokens(path: str | Path, dtype: str | None = None) -> np.ndarray:
    """Memory-map a token file: `.npy` by its header, anything else as raw `dtype` (required for `.bin`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a token file")
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
    """Fail early when a token file cannot feed this model: too short, or ids outside the vocabulary.

    The id check reads a few evenly spaced chunks (about a million tokens), not the whole file.
    """
    if len(tokens) <= context_length + 1:
        raise UserError(
            f"{path}: {len(tokens)} tokens is too short for context_length={context_length} "
            f"(need more than {context_length + 1})"
        )
    starts = np.linspace(
        0, max(len(tokens) - VOCAB_SAMPLE_CHUNK_TOKENS, 0), VOCAB_SAMPLE_CHUNKS, dtype=np.int64
    )
    for start in np.unique(starts):
        chunk = np.asarray(tokens[start : start + VOCAB_SAMPLE_CHUNK_TOKENS])
        top = int(chunk.max())
        if top >= vocab_size:
            where = int(start + chunk.argmax())
            raise UserError(
                f"{path}: token id {top} at position {where} is not below the vocab_size={vocab_size} "
                "(was the file encoded with a different tokenizer?)"
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


class TokenDataModule(L.LightningDataModule):
    """Training and validation token files for LightningCLI's `data:` section.

    vocab_size and context_length are linked from the model section (set once, in `model:`).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str,
        batch_size: int,
        vocab_size: int,
        context_length: int,
        dtype: str | None = None,
        val_windows: int = 512,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer_dir: str | None = None,
        test_path: str | None = None,
    ):
        """
        Args:
            train_path: training token file (.npy, or raw .bin with `dtype`).
            val_path: validation token file.
            batch_size: sequences per training step on each device (before gradient accumulation).
            vocab_size: linked from model.vocab_size.
            context_length: linked from model.context_length.
            dtype: uint16 or uint32; required for raw .bin files, checked against .npy files.
            val_windows: how many fixed validation windows to evaluate.
            val_batch_size: validation batch size (default: batch_size).
            num_workers: dataloader worker processes for training batches.
            seed: seed of the training-window stream.
            tokenizer_dir: the tokenizer that encoded the files (default: `tokenizer/` next to train_path);
                used by `lmproject predict`.
            test_path: token file for `lmproject test` (default: val_path).
        """
        super().__init__()
        settings = {"batch_size": batch_size, "val_windows": val_windows, "val_batch_size": val_batch_size}
        check_settings("data", {**settings, "num_workers": num_workers, "seed": seed, "dtype": dtype})
        self.train_path, self.val_path, self.dtype = Path(train_path), Path(val_path), dtype
        self.test_path = Path(test_path) if test_path else self.val_path
        self.batch_size = batch_size
        self.val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.vocab_size, self.context_length = vocab_size, context_length
        self.val_windows, self.num_workers, self.seed = val_windows, num_workers, seed
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else self.train_path.parent / "tokenizer"
        self.batches_drawn = 0

    def setup(self, stage: str) -> None:
        paths = {
            "fit": [self.train_path, self.val_path],
            "validate": [self.val_path],
            "test": [self.test_path],
        }
        for path in paths.get(stage, []):
            check_tokens(open_tokens(path, self.dtype), path, self.context_length, self.vocab_size)

    def _loader_args(self) -> dict:
        on_gpu = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
        return {
            "num_workers": self.num_workers,
            "pin_memory": on_gpu,
            "persistent_workers": self.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        stream = RandomWindows(
            self.train_path,
            self.dtype,
            self.batch_size,
            self.context_length,
            self.seed,
            rank,
            self.batches_drawn,
        )
        return DataLoader(stream, batch_size=None, **self._loader_args())

    def _fixed_loader(self, path: Path) -> DataLoader:
        ranks = self.trainer.world_size if self.trainer is not None else 1
        fixed = FixedWindows(path, self.dtype, self.context_length, self.val_windows, ranks)
        return DataLoader(fixed, batch_size=self.val_batch_size, shuffle=False, **self._loader_args())

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.val_path)

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.test_path)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count training batches as the loop consumes them (prefetched ones are not yet consumed)."""
        if self.trainer is not None and self.trainer.training:
            self.batches_drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["seed"] != self.seed:
            raise UserError(
                f"data.seed={self.seed} differs from the checkpoint's {state_dict['seed']}: "
                "resuming would not continue the same run"
            )
        self.batches_drawn = state_dict["batches_drawn"]
