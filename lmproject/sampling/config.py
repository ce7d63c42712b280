"""The sampling settings of `generate` and `lmproject predict`, checked when made, and the memory a
sampling batch needs, checked before anything is allocated."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lmproject.errors import UserError
from lmproject.nn import ModelConfig, TransformerLM
from lmproject.precision import DTYPES

MAX_SEED = 2**64 - 1  # torch's generators take seeds below 2**64


class SamplingError(UserError, ValueError):
    """A sampling setting outside its range: a UserError for the CLI, a ValueError for Python callers. The
    message starts with the setting's name, so `lmproject predict` can name its flag (`--top_p must ...`)."""


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """The sampling settings of `generate` and `lmproject predict`.

    Given by name, e.g. `SamplingConfig(max_new_tokens=50, temperature=0)`, and checked when made (and
    against the model by `check`). `lmproject predict` offers each as a flag of the same name
    (--temperature, --top_p, ...), except seed and eos_id, which it sets per prompt.

    Args:
        max_new_tokens: the most tokens to sample per completion (fewer when it samples eos_id).
        temperature: softmax temperature; 0 is greedy decoding.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability sums to at least top_p.
        top_k: keep only the k most probable tokens (default: all).
        eos_id: the token that ends a completion (it is included in it); default: none, every completion
            has max_new_tokens tokens.
        seed: the same seed and inputs give the same tokens; default: torch's global generator.
        window_slide: past the model's context length, the window of tokens the model sees moves this many
            tokens at a time (1: exactly the last context_length tokens at every step, each step a full
            re-encode; default: a quarter of the context; lmproject/sampling/generate.py's docstring says
            why).
        dtype: float32 or bfloat16, the weights' type while sampling (None: the model's). bfloat16 reads
            half the bytes per token (faster where the hardware has native bf16: GPUs, recent CPUs; refused
            elsewhere) but rounds the logits: greedy text can part from float32's after a few dozen tokens
            (README, "Sampling"; `for_decoding`).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    eos_id: int | None = None
    seed: int | None = None
    window_slide: int | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        """Refuse a setting outside its range, naming it (the ones that need the model: `check`)."""
        for name in ("max_new_tokens", "top_k", "eos_id", "seed", "window_slide"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise SamplingError(f"{name} must be an integer, got {value!r}")
        for name in ("temperature", "top_p"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise SamplingError(f"{name} must be a number, got {getattr(self, name)!r}")
        rules = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k is None or self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.eos_id is None or self.eos_id >= 0, f"eos_id must be a token id >= 0, got {self.eos_id}"),
            (
                self.seed is None or 0 <= self.seed <= MAX_SEED,
                f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}",
            ),
            (
                self.window_slide is None or self.window_slide >= 1,
                f"window_slide must be >= 1, got {self.window_slide}",
            ),
            (
                self.dtype is None or self.dtype in DTYPES,
                f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise SamplingError(message)

    def check(self, model: TransformerLM) -> None:
        """Refuse the settings this model cannot sample with: a window_slide beyond its context, an eos_id
        beyond its vocabulary."""
        if self.window_slide is not None and self.window_slide > model.config.context_length:
            raise SamplingError(
                f"window_slide must be in 1..{model.config.context_length} (the context length), "
                f"got {self.window_slide}"
            )
        if self.eos_id is not None and self.eos_id >= model.config.vocab_size:
            raise SamplingError(
                f"eos_id must be a token id in 0..{model.config.vocab_size - 1} (the vocabulary), "
                f"got {self.eos_id}"
            )

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """dtype as a torch.dtype (None: the model's own)."""
        return None if self.dtype is None else DTYPES[self.dtype]


def sampling_bytes(config: ModelConfig, batch: int, positions: int, dtype: torch.dtype) -> int:
    """About the memory, beyond the weights, that sampling `batch` rows of up to `positions` tokens each
    (prompt and completion) takes: the token history, the KV cache and its RoPE tables, the prefill's
    attention scores (math attention's worst case) and the logits with their sorted copies."""
    width = dtype.itemsize
    cache = (2 * config.num_layers * config.d_model + 2 * config.d_head) * config.context_length * width
    scores = config.num_heads * config.context_length**2 * 4
    logits = config.vocab_size * 4 * 6
    return batch * (positions * 8 + cache + scores + logits)


def available_bytes(device: torch.device) -> int | None:
    """The memory free for new tensors on `device` (None where it is unknown): the GPU's free memory, or
    the system's available memory (Linux's MemAvailable) for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def memory_shortfall(
    config: ModelConfig, batch: int, positions: int, dtype: torch.dtype, device: torch.device
) -> str | None:
    """Why sampling `batch` rows of up to `positions` tokens in `dtype` cannot fit in the memory free on
    `device` (`needs about X GiB ..., more than the Y GiB available`), or None when it fits."""
    needed = sampling_bytes(config, batch, positions, dtype)
    free = available_bytes(device)
    if free is None or needed <= free:
        return None
    return (
        f"needs about {needed / 2**30:,.1f} GiB while sampling (token history, KV cache, logits), more than "
        f"the {free / 2**30:,.1f} GiB available on {device.type}"
    )
