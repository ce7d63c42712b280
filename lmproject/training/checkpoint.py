"""Save and restore model + optimizer + iteration without Lightning (plain `torch.save` dictionaries)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO, BinaryIO

import torch

from lmproject.atomic import atomic_write, remove_stale_temps
from lmproject.errors import UserError
from lmproject.training.digest import digest_status, save_with_digest

Target = str | os.PathLike | BinaryIO | IO[bytes]
# Set in every checkpoint write_checkpoint writes: such a file without a valid digest was damaged (its
# digest mark included), where a file that never had one (other code wrote it) may still load.
DIGEST_KEY = "lmproject_digest"


def save_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: Target
) -> None:
    """Write {"model", "optimizer", "iteration"} to `out`, a path or a binary file object.

    A path is written atomically: to a temporary file in the same directory, then renamed over `out`, so
    an interrupted save never leaves a truncated checkpoint (and never damages an older one); the file
    carries a digest of its bytes, checked by load_checkpoint (lmproject.training.digest).
    """
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": int(iteration)}
    if not isinstance(out, (str, os.PathLike)):
        torch.save(state, out)
        return
    with atomic_write(out, "wb") as file:
        save_with_digest(state, file)


def write_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """torch.save `state` to `path` atomically, with a digest of its bytes (the format of every checkpoint
    the project writes, Lightning's included); first removes temporary files that a killed save left in
    that folder (e.g. `.last.ckpt.PID.XXXX.tmp`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(Path(path).parent)
    with atomic_write(path, "wb") as file:
        save_with_digest({**state, DIGEST_KEY: "sha256"}, file)


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None."""
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def load_checkpoint(src: Target, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Restore model (and optimizer, if given) from `src`, a path or a binary file object; return the
    iteration. An unreadable file or one that does not fit the model raises UserError naming it."""
    name = (
        os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<checkpoint stream>")
    )
    if isinstance(src, (str, os.PathLike)):
        if not Path(src).is_file():
            raise UserError(f"checkpoint {name}: no such file")
        if digest_status(src) == "damaged":
            raise UserError(f"checkpoint {name}: damaged (its bytes differ from the digest saved with it)")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files (pickle, zip, EOF, runtime)
        if isinstance(src, (str, os.PathLike)) and not zipfile.is_zipfile(src):  # torch's advice misleads
            raise UserError(f"checkpoint {name}: not a torch checkpoint (or cut short)") from None
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        raise UserError(f"checkpoint {name}: cannot read it ({type(err).__name__}: {first_line})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "iteration"} <= state.keys():
        raise UserError(f"checkpoint {name}: not a save_checkpoint file (needs model, optimizer, iteration)")
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        detail = " ".join(str(err).split())  # state-dict errors span several lines; keep one
        raise UserError(f"checkpoint {name}: does not match the model/optimizer: {detail}") from None
    return int(state["iteration"])
