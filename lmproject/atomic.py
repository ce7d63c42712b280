"""Atomic file writes: every output of the project (tokenizer files, token arrays, checkpoints, plots,
samples, downloads) appears under its final name complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from lmproject.errors import UserError

_UMASK = os.umask(0o22)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temp file next to `path` for writing and rename it to `path` only if the block succeeds.

    Readers never see a half-written file, and a failure (or Ctrl-C) leaves any previous file untouched.
    The directory must exist: a missing one is a UserError rather than being created silently.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it the usual permissions
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as file:
            yield file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder next to `path` to fill; it becomes `path` only if the block succeeds, so the
    folder appears whole or not at all. `path` must not exist yet (or be an empty folder); its parent is
    created if missing."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise UserError(f"{path}: already exists: choose another output folder or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes the folder private
        yield staging
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
