"""A generation step captured once as a CUDA graph and replayed for every token.

At batch 1 a decode step of a small model is ~100 tiny kernels; launched one by one from Python, the GPU
waits on the launches most of the time. A CUDA graph records the step's kernels once and replays them with
one launch. Replaying needs every tensor at the same address with the same shape at every token: the
cache must be static (lmproject.sampling.kv_cache), and the new tokens go into one fixed input buffer.
"""

from __future__ import annotations

import torch

from lmproject.errors import UserError
from lmproject.nn import TransformerLM
from lmproject.sampling.kv_cache import KVCache

WARMUP_STEPS = 3  # run before capturing, on a side stream, as torch's CUDA graph notes advise


class CUDAGraphStep:
    """Callable: the new token of each row (batch,) -> next-token logits (batch, vocab), a buffer that the
    next call overwrites. The graph is captured at the first call, once the cache holds the prompts."""

    def __init__(self, model: TransformerLM, cache: KVCache):
        device = model.lm_head.weight.device
        if device.type != "cuda":
            raise UserError(f"generate: cuda_graph needs the model on a CUDA device, not {device}")
        if not cache.static:
            raise ValueError("a CUDA graph step needs a static KVCache")
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(len(cache.pad_lengths), 1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, new: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(new[:, None])
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.cache.length += 1  # the replayed kernels advanced cache.slot themselves
        return self.logits

    def _capture(self) -> None:
        cache, length = self.cache, self.cache.length
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):  # each writes the slot the first real step overwrites
                self.model.next_token_logits(self.tokens, kv_cache=cache)
                cache.length -= 1
                cache.slot.sub_(1)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.model.next_token_logits(self.tokens, kv_cache=cache)
        cache.length = length  # capturing ran the Python (length += 1) but no kernel (slot unchanged)
