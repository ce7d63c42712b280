"""`lmproject COMMAND ...`: the command table. fit, validate, test and predict are LightningCLI's
(lmproject.lit.cli); the others have their own modules and --help. A command's module is imported only when
it runs, so each command pays only for what it uses.

Exit status: 0 done; 2 bad input (a one-line error); 3 training diverged (the loss or gradient norm became
NaN or infinite; the last good checkpoint is kept); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import importlib
import sys

from lmproject.lit.output import lightning_output

# command -> (module, function taking the arguments after the command's name)
COMMANDS = {
    "accounting": ("lmproject.lit.accounting_cli", "main"),
    "plot": ("lmproject.tools.plot", "main"),
    "evaluate": ("lmproject.lit.evaluate_cli", "main"),
    "export": ("lmproject.lit.interop_cli", "export_main"),
    "import": ("lmproject.lit.interop_cli", "import_main"),
}
LIGHTNING_CLI = ("lmproject.lit.cli", "main")  # fit, validate, test, predict and --help


def main(argv: list[str] | None = None) -> int:
    """Run the command that argv names (None: the command line); `--verbose` anywhere shows Lightning's
    start-up lines (lmproject.lit.output)."""
    words = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in words
    words = [word for word in words if word != "--verbose"]
    command = next((word for word in words if not word.startswith("-")), None)
    module, function = COMMANDS.get(words[0], LIGHTNING_CLI) if words else LIGHTNING_CLI
    arguments = words[1:] if words and words[0] in COMMANDS else words
    with lightning_output(command, verbose):
        return getattr(importlib.import_module(module), function)(arguments)


if __name__ == "__main__":
    sys.exit(main())
