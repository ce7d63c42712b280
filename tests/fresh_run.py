"""Running `lmproject` in a fresh interpreter, to see what a command imports (tests/test_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from lmproject.lit.commands import main
try:
    status = main({argv!r})
except SystemExit as exit_:
    status = exit_.code
lightning = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
print(json.dumps({{"status": status, "lightning": lightning}}))
"""


def run_fresh(argv: list[str], cwd=None) -> dict:
    """`lmproject argv...` run in a fresh interpreter: its exit status, the lightning modules it imported."""
    probe = PROBE.format(argv=argv)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
