"""The KV cache that lets each generation step run only the new tokens, with nothing allocated per step.

Everything a step needs is prepared when the cache is made or its padding changes: key and value buffers
for the whole context, each row's RoPE cos/sin tables for every slot, and the mask of its real (non-padding)
keys. A one-token step then only slices these (views, no new tensors) and writes its keys and values in
place. A static cache (static=True) goes one step further for CUDA graphs: its one-token steps have the
same shapes and buffers at every position (they attend over all slots, masking the ones not written yet,
and find their slot in a device tensor), so one captured step can be replayed for every token, and one
compiled step (torch.compile) serves every position.
"""

from __future__ import annotations

import torch

from lmproject.nn import ModelConfig, TransformerLM
from lmproject.nn.layers import rotate_pairs


class KVCache:
    """Past keys and values of every layer, for generation.

    A batch of prompts of different lengths is left-padded to a common length: row b starts with
    pad_lengths[b] padding slots. No query attends to a padding slot (except a padding query to itself,
    so no attention row is empty), and the real tokens of row b get positions 0, 1, 2, … — each prompt is
    computed exactly as if it were alone. Room for config.context_length positions in total.

    Built from the architecture and the model's RoPE tables (cos, sin: (context_length, d_head); None
    without RoPE); `for_model` reads both from a model.
    """

    def __init__(
        self,
        config: ModelConfig,
        rope_tables: tuple[torch.Tensor, torch.Tensor] | None,
        batch_size: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        pad_lengths: torch.Tensor | None = None,
        static: bool = False,
    ):
        self.capacity, self.length, self.static = config.context_length, 0, static
        self.slots = torch.arange(self.capacity, device=device)
        self.slot = torch.zeros((), dtype=torch.long, device=device)  # = length, for static steps
        self.pad_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.real_keys = torch.empty(batch_size, 1, 1, self.capacity, dtype=torch.bool, device=device)
        self.rope = rope_tables
        if rope_tables is not None:
            self.cos = torch.empty(batch_size, 1, self.capacity, config.d_head, dtype=dtype, device=device)
            self.sin = torch.empty_like(self.cos)
        shape = (batch_size, config.num_heads, self.capacity, config.d_head)
        self.layers = [LayerKVCache(self, shape, dtype, device) for _ in range(config.num_layers)]
        self.reset(self.pad_lengths if pad_lengths is None else pad_lengths)

    @classmethod
    def for_model(
        cls,
        model: TransformerLM,
        batch_size: int,
        pad_lengths: torch.Tensor | None = None,
        static: bool = False,
    ) -> KVCache:
        """A cache for `model`'s architecture, RoPE tables, device and weight dtype."""
        weight = model.lm_head.weight
        return cls(
            model.config,
            model.rope_tables,
            batch_size,
            dtype=weight.dtype,
            device=weight.device,
            pad_lengths=pad_lengths,
            static=static,
        )

    def reset(self, pad_lengths: torch.Tensor) -> None:
        """Empty the cache for a new left-padded batch, keeping the buffers (a CUDA graph holds them)."""
        self.length = 0
        self.slot.zero_()
        self._set_padding(pad_lengths)

    def _set_padding(self, pad_lengths: torch.Tensor) -> None:
        """Refresh, in place, what depends on the rows' padding: the real-key mask and the RoPE tables
        (slot minus padding; padding slots get position 0)."""
        self.pad_lengths.copy_(pad_lengths)
        self.real_keys.copy_((self.slots >= self.pad_lengths[:, None])[:, None, None])
        self.padded = bool(self.pad_lengths.any())
        if self.rope is not None:
            positions = (self.slots - self.pad_lengths[:, None]).clamp(min=0)
            cos, sin = self.rope
            self.cos.copy_(cos[positions][:, None])
            self.sin.copy_(sin[positions][:, None])

    def begin(self, seq: int) -> None:
        """Prepare the step that adds `seq` tokens: its RoPE tables and attention mask (None: every key
        written so far), read by every layer. Traced by torch.compile (a static one-token step, see
        `end`), the room is the caller's to check."""
        if not torch.compiler.is_compiling() and self.length + seq > self.capacity:
            raise ValueError(
                f"KV cache overflow: {self.length} cached + {seq} new tokens > context_length={self.capacity}"
            )
        if self.static and seq == 1:  # addressed by the device tensor `slot`, never by `length`
            self.mask = self.real_keys & (self.slots <= self.slot)
            if self.rope is not None:
                self.step_cos = self.cos.index_select(2, self.slot.view(1))
                self.step_sin = self.sin.index_select(2, self.slot.view(1))
            return
        start, end = self.length, self.length + seq
        if seq == 1:  # the newest token may see every real key
            self.mask = self.real_keys[..., :end] if self.padded else None
        else:  # causal, never onto padding keys, always onto itself
            queries = self.slots[start:end, None]
            keys = self.slots[None, :end]
            self.mask = ((keys <= queries) & self.real_keys[..., :end]) | (keys == queries)
        if self.rope is not None:
            self.step_cos, self.step_sin = self.cos[:, :, start:end], self.sin[:, :, start:end]

    def end(self, seq: int) -> None:
        """Count the `seq` tokens of the step just run. Traced by torch.compile, the Python counter is left
        to the caller (lmproject/sampling/compiled_step.py): a compiled graph would be specialized on its
        value, one recompilation per position; the static step's kernels advance `slot` themselves."""
        if not torch.compiler.is_compiling():
            self.length += seq
        if self.static:
            self.slot.add_(seq)

    def drop_oldest(self, count: int, pad_lengths: torch.Tensor) -> None:
        """Forget the oldest `count` slots of every row (the others move to the front) and take the rows'
        new padding: a sliding window, for rows whose own tokens all stay in it (the slots dropped were
        their padding), so their cached keys and values stay valid."""
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                buffer[:, :, : self.length - count] = buffer[:, :, count : self.length].clone()
        self.length -= count
        self.slot.sub_(count)
        self._set_padding(pad_lengths)

    def replace_rows(self, rows: torch.Tensor, other: KVCache) -> None:
        """Take the keys and values of `rows` from `other`, a cache of those rows alone with the same length
        and padding."""
        for layer, source in zip(self.layers, other.layers, strict=True):
            layer.keys[rows, :, : self.length] = source.keys[:, :, : self.length]
            layer.values[rows, :, : self.length] = source.values[:, :, : self.length]


class LayerKVCache:
    """One layer's key/value buffers (batch, heads, capacity, d_head), zeroed so that the slots a static
    step masks out hold finite values (a masked NaN would still poison the attention's weighted sum)."""

    def __init__(self, cache: KVCache, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.cache = cache
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    def update(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotate this step's q and k (batch, heads, seq, d_head) to their positions, store k and v, and
        return (q, all keys, all values) for the attention."""
        cache = self.cache
        if cache.rope is not None:
            q = rotate_pairs(q, cache.step_cos, cache.step_sin)
            k = rotate_pairs(k, cache.step_cos, cache.step_sin)
        if cache.static and k.shape[-2] == 1:
            self.keys.index_copy_(2, cache.slot.view(1), k)
            self.values.index_copy_(2, cache.slot.view(1), v)
            return q, self.keys, self.values
        start, end = cache.length, cache.length + k.shape[-2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return q, self.keys[:, :, :end], self.values[:, :, :end]
