"""Muon batched by shape (issue 23): the same steps as the per-matrix code, compiled once for a whole
schedule, its Newton–Schulz work shared by DDP ranks, and whole matrices under FSDP."""

import math
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reference_model import reference_orthogonalize
from tiny_fit import TINY_ARCH

import lmproject.sampling.compiled_step
from lmproject.lit.module import LanguageModel
from lmproject.nn import ModelConfig, cross_entropy
from lmproject.training.muon import UPDATE_RMS, Muon
from lmproject.training.muon_math import Batches

# Several shapes, the same ones transposed and a square one: three batches, 5 + 3 + 2 matrices
SHAPES = [(8, 24), (24, 8), (8, 24), (16, 16), (24, 8), (8, 24), (16, 16), (12, 20), (20, 12), (12, 20)]
LR, MOMENTUM, DECAY = 0.1, 0.9, 0.5


def reference_step(params, buffers, grads, lr, momentum=MOMENTUM, decay=DECAY) -> None:
    """Muon's per-matrix update before issue 23: one matrix at a time."""
    for p, buffer, grad in zip(params, buffers, grads, strict=True):
        buffer.mul_(momentum).add_(grad)
        update = reference_orthogonalize(grad.add(buffer, alpha=momentum))
        p.mul_(1 - lr * decay)
        p.add_(update, alpha=-lr * UPDATE_RMS * math.sqrt(max(p.shape)))


def problem(steps: int = 3) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Seeded matrices of SHAPES and `steps` gradients for each, the same in every process."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(*shape, generator=generator) for shape in SHAPES]
    grads = [[torch.randn(*shape, generator=generator) for shape in SHAPES] for _ in range(steps)]
    return weights, grads


def schedule(step: int) -> float:
    return LR * (step + 1) / 3


def run_muon(steps: int = 3, **options) -> tuple[list[torch.nn.Parameter], Muon]:
    """problem()'s matrices after `steps` Muon steps at schedule's learning rates."""
    weights, grads = problem(steps)
    params = [torch.nn.Parameter(w) for w in weights]
    optimizer = Muon(
        [{"muon": True, "params": params}], lr=LR, weight_decay=DECAY, momentum=MOMENTUM, **options
    )
    for step in range(steps):
        for p, grad in zip(params, grads[step], strict=True):
            p.grad = grad.clone()
        optimizer.param_groups[0]["lr"] = schedule(step)
        optimizer.step()
    return params, optimizer


def run_reference(steps: int = 3) -> list[torch.Tensor]:
    weights, grads = problem(steps)
    buffers = [torch.zeros_like(w) for w in weights]
    for step in range(steps):
        reference_step(weights, buffers, grads[step], schedule(step))
    return weights


def test_matrices_are_batched_by_shape_up_to_transposition():
    batches = Batches.of(SHAPES)
    assert batches.members == ((0, 1, 2, 4, 5), (3, 6), (7, 8, 9))
    assert batches.wide == ((8, 24), (16, 16), (12, 20))
    config = ModelConfig(**{**TINY_ARCH, "d_model": 512, "d_ff": 1344, "num_layers": 4})
    with torch.device("meta"):
        model = LanguageModel(config).model
    tinystories = Batches.of(
        [p.shape for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2]
    )
    assert [len(m) for m in tinystories.members] == [16, 12] and tinystories.wide == ((512, 512), (512, 1344))


def test_batched_steps_equal_the_per_matrix_reference():
    params, optimizer = run_muon()
    for p, expected in zip(params, run_reference(), strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=2e-6)
    assert optimizer.orthogonalized == len(SHAPES)
    assert all(
        optimizer.state[p]["momentum_buffer"].shape == p.shape for p in params
    )  # checkpoints unchanged


def test_matrices_held_flat_step_as_their_whole_shape():
    """FSDP on one rank: every parameter is one flat piece of its whole matrix."""
    weights, grads = problem()
    flat = [torch.nn.Parameter(w.flatten()) for w in weights]
    shapes = {p: w.shape for p, w in zip(flat, weights, strict=True)}
    optimizer = Muon(
        [{"muon": True, "params": flat}], lr=LR, weight_decay=DECAY, momentum=MOMENTUM, whole_shapes=shapes
    )
    for step in range(3):
        for p, grad in zip(flat, grads[step], strict=True):
            p.grad = grad.flatten()
        optimizer.param_groups[0]["lr"] = schedule(step)
        optimizer.step()
    for p, expected in zip(flat, run_reference(), strict=True):
        torch.testing.assert_close(p.detach(), expected.flatten(), rtol=0, atol=2e-6)


@pytest.mark.slow
def test_a_learning_rate_schedule_does_not_recompile_the_step(monkeypatch):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compile_ = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda function, **options: compile_(function, backend=counter, **options)
    )
    torch._dynamo.reset()
    run_muon(steps=5, compile=True)  # 5 learning rates
    assert counter.frame_count == 1


