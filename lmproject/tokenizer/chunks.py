"""Parallel work over a text file's chunks, shared by BPE training and file encoding.

`plan_chunks` cuts the file where pre-tokenizing the pieces apart changes nothing
(`pretokenize.find_chunk_boundaries`); `map_chunks` runs a function on each chunk in worker processes and
yields the results in file order, with a progress bar over the file's bytes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import TypeVar

from tqdm import tqdm

from lmproject.errors import UserError, check_regular_file
from lmproject.tokenizer.pretokenize import find_chunk_boundaries

MAX_CHUNK_BYTES = 8 << 20
"""Largest chunk a worker reads at once by default: bounds the memory per worker whatever the file size."""

MIN_CHUNK_BYTES = 1 << 20
"""Smaller files are still cut into several chunks (for balance and progress), but not below this size."""

Result = TypeVar("Result")


def check_options(num_workers: int | None, errors: str) -> int:
    """The number of worker processes (default: the cores this process may use); bad values are UserErrors.

    `errors` is how invalid UTF-8 is handled: "strict" (an error) or "replace" (U+FFFD).
    """
    if errors not in ("strict", "replace"):
        raise UserError(f"errors must be 'strict' or 'replace', got {errors!r}")
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if num_workers is None or num_workers < 1:
        raise UserError(f"num_workers must be at least 1, got {num_workers}")
    return num_workers


def plan_chunks(
    path: str | os.PathLike[str],
    num_workers: int,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    special_tokens: Sequence[str] | None = None,
) -> list[int]:
    """Byte offsets [0, ..., file size] cutting the text file `path` into chunks for `num_workers`.

    About four chunks per worker balance the load, but none is above `max_chunk_bytes` (which bounds the
    memory) nor, unless the file is small, below MIN_CHUNK_BYTES.
    """
    if max_chunk_bytes < 1:
        raise UserError(f"chunk_bytes must be positive, got {max_chunk_bytes}")
    if os.path.isdir(path):
        raise UserError(f"{os.fspath(path)}: is a directory, expected a text file")
    check_regular_file(path, "text file")
    try:
        size = os.path.getsize(path)
        target = max(MIN_CHUNK_BYTES, -(-size // (4 * num_workers)))
        return find_chunk_boundaries(path, min(max_chunk_bytes, target), special_tokens)
    except OSError as err:
        raise UserError(f"{os.fspath(path)}: cannot read: {err.strerror or err}") from None


def map_chunks(
    function: Callable[[tuple], Result],
    jobs: Sequence[tuple],
    bounds: list[int],
    *,
    num_workers: int,
    desc: str,
    progress: bool = True,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Result]:
    """Yield `function(job)` for each job (one per chunk between `bounds`), in file order, so that the
    first bad chunk is the one reported; worker processes run them unless there is one worker or one job."""
    bar = tqdm(total=bounds[-1], unit="B", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1)
    with bar:
        if num_workers == 1 or len(jobs) == 1:
            if initializer is not None:
                initializer(*initargs)
            yield from _advancing(map(function, jobs), bounds, bar)
        else:
            workers = min(num_workers, len(jobs))
            with multiprocessing.Pool(workers, _quiet_worker, (initializer, initargs)) as pool:
                yield from _advancing(pool.imap(function, jobs), bounds, bar)


def _quiet_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Start a pool worker that ignores SIGINT: Ctrl-C reaches the whole process group, and the parent
    alone answers it (leaving the `with` block terminates the pool), so the workers print no tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _advancing(results: Iterable[Result], bounds: list[int], bar: tqdm) -> Iterator[Result]:
    for (start, end), result in zip(pairwise(bounds), results, strict=False):
        bar.update(end - start)
        yield result
