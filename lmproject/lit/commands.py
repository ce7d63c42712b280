"""`lmproject COMMAND ...`: the command table. fit, validate, test and predict are LightningCLI's
(lmproject.lit.cli); the others have their own modules and --help. A command's module is imported only when
it runs, so each command pays only for what it uses: accounting, plot, evaluate, export and import never
import Lightning (seconds of start-up), and fit, validate, test and predict check their config and token files
before they import it (lmproject.lit.early_checks).

Exit status: 0 done; 2 bad input (a one-line error); 3 training diverged (the loss or gradient norm became
NaN or infinite; the last good checkpoint is kept); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import importlib
import sys

from lmproject.errors import run_cli

# command -> (module, function taking the arguments after the command's name)
COMMANDS = {
    "accounting": ("lmproject.lit.accounting_cli", "main"),
    "plot": ("lmproject.tools.plot", "main"),
    "evaluate": ("lmproject.lit.evaluate_cli", "main"),
    "export": ("lmproject.lit.interop_cli", "export_main"),
    "import": ("lmproject.lit.interop_cli", "import_main"),
}
LIGHTNING_FREE = frozenset({"accounting", "plot", "evaluate", "export", "import"})  # never import Lightning
LIGHTNING_CLI = ("lmproject.lit.cli", "main")  # fit, validate, test, predict and --help
RUN_COMMANDS = ("fit", "validate", "test", "predict")  # checked before Lightning loads


def main(argv: list[str] | None = None) -> int:
    """Run the command that argv names (None: the command line); `--verbose` anywhere shows Lightning's
    start-up lines (lmproject.lit.output)."""
    words = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in words
    words = [word for word in words if word != "--verbose"]
    command = next((word for word in words if not word.startswith("-")), None)
    module, function = COMMANDS.get(words[0], LIGHTNING_CLI) if words else LIGHTNING_CLI
    arguments = words[1:] if words and words[0] in COMMANDS else words
    if words and words[0] in LIGHTNING_FREE:
        return getattr(importlib.import_module(module), function)(arguments)
    if words and words[0] in RUN_COMMANDS:
        from lmproject.lit.early_checks import check_run_words

        run_cli(lambda: check_run_words(words[0], words[1:]), "lmproject")
    from lmproject.lit.output import lightning_output  # imports Lightning

    with lightning_output(command, verbose):
        return getattr(importlib.import_module(module), function)(arguments)


if __name__ == "__main__":
    sys.exit(main())
