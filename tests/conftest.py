"""Shared test helpers: the CS336 fixtures in ../shared/data (skipped cleanly when that folder is absent),
the one_thread fixture, and zero_middle for damaged-checkpoint tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread (modules opt in with pytest.mark.usefixtures): tiny models gain nothing from more,
    and on shared cores idle threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def zero_middle(path: Path, count: int = 1000) -> None:
    """What a failing disk or a bad copy does: a block of the file becomes zeros, the size stays."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(count)
    path.write_bytes(bytes(data))
