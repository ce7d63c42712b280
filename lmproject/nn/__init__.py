"""The Transformer LM written from first principles: functions, layers, and the model."""

from lmproject.nn.config import ModelConfig
from lmproject.nn.functional import (
    cross_entropy,
    linear_cross_entropy,
    relu_squared,
    scaled_dot_product_attention,
    silu,
    soft_cap,
    softmax,
    token_losses,
)
from lmproject.nn.layers import (
    Embedding,
    Linear,
    ReLUSquaredFFN,
    RMSNorm,
    RotaryEmbedding,
    SiLUFFN,
    SwiGLU,
)
from lmproject.nn.transformer import MultiHeadSelfAttention, TransformerBlock, TransformerLM

__all__ = [
    "Embedding",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "ReLUSquaredFFN",
    "RotaryEmbedding",
    "SiLUFFN",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "cross_entropy",
    "linear_cross_entropy",
    "scaled_dot_product_attention",
    "relu_squared",
    "silu",
    "soft_cap",
    "softmax",
    "token_losses",
]
