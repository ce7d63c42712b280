"""The one exception type for bad user input, the CLI guard that turns it into a one-line error, and the
argument parser whose errors are that one line too."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import typing
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# The exit statuses of the commands (docs/errors.md): 0 done
BAD_INPUT = 2  # a one-line error naming the file or argument
DIVERGED = 3  # training's loss or gradient norm became NaN or infinite
TIME_LIMIT = 124  # fit stopped by trainer.max_time, unfinished (as `timeout` exits); resumable
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
TERMINATED = 143  # SIGTERM (128 + SIGTERM): `timeout`, SLURM preemption, `docker stop`


class UserError(Exception):
    """Bad input from the user (a file, an argument, a config value): the message is shown as is."""


def run_cli(main: Callable[[], T], prog: str) -> T:
    """Run a command's main function; a UserError or OSError becomes `prog: error: ...` and exit status 2."""
    try:
        return main()
    except (UserError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(BAD_INPUT) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument prints only `PROG: error: ...` (no usage block) and exits 2,
    as every other bad input does; --help is unchanged. Subparsers are made of this class too."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


def utf8_argument(value: str, what: str) -> str:
    """`value` when it is UTF-8 text; a command-line word with bytes that are not UTF-8 reaches Python with
    them as surrogate escapes, refused here naming the argument (`what`) rather than failing later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(value[err.start])
        shown = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character {chr(code)!a}"
        raise UserError(f"{what} is not valid UTF-8 ({shown} at character {err.start})") from None
    return value


def check_regular_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse an input that exists but is no regular file (a FIFO, a device): the project reads its inputs
    more than once (a size, then chunks; a check, then the work), which a pipe cannot give, so a FIFO hung or
    was called "not found". `what` says what the file is for (`token file`)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller's own message says so
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise UserError(
            f"{os.fspath(path)}: is {kind}; the {what} must be a regular file (it is read more than once)"
        )
