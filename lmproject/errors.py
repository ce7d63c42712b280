"""The one exception type for bad user input, and the CLI guard that turns it into a one-line error."""

from __future__ import annotations

import sys
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
