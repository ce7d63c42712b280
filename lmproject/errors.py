"""The one exception type for bad user input, and the CLI guard that turns it into a one-line error."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user (a file, an argument, a config value): the message is shown as is."""


def run_cli(main: Callable[[], T], prog: str) -> T:
    """Run a command's main function; a UserError or OSError becomes `prog: error: ...` and exit status 2."""
    try:
        return main()
    except (UserError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
