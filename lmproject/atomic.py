"""Atomic file writes: every output of the project (tokenizer files, token arrays, checkpoints, plots,
samples, downloads) appears under its final name complete or not at all.

Work in progress lives next to its target under a hidden temp name that carries the writer's process id,
`.TARGET.PID.RANDOM.tmp` (a file) or `.TARGET.PID.RANDOM.parts` (a folder). A process killed outright
(SIGKILL, power loss) cannot remove its own; `remove_stale_temps` removes those whose process is gone, and
the writers call it, so the next run cleans up what an interrupted one left. Only names of this exact shape
are touched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from lmproject.errors import UserError

_UMASK = os.umask(0o22)
os.umask(_UMASK)
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.(tmp|parts)")


def temp_prefix(target: Path) -> str:
    """The start of a temp name for `target` (tempfile adds 8 random characters and the suffix)."""
    return f".{target.name}.{os.getpid()}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(directory: Path, target: str | None = None) -> list[Path]:
    """Remove the temp files and folders in `directory` (for `target` only, if given) that a process of
    this project left when it was killed, i.e. whose process id no longer runs; return them."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_NAME.fullmatch(entry.name)
        if not match or (target is not None and match["target"] != target) or _running(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


FULL = (errno.ENOSPC, errno.EDQUOT)


def write_problem(err: BaseException) -> str:
    """What went wrong writing, in words for a message: "the disk is full" for ENOSPC (also numpy's and
    safetensors' versions of it, which carry no errno), else the system's words."""
    text = str(err)
    if (
        getattr(err, "errno", None) in FULL
        or "No space left" in text
        or re.search(r"\d+ requested and \d+ written", text)
    ):
        return "the disk is full"
    return getattr(err, "strerror", None) or text


@contextmanager
def naming_output(target: str | os.PathLike[str], also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Run the block that writes `target`; an OSError (or an error of the types in `also`, e.g. a writer
    library's own) becomes a UserError naming `target`, the output the user gave: the error's own file name
    is a temp file's, and numpy's and safetensors' messages name none."""
    try:
        yield
    except UserError:
        raise
    except (OSError, *also) as err:
        raise UserError(f"{os.fspath(target)}: cannot write it: {write_problem(err)}") from None


def check_writable(path: Path, flag: str = "--output") -> None:
    """Refuse an --output file (predict, evaluate) that could not be written (a directory, a missing or
    read-only folder), by trying: an existing file is opened for appending, a new one created and removed
    again. Errors name the file as `flag PATH`."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory, expected a file name")
    parent = path.resolve().parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"{flag} {path}: {path.parent} {problem}")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write it ({err.strerror or err})") from None
    if not existed:
        path.unlink()


def check_new_folder(path: Path) -> None:
    """Refuse, before any work, a folder that atomic_dir could not create: one that exists and is not
    empty, or one whose nearest existing ancestor is a file or read-only."""
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise UserError(f"{path}: already exists: choose another output folder or remove it")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot create it in {ancestor} (no write permission)")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The path of a temp file next to `path`, for a writer that opens its file itself; it is renamed to
    `path` only if the block succeeds (see atomic_write). The directory must exist."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file name")
    if not path.parent.is_dir():
        raise UserError(f"{path}: directory {path.parent} does not exist")
    remove_stale_temps(path.parent, path.name)
    with naming_output(path):  # a read-only folder: the error names the output, not the temp file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        usual_permissions(tmp)  # mkstemp makes the file private
        yield Path(tmp)
        with naming_output(path):
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temp file next to `path` for writing and rename it to `path` only if the block succeeds.

    Readers never see a half-written file, and a failure (or Ctrl-C) leaves any previous file untouched.
    The directory must exist: a missing one is a UserError rather than being created silently.
    """
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as file:
        yield file


def usual_permissions(path: str | os.PathLike[str]) -> None:
    """Give a file the permissions a plain open() would have (0666 less the umask): temp-file helpers and
    some writers (safetensors' save_file) make files readable by their owner only."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder next to `path` to fill; it becomes `path` only if the block succeeds, so the
    folder appears whole or not at all. `path` must not exist yet (or be an empty folder); its parent is
    created if missing."""
    path = Path(path)
    check_new_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    with naming_output(path):
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes the folder private
        yield staging
        with naming_output(path):
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def temp_folder(target: Path) -> Path:
    """A new temp folder next to `target` for work in progress towards it (the caller removes it)."""
    remove_stale_temps(target.parent, target.name)
    with naming_output(target):  # a read-only folder: the error names the output, not the temp folder
        return Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=".parts"))
