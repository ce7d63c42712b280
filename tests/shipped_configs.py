"""The configs shipped in configs/, built by LightningCLI without running, for the tests that check what
they set (tests/test_cli_configs.py, tests/test_recipes.py)."""

from collections.abc import Sequence
from pathlib import Path

from lmproject.lit import cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build(*configs: str, extra: Sequence[str] = ()) -> cli.LMCLI:
    """The LightningCLI of `configs` (under configs/, later ones overriding) and `extra` flags, not run."""
    args = [a for config in configs for a in ("--config", str(CONFIGS / config))]
    return cli.run_lightning([*args, *extra], run=False)
