"""The float32 matrix-multiply rate this machine reaches, measured in about a second: what `lmproject
accounting` estimates a run's time on this device from, beside the A100 figure it assumes by default (a
2-core CPU multiplies about a thousand times slower than that)."""

from __future__ import annotations

import time

import torch

# A square matmul big enough to run near the device's best rate, small enough for many repeats in a second.
SIZES = {"cpu": 1024, "cuda": 4096}


def local_device() -> torch.device:
    """The device a run would train on here: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """A short description of `device` for a report (the GPU's name, or the CPU and its thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"the CPU, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of float32 n x n matmuls on `device` (2 n^3 FLOPs each), repeated for about `seconds` after one
    warm-up multiply."""
    n = SIZES.get(device.type, SIZES["cpu"])
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    _sync(device)
    count, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        count += 1
        if count % 8 == 0 or device.type == "cpu":
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * n**3 * count / elapsed