def test_without_a_cpp_compiler_the_step_runs_eagerly(monkeypatch):
    monkeypatch.setattr(lmproject.sampling.compiled_step, "cpp_compiler", lambda: None)
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("compiled without a compiler"))
    params, _ = run_muon(compile=True)
    for p, expected in zip(params, run_reference(), strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_the_compiled_step_equals_the_reference_and_compiles_once():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    params, _ = run_muon(steps=1, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    params, _ = run_muon(steps=4, compile=True)  # another optimizer: the same graph serves it
    assert graphs == counters["stats"]["unique_graphs"] >= 1
    for p, expected in zip(params, run_reference(steps=4), strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def _leave() -> None:
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see tests/test_sharding.py: no C++ teardown of gloo's threads


def _ddp_rank(rank: int, world_size: int, port: int, out: str) -> None:
    """A DDP rank: every rank holds the same matrices and (averaged) gradients."""
    _join(rank, world_size, port)
    params, optimizer = run_muon(process_group=dist.group.WORLD)
    result = {"params": [p.detach() for p in params], "orthogonalized": optimizer.orthogonalized}
    torch.save(result, f"{out}/rank{rank}.pt")
    _leave()


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_share_the_work_and_end_with_bit_identical_weights(tmp_path, world_size):
    mp.spawn(_ddp_rank, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    shares = [rank["orthogonalized"] for rank in ranks]
    assert sum(shares) == len(SHAPES) and max(shares) - min(shares) <= 3  # round-robin in each of 3 batches
    assert max(shares) <= math.ceil(5 / world_size) + math.ceil(2 / world_size) + math.ceil(3 / world_size)
    for rank in ranks[1:]:
        assert all(torch.equal(p, q) for p, q in zip(rank["params"], ranks[0]["params"], strict=True))
    for p, expected in zip(ranks[0]["params"], run_reference(), strict=True):
        torch.testing.assert_close(p, expected, rtol=0, atol=2e-6)


CONFIG = ModelConfig(**TINY_ARCH)


def fsdp_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 64, (2, 4, 16), generator=torch.Generator().manual_seed(rank))
    return tokens[0], tokens[1]


def muon_module() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(CONFIG, optimizer="muon", cosine_cycle_iters=100, warmup_iters=0, lr_max=1e-2)


def _fsdp_rank(rank: int, port: int, out: str) -> None:
    """An FSDP rank (CPU, gloo): two Muon steps of the module's own optimizer setup, then the optimizer's
    full state dict (as a checkpoint holds it) loaded into a fresh optimizer for a third step."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import StateDictType

    from lmproject.lit.sharding import wrap_policy

    _join(rank, 2, port)
    module = muon_module()
    model = FSDP(
        module, auto_wrap_policy=wrap_policy("muon"), device_id=torch.device("cpu"), use_orig_params=True
    )
    module._trainer = type("Trainer", (), {"strategy": type("FSDPStrategy", (), {})()})()  # as Lightning's

    def step(optimizer: Muon) -> None:
        x, y = fsdp_batch(rank)
        cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    optimizer = module.configure_optimizers()["optimizer"]
    step(optimizer)
    step(optimizer)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT):
        state = FSDP.optim_state_dict(model, optimizer)
        resumed = module.configure_optimizers()["optimizer"]
        resumed.load_state_dict(FSDP.optim_state_dict_to_load(model, resumed, state))
        step(resumed)
        weights = model.state_dict()
    if rank == 0:
        torch.save(
            {"weights": weights, "optimizer": state, "split": resumed.split is not None}, f"{out}/fsdp.pt"
        )
    _leave()


@pytest.mark.slow
def test_muon_under_fsdp_steps_as_one_process_and_its_state_resumes(tmp_path):
    mp.spawn(_fsdp_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    result = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    assert result["split"]

    reference = muon_module()  # one process, both ranks' batches (FSDP averages the ranks' gradients)
    optimizer = reference.configure_optimizers()["optimizer"]
    (x0, y0), (x1, y1) = fsdp_batch(0), fsdp_batch(1)
    momenta = {}
    for step in range(3):
        cross_entropy(reference(torch.cat([x0, x1])), torch.cat([y0, y1])).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 1:  # when the checkpoint was taken
            muon = optimizer.param_groups[0]
            momenta = {
                n: optimizer.state[p]["momentum_buffer"].clone()
                for n, p in zip(muon["names"], muon["params"], strict=True)
            }
    assert len(momenta) == 2 * 7
    for name, momentum in momenta.items():  # the checkpoint's buffers: whole matrices, as one process's
        saved = result["optimizer"]["state"][f"model.{name}"]["momentum_buffer"]
        torch.testing.assert_close(saved, momentum, rtol=1e-4, atol=1e-6, msg=name)
    for name, weight in reference.state_dict().items():
        # AdamW's first steps move a weight by about ±lr whatever its gradient's size (see test_sharding):
        # the embeddings, head and gains compare loosely, Muon's matrices to float32 rounding
        tolerance = 1e-6 if name.removeprefix("model.") in momenta else 2.5e-2
        torch.testing.assert_close(result["weights"][name], weight, rtol=0, atol=tolerance, msg=name)
