"""What the commands print: no Lightning start-up lines or noise around a result unless --verbose; `fit`
keeps its useful lines; errors still show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tiny_run import make_run

from lmproject.lit.commands import main

BANNERS = ("GPU available", "TPU available", "Seed set to", "Restoring states")
NOISE = ("litlogger", "LeafSpec", "exists and is not empty")


class Lines(logging.Handler):
    """Every record the Lightning loggers emit (what their own handler would print)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


def printed(argv: list[str]) -> str:
    """What `lmproject argv` shows through Lightning's loggers and as warnings, run in-process."""
    lines = Lines()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(lines)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(argv)
    finally:
        for logger in loggers:
            logger.removeHandler(lines)
    return lines.text + "".join(f"{w.message}\n" for w in caught)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


def _argv(command: str, config: Path, out: Path | None = None) -> list[str]:
    run_args = ["--config", str(config), "--ckpt_path", "last"]
    return {
        "predict": ["predict", *run_args, "--prompt", "Once", "--max_new_tokens", "3"],
        "validate": ["validate", *run_args],
        "evaluate": ["evaluate", *run_args, "--tokens", str(config.parent / "valid.npy")],
        "export": ["export", *run_args, "--out", str(out)],
        "accounting": ["accounting", "--config", str(config)],
    }[command]


@pytest.mark.parametrize(
    "command",
    [pytest.param("predict", marks=pytest.mark.slow), pytest.param("validate", marks=pytest.mark.slow),
     "evaluate", "export", "accounting"],
)  # fmt: skip
def test_result_commands_hide_lightning_lines_unless_verbose(run, command, tmp_path):
    argv = _argv(command, run, tmp_path / "export")
    quiet = printed(argv)
    for line in BANNERS + NOISE:
        assert line not in quiet, (command, quiet)
    if command in ("predict", "validate"):  # the others build no Trainer: nothing to show
        verbose = printed([*argv, "--verbose"])
        assert "GPU available" in verbose and "Seed set to" in verbose


@pytest.mark.slow
def test_fit_keeps_its_lines_and_drops_the_noise(run):
    shown = printed(["fit", "--config", str(run), "--ckpt_path", "last", "--trainer.max_steps", "5"])
    assert "GPU available" in shown and "Restoring states" in shown
    for line in NOISE:
        assert line not in shown, shown


@pytest.mark.slow
def test_logger_levels_are_restored_after_a_command(run):
    before = logging.getLogger("lightning.pytorch").level
    printed(_argv("validate", run))
    assert logging.getLogger("lightning.pytorch").level == before


@pytest.mark.slow
def test_a_terminal_sees_only_the_completion_and_errors_still_show(run):
    """As a user sees it: a subprocess's stderr, with Python's default warning filters."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmproject.lit.commands", *_argv("predict", run)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--- prompt 1, sample 1 ---" in done.stdout
    for line in BANNERS + NOISE:
        assert line not in done.stderr, done.stderr
    bad = subprocess.run(command + ["--top_p", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "lmproject: error:" in bad.stderr
