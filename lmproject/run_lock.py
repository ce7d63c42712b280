"""One `lmproject fit` per run directory at a time: two fits on one directory both ran, and every checkpoint
ended up holding one run's weights, or the second resumed the first's checkpoint half-way through."""

from __future__ import annotations

import atexit
import fcntl
import os
from pathlib import Path
from typing import IO

from lmproject.errors import UserError

LOCK_FILE = ".fit.lock"
_held: dict[Path, IO[str]] = {}  # open for the life of the process: the OS releases the lock at exit


@atexit.register
def _close_held() -> None:
    for file in _held.values():
        file.close()


def hold_run_lock(run_dir: str | os.PathLike[str]) -> None:
    """Take the run directory's lock for the rest of this process, or refuse in one line naming the
    process that holds it. The lock is the OS's (flock): it goes with its process, however that ends, so a
    crashed or killed run never leaves a stale one."""
    directory = Path(run_dir).resolve()
    if directory in _held:
        return
    directory.mkdir(parents=True, exist_ok=True)
    file = open(directory / LOCK_FILE, "a+")  # noqa: SIM115 (held open until the process exits)
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise UserError(
            f"{run_dir}: another lmproject fit is running in this run directory (pid {holder}); wait for it "
            "to end, or choose another --trainer.default_root_dir"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    _held[directory] = file
