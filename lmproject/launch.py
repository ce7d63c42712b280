"""The console commands `lmproject` and `lmproject-bpe`. They import the heavy modules (torch, Lightning:
seconds) inside a Ctrl-C guard, so an interrupt during start-up exits with status 130 and one line instead
of a traceback from the middle of an import."""

from __future__ import annotations

import importlib
import sys


def _start(module: str, prog: str) -> int:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return main()


def lmproject() -> int:
    return _start("lmproject.lit.commands", "lmproject")


def lmproject_bpe() -> int:
    return _start("lmproject.tokenizer.cli", "lmproject-bpe")
