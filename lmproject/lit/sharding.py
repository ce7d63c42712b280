"""FSDP through Lightning: each TransformerBlock a shard unit; sharded checkpoints turned into ordinary ones.

`--trainer.strategy fsdp` gives Lightning's FSDPStrategy with this project's settings: FULL_SHARD (weights,
gradients and optimizer state split across all ranks), one FSDP unit per TransformerBlock (a block's weights
are gathered just before it runs and freed after; the embeddings, ln_final and lm head form the root unit;
under Muon each RMSNorm is a unit of its own, see wrap_policy), and
mixed precision from `trainer.precision` (bf16-mixed: float32 weights and optimizer, bfloat16 compute and
gradient reductions). Its checkpoints are full state dicts gathered on rank 0: ordinary files, loaded as
any other by fit (with or without FSDP), validate, test, predict and export.

`--trainer.strategy fsdp_sharded` is the same but every rank writes its own shard (a faster save for a large
model): the checkpoint is a directory (torch.distributed.checkpoint files, Lightning's meta.pt). fit under
FSDP resumes from it directly; everything else reads it through `consolidate`, which writes the ordinary
file once (checkpoints/consolidated/NAME) and reuses it while it is newer than the shards.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmproject.atomic import atomic_write
from lmproject.nn import RMSNorm, TransformerBlock
from lmproject.training.optim import clip_gradients

if TYPE_CHECKING:  # imported where used: FSDP's modules are slow to import and most runs do not shard
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

STATE_DICT_TYPES = {"fsdp": "full", "fsdp_sharded": "sharded"}
METADATA_FILE = (
    "meta.pt"  # what Lightning's FSDPStrategy writes beside the shards (all but weights, optimizer)
)


def wrap_policy(optimizer: str = "adamw") -> ModuleWrapPolicy:
    """FSDP's auto-wrap policy: every TransformerBlock becomes its own shard unit; under Muon every RMSNorm
    too. FSDP's full optimizer state dict gathers a unit's state name by name and needs every parameter of
    the unit to hold each name: Muon's matrices hold a momentum_buffer, the norms' gains AdamW's moments, so
    they may not share a unit."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return ModuleWrapPolicy({TransformerBlock, RMSNorm} if optimizer == "muon" else {TransformerBlock})


def fsdp_strategy(name: str, optimizer: str = "adamw") -> FSDPStrategy:
    """Lightning's FSDPStrategy for `--trainer.strategy fsdp` or `fsdp_sharded` (see the module docstring),
    for the run's `model.optimizer`."""
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(
        auto_wrap_policy=wrap_policy(optimizer),
        sharding_strategy="FULL_SHARD",
        state_dict_type=STATE_DICT_TYPES[name],
    )


def clip_gradients_of(model: torch.nn.Module, limit: float) -> torch.Tensor:
    """lmproject.training.optim.clip_gradients for `model` as the strategy runs it. Under FSDP each rank
    holds a shard of every gradient, so the global norm needs all of them: FSDP's clip_grad_norm_ sums the
    ranks' squared norms first (the same scale min(1, limit / (norm + 1e-6)) as clip_gradients)."""
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            return model.clip_grad_norm_(limit)
    return clip_gradients(model.parameters(), limit)


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether `path` is a sharded checkpoint directory (torch.distributed.checkpoint's .metadata inside)."""
    return path.is_dir() and (path / ".metadata").is_file()


def consolidated_path(path: Path) -> Path:
    return path.parent / "consolidated" / path.name


def consolidate(path: Path) -> Path:
    """The ordinary checkpoint file of the sharded checkpoint `path`, written on first use: weights under
    state_dict, the optimizer state keyed by parameter position as a single-process run saves it, and
    Lightning's metadata (hyperparameters, loop and callback state)."""
    out = consolidated_path(path)
    if out.is_file() and out.stat().st_mtime >= (path / ".metadata").stat().st_mtime:
        return out
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "full.pt")
        shards = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
    checkpoint = _ordinary(shards)
    metadata = path / METADATA_FILE
    if metadata.is_file():
        checkpoint.update(torch.load(metadata, map_location="cpu", weights_only=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as file:
        torch.save(checkpoint, file)
    print(f"lmproject: consolidated the sharded checkpoint {path} into {out}", file=sys.stderr)
    return out


def _ordinary(shards: dict[str, Any]) -> dict[str, Any]:
    """{"model", "optimizer_0", ...} as Lightning shards them -> {"state_dict", "optimizer_states"}."""
    checkpoint = {"state_dict": shards["model"]}
    count = sum(1 for key in shards if key.startswith("optimizer_"))
    checkpoint["optimizer_states"] = [_keyed_by_position(shards[f"optimizer_{i}"]) for i in range(count)]
    return checkpoint


def _keyed_by_position(state: dict[str, Any]) -> dict[str, Any]:
    """FSDP's optimizer state dict keys parameters by name; torch.optim's by position in the param groups."""
    names = [name for group in state["param_groups"] for name in group["params"]]
    position = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [position[n] for n in group["params"]]} for group in state["param_groups"]]
    return {"state": {position[n]: s for n, s in state["state"].items()}, "param_groups": groups}
