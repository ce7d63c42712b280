"""FSDP without a GPU: the wrap policy, and a checkpoint sharded by two gloo ranks read as an ordinary one."""

import math
import os
import socket
import sys

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_fit import TINY_ARCH, fails, write_config, write_tokens

from lmproject.lit.commands import main
from lmproject.lit.module import LanguageModel
from lmproject.lit.sharding import (
    METADATA_FILE,
    clip_gradients_of,
    consolidate,
    fsdp_strategy,
    is_sharded_checkpoint,
    wrap_policy,
)
from lmproject.nn import ModelConfig, RMSNorm, TransformerBlock, cross_entropy
from lmproject.training.checkpoint_files import check_checkpoint
from lmproject.training.optim import AdamW, clip_gradients

CONFIG = ModelConfig(**TINY_ARCH)


def test_every_transformer_block_and_nothing_else_is_a_shard_unit():
    model = LanguageModel(CONFIG)
    units = wrap_policy()._run_policy(model, ignored_modules=set(), root_kwargs={})
    wrapped = [module for module in units if module is not model]  # the root unit holds everything else
    assert wrapped == list(model.model.layers)
    assert all(isinstance(module, TransformerBlock) for module in wrapped)


def test_under_muon_every_norm_is_a_shard_unit_of_its_own():
    model = LanguageModel(ModelConfig(**{**TINY_ARCH, "qk_norm": True}), optimizer="muon")
    units = wrap_policy("muon")._run_policy(model, ignored_modules=set(), root_kwargs={})
    norms = [module for module in model.modules() if isinstance(module, RMSNorm)]
    assert len(norms) == 2 * 4 + 1  # ln1, ln2, q_norm, k_norm per block; ln_final
    assert set(units) - {model} == set(model.model.layers) | set(norms)


def test_the_fsdp_strategies_shard_fully_per_block_and_choose_the_checkpoint_format():
    for name, state_dict_type in (("fsdp", "full"), ("fsdp_sharded", "sharded")):
        strategy = fsdp_strategy(name)
        assert strategy._state_dict_type == state_dict_type
        assert strategy.sharding_strategy.name == "FULL_SHARD"
        assert isinstance(strategy.kwargs["auto_wrap_policy"], type(wrap_policy()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(rank: int) -> torch.Tensor:
    return torch.randint(0, 64, (2, 4, 16), generator=torch.Generator().manual_seed(rank))


def _train_and_save_sharded(rank: int, port: int, directory: str) -> None:
    """One of two CPU ranks: an FSDP-wrapped LanguageModel takes an AdamW step, then saves what Lightning's
    FSDPStrategy(state_dict_type="sharded") saves: model and optimizer_0 shards, and meta.pt from rank 0."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import StateDictType

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    module = LanguageModel(CONFIG)
    model = FSDP(module, auto_wrap_policy=wrap_policy(), device_id=torch.device("cpu"), use_orig_params=True)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    x, y = batch(rank)
    cross_entropy(model(x), y).backward()
    norm = clip_gradients_of(model, math.inf)  # over both ranks' shards
    optimizer.step()
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        shards = {"model": model.state_dict(), "optimizer_0": FSDP.optim_state_dict(model, optimizer)}
    dcp.save(shards, checkpoint_id=directory)
    if rank == 0:
        metadata = {"hyper_parameters": dict(module.hparams), "global_step": 1, "epoch": 0,
                    "norm": norm.item(),
                    "pytorch-lightning_version": L.__version__}  # fmt: skip
        torch.save(metadata, f"{directory}/{METADATA_FILE}")
    dist.barrier()
    dist.destroy_process_group()
    # A gloo or checkpoint-writer thread can still be joinable when the interpreter tears down, which aborts
    # the finished process ("terminate called without an active exception"; seen once in CI): leave without
    # the C++ teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A run directory whose checkpoints/last.ckpt was sharded by two FSDP ranks (after one step)."""
    if not dist.is_available():
        pytest.skip("torch without torch.distributed")
    run = tmp_path_factory.mktemp("fsdp") / "run"
    path = run / "checkpoints" / "last.ckpt"
    mp.spawn(_train_and_save_sharded, args=(_free_port(), str(path)), nprocs=2)
    return path


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_checkpoint_sharded_across_two_ranks_loads_as_an_ordinary_one(sharded):
    assert is_sharded_checkpoint(sharded) and len(list(sharded.glob("*.distcp"))) == 2
    ordinary = consolidate(sharded)
    assert ordinary == sharded.parent / "consolidated" / "last.ckpt"
    model = LanguageModel(CONFIG)
    check_checkpoint(ordinary, CONFIG, {k: v.shape for k, v in model.state_dict().items()})
    checkpoint = torch.load(ordinary, weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["global_step"] == 1 and checkpoint["hyper_parameters"]["arch"]["d_model"] == 32

    # the same step without FSDP: one model, both ranks' batches (FSDP averages the ranks' gradients)
    torch.manual_seed(0)
    reference = LanguageModel(CONFIG)
    (x0, y0), (x1, y1) = batch(0), batch(1)
    cross_entropy(reference(torch.cat([x0, x1])), torch.cat([y0, y1])).backward()
    assert checkpoint["norm"] == pytest.approx(
        clip_gradients(reference.parameters(), math.inf).item(), rel=1e-5
    )
    reference_optimizer = AdamW(reference.parameters(), lr=1e-2)
    reference_optimizer.step()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])  # a single-process run can resume from it
    names = [name for name, _ in model.named_parameters()]
    for name, p, q in zip(names, model.parameters(), reference.parameters(), strict=True):
        # the first AdamW step moves each weight by about ±lr whatever the gradient's size, so the weights
        # are compared loosely and the first moment (linear in the gradient) closely, parameter by parameter
        torch.testing.assert_close(p, q, rtol=0, atol=2.5e-2, msg=name)
        state, expected = optimizer.state[p], reference_optimizer.state[q]
        assert state["step"] == 1
        torch.testing.assert_close(state["exp_avg"], expected["exp_avg"], rtol=1e-4, atol=1e-8, msg=name)
    assert consolidate(sharded) == ordinary  # written once, then reused


@pytest.mark.slow
@pytest.mark.multiprocess
def test_validate_reads_a_sharded_checkpoint_and_fit_refuses_fsdp_on_cpu(sharded, capsys):
    data = sharded.parent.parent.parent
    write_tokens(data)
    config = str(write_config(data, sharded.parent.parent))
    assert main(["validate", "--config", config, "--ckpt_path", "last"]) == 0
    assert (sharded.parent / "consolidated" / "last.ckpt").is_file()
    message = fails(["fit", "--config", config, "--trainer.strategy", "fsdp"], capsys)
    assert "--trainer.strategy fsdp needs CUDA GPUs" in message
