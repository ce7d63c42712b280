"""Atomic file writes: every output of the project (tokenizer files, token arrays, checkpoints, plots,
samples, downloads) appears under its final name complete or not at all."""

from __future__ import annotations

import os
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
