"""Shared test helpers: the CS336 fixtures in ../shared/data, skipped cleanly when that folder is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    """Path of a fixture in ../shared/data (relative to the repo root); skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (CS336 fixtures expected in ../shared/data)")
    return path
