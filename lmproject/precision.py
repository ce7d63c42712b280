"""Which floating-point types this machine runs a model in: native bf16 on the CPU, dtypes by name."""

from __future__ import annotations

import torch

from lmproject.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (x86 avx512_bf16/AMX, or an Arm core with BF16)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_dtype(dtype: torch.dtype, device: torch.device, what: str) -> None:
    """Refuse a dtype the device would only emulate (bf16 on a CPU without native support is many times
    slower than float32, the opposite of why one asks for it); `what` names the argument."""
    if dtype != torch.bfloat16:
        return
    if device.type == "cpu" and not cpu_supports_bf16():
        raise UserError(
            f"{what} bfloat16: this CPU has no native bf16 (avx512_bf16, AMX or Arm BF16); use float32"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{what} bfloat16: this GPU does not support bf16; use float32")
