"""Causal multi-head self-attention, the Transformer block and the full LM.

Generation passes a KV cache (lmproject/sampling/kv_cache.py) through `forward`; the model only calls the
methods named by DecodingCache, so it does not depend on the sampling package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmproject.nn.config import ModelConfig
from lmproject.nn.functional import (
    cross_entropy,
    linear_cross_entropy,
    scaled_dot_product_attention,
    soft_cap,
)
from lmproject.nn.layers import Embedding, Linear, ReLUSquaredFFN, RMSNorm, RotaryEmbedding, SiLUFFN, SwiGLU
from lmproject.settings import check_settings

FFN_CLASSES = {"swiglu": SwiGLU, "silu": SiLUFFN, "relu2": ReLUSquaredFFN}  # the keys are settings.FFNS


class LayerCache(Protocol):
    """One layer's share of a decoding cache: it rotates and stores this step's keys and values."""

    cache: DecodingCache

    def update(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class DecodingCache(Protocol):
    """What the model needs of a KV cache: a step's start and end, its mask, and one cache per layer."""

    mask: torch.Tensor | None
    layers: Sequence[LayerCache]

    def begin(self, seq: int) -> None: ...

    def end(self, seq: int) -> None: ...


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention with q/k/v/output projections; RoPE (if given) rotates q and k of every head.

    attention="math" runs the from-scratch softmax attention of lmproject.nn.functional; "fused" calls
    torch's scaled_dot_product_attention (flash / memory-efficient kernels) for the same result.
    qk_norm=True RMS-normalizes each head's queries and keys (own gains q_norm, k_norm of size d_head)
    before RoPE, which bounds the attention logits.
    """

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding | None = None, attention: str = "fused"):
        super().__init__()
        d_model = config.d_model
        self.num_heads, self.attention = config.num_heads, attention
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(config.d_head), RMSNorm(config.d_head)
        self.qk_norm = config.qk_norm
        self.rope = rope

    def forward(
        self,
        x: torch.Tensor,
        token_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv_cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x: (batch, seq, d_model) -> (batch, seq, d_model).

        token_positions: (batch, seq) or (seq,). mask: boolean, broadcastable to (batch, heads, seq, keys),
        True = may attend; default causal. kv_cache: this layer's past keys/values, extended by this call.
        """
        batch, seq, d_model = x.shape
        # q, k, v: (batch, heads, seq, d_head), d_head = d_model / heads
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.qk_norm:  # before RoPE, which the cache's update applies too
            q, k = self.q_norm(q), self.k_norm(k)
        causal = mask is None
        if kv_cache is not None:  # positions and mask come from the cache (None: every key so far)
            q, k, v = kv_cache.update(q, k, v)  # k, v: (batch, heads, keys so far, d_head)
            mask, causal = kv_cache.cache.mask, False
        elif self.rope is not None:
            # Every head sees the same positions: add a head axis to broadcast over.
            positions = None if token_positions is None else token_positions.unsqueeze(-2)
            q, k = self.rope(q, positions), self.rope(k, positions)
        if self.attention == "fused":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        else:
            if causal:
                mask = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
            if kv_cache is not None and k.dtype == torch.bfloat16 and k.device.type == "cpu":
                # k holds the cache's filled slots, a strided slice: the CPU's bf16 q kᵀ is faster on a
                # contiguous copy (float32's is not; bench/RESULTS.md)
                k = k.contiguous()
            out = scaled_dot_product_attention(q, k, v, mask)
        # out (batch, heads, seq, d_head) -> (batch, seq, d_model): the heads side by side
        return self.output_proj(out.transpose(1, 2).reshape(batch, seq, d_model))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, heads, seq, d_head)."""
        batch, seq, d_model = x.shape
        return x.view(batch, seq, self.num_heads, d_model // self.num_heads).transpose(1, 2)


class TransformerBlock(nn.Module):
    """One layer. norm="pre": x + attn(ln1(x)), then + ffn(ln2(x)); "post": ln1(x + attn(x)), then
    ln2(x + ffn(x)); "none": no ln1/ln2 at all (they are absent from the state dict)."""

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding | None = None, attention: str = "fused"):
        super().__init__()
        self.norm = config.norm
        self.ln1 = nn.Identity() if config.norm == "none" else RMSNorm(config.d_model)
        self.attn = MultiHeadSelfAttention(config, rope, attention)
        self.ln2 = nn.Identity() if config.norm == "none" else RMSNorm(config.d_model)
        self.ffn = FFN_CLASSES[config.ffn](config.d_model, config.d_ff)

    def forward(
        self,
        x: torch.Tensor,
        token_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv_cache: LayerCache | None = None,
    ) -> torch.Tensor:
        if self.norm == "post":
            x = self.ln1(x + self.attn(x, token_positions, mask, kv_cache))
            return self.ln2(x + self.ffn(x))
        x = x + self.attn(self.ln1(x), token_positions, mask, kv_cache)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only LM: token_embeddings -> layers -> ln_final -> lm_head, returning logits.

    The architecture is a ModelConfig (lmproject.nn.config, where each field is explained), given whole or
    as its fields by keyword: `TransformerLM(vocab_size=..., context_length=..., d_model=..., num_layers=...,
    num_heads=..., d_ff=..., rope_theta=...)`, the CS336 signature, builds the same model as
    `TransformerLM(ModelConfig(...))`. The model keeps it as `config`.
    Switches (for the ablations): norm "pre" | "post" | "none" (ln_final exists only for "pre": a post-norm
    stack already ends normalized); position "rope" | "none" (NoPE); ffn "swiglu" | "silu" | "relu2" (the
    caller passes d_ff, 4·d_model for the two-matrix "silu" and "relu2" so the parameter count roughly
    matches); tie_embeddings shares one (vocab, d_model) matrix between token_embeddings and lm_head.
    Switches of the modern recipe (all off by default): qk_norm (RMSNorm on each head's q and k, adding
    layers.{i}.attn.{q_norm,k_norm}); zero_init (every attn.output_proj and ffn.w2 starts at zero, so each
    block starts as the identity); logit_softcap (logits become cap·tanh(logits/cap)).
    The keyword arguments are how the model is built and run, not what it computes, so they are not part of
    the config: attention "fused" | "math" (the same result), activation_checkpointing (below) and zero_init
    (an initialization).

    The shared matrix starts as the lm_head's Linear init (σ = √(2/(vocab+d_model))), not the embedding's
    σ = 1: as the head that gives logits of σ ≈ √(2·d_model/vocab) ≪ 1, so training starts at a loss of
    about ln(vocab); with σ = 1 the logits' σ would be √d_model and the first loss several times ln(vocab).
    As the embedding, the small rows are harmless: every layer reads the stream through an RMSNorm (pre-norm),
    which rescales it. Untied models keep the CS336 inits of both.

    activation_checkpointing keeps only each block's input for the backward pass and recomputes the block
    there (torch.utils.checkpoint, non-reentrant): the same gradients for a third more compute, and the
    activations' memory drops from every intermediate of every layer to one (batch, seq, d_model) per layer.
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        *,
        attention: str = "fused",
        activation_checkpointing: bool = False,
        zero_init: bool = False,
        **fields: Any,
    ):
        super().__init__()
        if config is None:
            config = ModelConfig(**fields)  # checks every field: one clear error for a bad size or switch
        elif fields:
            raise TypeError(
                f"TransformerLM: give a ModelConfig or its fields, not both (got {sorted(fields)})"
            )
        check_settings("model", {"attention": attention})
        self.config, self.activation_checkpointing = config, activation_checkpointing

        self.token_embeddings = Embedding(config.vocab_size, config.d_model)
        rope = None
        if config.position == "rope":
            rope = RotaryEmbedding(config.rope_theta, config.d_head, config.context_length)
        self.attention = attention
        self.layers = nn.ModuleList(
            TransformerBlock(config, rope, attention) for _ in range(config.num_layers)
        )
        self.ln_final = RMSNorm(config.d_model) if config.norm == "pre" else nn.Identity()
        self.lm_head = Linear(config.d_model, config.vocab_size)
        if config.tie_embeddings:  # one matrix, initialized as the head (see the class docstring)
            self.token_embeddings.weight = self.lm_head.weight
        if zero_init:
            for layer in self.layers:
                nn.init.zeros_(layer.attn.output_proj.weight)
                nn.init.zeros_(layer.ffn.w2.weight)

    def converted(self, *, dtype: torch.dtype | None = None, attention: str | None = None) -> TransformerLM:
        """This model with its weights in `dtype` and run with the `attention` kernel (None: as now): itself
        when nothing changes, else a new model of the same architecture holding converted copies of the
        weights (a tied matrix stays tied); this one stays as it is."""
        dtype = self.lm_head.weight.dtype if dtype is None else dtype
        attention = self.attention if attention is None else attention
        if attention == self.attention and dtype == self.lm_head.weight.dtype:
            return self
        with torch.device("meta"):  # no memory and no initialization for weights about to be replaced
            copy = TransformerLM(
                self.config, attention=attention, activation_checkpointing=self.activation_checkpointing
            )
        copy.load_state_dict(
            {name: w.detach().to(dtype) for name, w in self.state_dict().items()}, assign=True
        )
        if self.config.tie_embeddings:
            copy.token_embeddings.weight = copy.lm_head.weight
        for mine, theirs in zip(self.layers, copy.layers, strict=True):
            theirs.attn.rope = mine.attn.rope  # the RoPE tables (buffers, not weights): shared
        return copy.train(self.training)

    @property
    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """RoPE's (cos, sin) tables, (context_length, d_head), shared by every layer; None without RoPE."""
        rope = self.layers[0].attn.rope
        return None if rope is None else (rope.cos, rope.sin)

    def forward(
        self,
        token_ids: torch.Tensor,
        token_positions: torch.Tensor | None = None,
        kv_cache: DecodingCache | None = None,
    ) -> torch.Tensor:
        """token_ids (batch, seq) -> logits (batch, seq, vocab_size); arguments as in `hidden_states`."""
        return self._logits(self.hidden_states(token_ids, token_positions, kv_cache))

    def loss(
        self, token_ids: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None
    ) -> torch.Tensor:
        """Mean cross-entropy of `targets` (batch, seq) after `token_ids` (batch, seq). With chunk_tokens the
        lm head and the loss run fused over that many tokens at a time (linear_cross_entropy), so the float32
        logits of the whole batch are never built (not with logit_softcap: the fused loss has no soft-cap)."""
        hidden = self.hidden_states(token_ids)
        if chunk_tokens is None:
            return cross_entropy(self._logits(hidden), targets)
        if self.config.logit_softcap is not None:
            raise ValueError("the chunked loss (chunk_tokens) has no logit soft-cap: use chunk_tokens=None")
        return linear_cross_entropy(self.ln_final(hidden), self.lm_head.weight, targets, chunk_tokens)

    def next_token_logits(
        self, token_ids: torch.Tensor, kv_cache: DecodingCache | None = None
    ) -> torch.Tensor:
        """token_ids (batch, seq) -> logits of the last position only (batch, vocab_size), what a
        generation step samples from: ln_final and lm_head skip the other positions (for a 256-token
        window the vocabulary projection alone is about a quarter of the forward's work)."""
        return self._logits(self.hidden_states(token_ids, kv_cache=kv_cache)[:, -1])

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last layer's output -> logits: ln_final, lm_head, then the soft cap if there is one."""
        logits = self.lm_head(self.ln_final(hidden))
        cap = self.config.logit_softcap
        return logits if cap is None else soft_cap(logits, cap)

    def hidden_states(
        self,
        token_ids: torch.Tensor,
        token_positions: torch.Tensor | None = None,
        kv_cache: DecodingCache | None = None,
    ) -> torch.Tensor:
        """token_ids (batch, seq) -> output of the last layer (batch, seq, d_model), before ln_final.

        Without a cache the sequence is one causal window starting at position 0 (or `token_positions`).
        With a cache, token_ids continue the cached sequence: positions and the padding-aware mask come from
        the cache (token_positions is ignored), and the cache is extended by these tokens.
        """
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be (batch, seq), got shape {tuple(token_ids.shape)}")
        seq = token_ids.shape[-1]
        if kv_cache is not None:
            kv_cache.begin(seq)
        elif seq > self.config.context_length:
            raise ValueError(
                f"sequence of {seq} tokens is longer than context_length={self.config.context_length}"
            )

        compiled_decoding = kv_cache is not None and torch.compiler.is_compiling()  # ids from the sampler
        if token_ids.device.type == "cpu" and not compiled_decoding:
            self._check_token_ids(token_ids)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model), the same through every layer
        recompute = self.activation_checkpointing and kv_cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:
                x = checkpoint(layer, x, token_positions, use_reentrant=False)
            else:
                x = layer(x, token_positions, None, None if kv_cache is None else kv_cache.layers[i])
        if kv_cache is not None:
            kv_cache.end(seq)
        return x

    def _check_token_ids(self, token_ids: torch.Tensor) -> None:
        """A ValueError for ids outside 0..vocab_size-1 (-1 would silently pick the last embedding row).
        Checked on CPU, where two reductions cost little next to the forward (bench/RESULTS.md);
        on an accelerator the check would make every step wait for the device, so there the data module
        checks the token files and `generate` the prompts instead. A compiled decoding step
        (lmproject/sampling/compiled_step.py) skips it: its ids are the sampler's, always in the vocabulary,
        and the data-dependent branch would split its graph."""
        if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
            raise ValueError(f"token_ids must be integers, got {token_ids.dtype}")
        if token_ids.numel() == 0:
            return
        low, high = torch.aminmax(token_ids)
        if low < 0 or high >= self.config.vocab_size:
            bad = int(low) if low < 0 else int(high)
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{self.config.vocab_size - 1}")
