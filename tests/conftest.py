"""Shared test helpers: the CS336 fixtures in ../shared/data, skipped cleanly when that folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers, in the interop tests, never goes online

# LMPROJECT_SHARED_DATA points elsewhere, e.g. from a git worktree that has no ../shared of its own.
SHARED_DATA = Path(
    os.environ.get("LMPROJECT_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def shared(name: str) -> Path:
    """Path of a fixture in ../shared/data (relative to the repo root); skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (CS336 fixtures expected in ../shared/data)")
    return path
