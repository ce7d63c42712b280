"""ModelConfig: the architecture of a TransformerLM, the one description that the model, the LightningModule
(`model.arch` in a run's config), accounting, the memory prediction, the throughput monitor, export/import
and the benches all read. It says what the model computes, not how it runs (attention kernel, activation
checkpointing, initialization are TransformerLM's keyword arguments)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lmproject.settings import check_settings


@dataclass(frozen=True, kw_only=True)  # by name only: num_layers and num_heads are both small ints
class ModelConfig:
    """The architecture of a decoder-only Transformer LM (the CS336 model and its ablation switches).

    Attributes:
        vocab_size: token ids 0..vocab_size-1: the rows of token_embeddings and of lm_head.
        context_length: the longest sequence the model reads (RoPE's tables are built for it).
        d_model: width of the residual stream.
        num_layers: Transformer blocks.
        num_heads: attention heads; d_model / num_heads is each head's width (even, under RoPE).
        d_ff: inner width of the FFN: about 8/3 d_model for SwiGLU, 4 d_model for the two-matrix silu and
            relu2 (so the parameter count roughly matches).
        rope_theta: RoPE's base: pair k of a head rotates by position / rope_theta^(2k/d_head).
        norm: where the RMSNorms are: pre, post or none (an ablation; TransformerBlock shows each).
        position: rope (rotary position embeddings) or none (NoPE: the causal mask is the only order).
        ffn: swiglu, silu or relu2 (the feed-forward nets of lmproject.nn.layers).
        tie_embeddings: one (vocab_size, d_model) matrix for token_embeddings and lm_head.
        qk_norm: RMSNorm on each head's queries and keys (the modern recipe).
        logit_softcap: the logits' soft cap (the modern recipe); null: none.
    """

    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    norm: str = "pre"
    position: str = "rope"
    ffn: str = "swiglu"
    tie_embeddings: bool = False
    qk_norm: bool = False
    logit_softcap: float | None = None

    def __post_init__(self) -> None:
        check_settings("model.arch", asdict(self))  # one clear error for any bad size or switch

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.num_heads
