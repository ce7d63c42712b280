"""Encode a whole text file into a `.npy` array of token ids, in parallel over the cores.

The file is cut at special tokens (or safe breaks at lone newlines and spaces) into chunks that encode the
same on their own as within the whole text (`pretokenize.find_chunk_boundaries`). Worker processes encode the
chunks and write each one's ids to a raw part file; the parts are then concatenated behind a `.npy` header
into a temp file that is renamed to the output. No process holds more than one chunk's ids, and a failure
leaves no output.
"""

from __future__ import annotations

import os
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np

from lmproject.atomic import atomic_write, naming_output, temp_folder
from lmproject.errors import UserError
from lmproject.tokenizer.chunks import MAX_CHUNK_BYTES, check_options, map_chunks, plan_chunks
from lmproject.tokenizer.pretokenize import read_chunk
from lmproject.tokenizer.tokenizer import Tokenizer


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """uint16 while every id fits in it (vocab up to 65,536), else uint32; little-endian either way."""
    return np.dtype("<u2") if tokenizer.vocab_size <= 1 << 16 else np.dtype("<u4")


def encode_file(
    tokenizer: Tokenizer,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    num_workers: int | None = None,
    chunk_bytes: int | None = None,
    errors: str = "strict",
    progress: bool = True,
) -> int:
    """Encode the UTF-8 text file `input_path` into the 1-D array `output_path` (.npy); return its length.

    `num_workers` processes encode (default: all cores; 1 encodes in this process). `errors="strict"`
    rejects invalid UTF-8 with the byte offset of the first bad byte; `errors="replace"` uses U+FFFD.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    num_workers = check_options(num_workers, errors)
    if output_path.is_dir():
        raise UserError(f"{output_path}: is a directory, expected a .npy file name")
    if output_path.suffix != ".npy":
        raise UserError(f"{output_path}: the output is a .npy array, so its name must end in .npy")
    if not output_path.parent.is_dir():
        problem = "is not a directory" if output_path.parent.exists() else "does not exist"
        raise UserError(f"{output_path}: {output_path.parent} {problem}")
    max_chunk_bytes = MAX_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    bounds = plan_chunks(input_path, num_workers, max_chunk_bytes, tokenizer.special_tokens)

    dtype = token_dtype(tokenizer)
    parts_dir = temp_folder(output_path)  # also removes what a killed run left for this output
    try:
        jobs = [
            (
                str(input_path),
                start,
                end,
                errors,
                str(parts_dir / f"{index:06d}.bin"),
                dtype.str,
                str(output_path),
            )
            for index, (start, end) in enumerate(pairwise(bounds))
        ]
        counts = map_chunks(
            _encode_chunk,
            jobs,
            bounds,
            num_workers=num_workers,
            desc=f"encode {input_path.name}",
            progress=progress,
            initializer=_init_worker,
            initargs=(tokenizer,),
        )
        length = sum(counts)
        with naming_output(output_path):  # a full disk: named as the output, not as the temp file
            _assemble([job[4] for job in jobs], length, dtype, output_path)
        return length
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)


def _assemble(part_paths: list[str], length: int, dtype: np.dtype, output_path: Path) -> None:
    """Write the .npy header for `length` ids, then the parts' bytes in order, into `output_path`."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    with atomic_write(output_path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for part in part_paths:
            with open(part, "rb") as file:
                shutil.copyfileobj(file, out, 1 << 20)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(job: tuple[str, int, int, str, str, str, str]) -> int:
    """Encode bytes [start, end) of the file into a raw part file of the output; return the number of ids."""
    path, start, end, errors, part_path, dtype, output = job
    text = read_chunk(path, start, end, errors)
    ids = np.array(_worker_tokenizer.encode(text), dtype=dtype)
    with naming_output(output):
        ids.tofile(part_path)
    return len(ids)
