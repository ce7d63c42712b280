"""`lmproject export --format gguf`: a model as one GGUF file for llama.cpp (its `llama` architecture).

llama.cpp's own converter (convert_hf_to_gguf.py) refuses a Hugging Face folder whose BPE vocabulary it
has not seen (it identifies the pre-tokenizer by a hash of the tokens of a test text), so this module
writes the GGUF file itself, with the `gguf` package that the llama.cpp project publishes:

- the llama architecture's keys (sizes, head counts, RoPE base, RMSNorm epsilon, vocabulary size);
- the tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output; no `output`
  when the embeddings are tied), the norms always in float32;
- the tokenizer as llama.cpp's `gpt2` BPE with the `gpt-2` pre-tokenizer, which is our byte-level BPE and
  GPT-2's split pattern: tokens in GPT-2's byte alphabet, special tokens as control tokens, the merges in
  order, `<|endoftext|>` as BOS and EOS, and no BOS added in front of a prompt.

The q and k rows go in as they are. llama.cpp's `llama` architecture uses its "normal" RoPE, which rotates
adjacent pairs (x0, x1), (x2, x3), ... as ours does; its converter un-permutes Hugging Face's half-split rows
back into that order (LlamaModel.permute), the inverse of what our Hugging Face export applies
(tests/test_gguf.py checks both, and a llama-format forward over the file's tensors).

Weights are float32, bfloat16, float16 or q8_0 (blocks of 32 weights sharing one scale; a matrix whose rows
are not a multiple of 32 long stays float16, as llama.cpp's converter does). The file is written under a
temp name and renamed: it appears whole or not at all.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from lmproject.atomic import atomic_path
from lmproject.interop.hf_llama import check_llama_expressible, check_tokenizer_fits
from lmproject.nn import ModelConfig
from lmproject.nn.layers import RMS_NORM_EPS
from lmproject.tokenizer import EOS_TOKEN, Tokenizer
from lmproject.tokenizer.files import token_to_str

ARCH = "llama"
_FILE_TYPES = {
    "float32": gguf.LlamaFileType.ALL_F32,
    "bfloat16": gguf.LlamaFileType.MOSTLY_BF16,
    "float16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
GGUF_DTYPES = tuple(_FILE_TYPES)
_Q8_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]  # weights per scale

# Our tensor names -> llama.cpp's, for the whole model and for each layer (`layers.{i}.` -> `blk.{i}.`).
_MODEL_NAMES = {
    "token_embeddings.weight": "token_embd.weight",
    "ln_final.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "ln1.weight": "attn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.output_proj.weight": "attn_output.weight",
    "ln2.weight": "ffn_norm.weight",
    "ffn.w1.weight": "ffn_gate.weight",
    "ffn.w2.weight": "ffn_down.weight",
    "ffn.w3.weight": "ffn_up.weight",
}


def gguf_names(arch: ModelConfig) -> dict[str, str]:
    """Our state dict's names -> the GGUF tensor names, without `output` when the embeddings are tied."""
    names = dict(_MODEL_NAMES)
    if arch.tie_embeddings:
        del names["lm_head.weight"]
    for i in range(arch.num_layers):
        names.update({f"layers.{i}.{ours}": f"blk.{i}.{theirs}" for ours, theirs in _LAYER_NAMES.items()})
    return names


def export_gguf(
    arch: ModelConfig, weights: dict[str, torch.Tensor], tokenizer: Tokenizer, out: Path, dtype: str
) -> None:
    """Write the GGUF file `out` of a model (our architecture and state dict) and its tokenizer."""
    check_llama_expressible(arch)
    check_tokenizer_fits(tokenizer, arch)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        _add_architecture(writer, arch, dtype)
        _add_tokenizer(writer, tokenizer, arch.vocab_size)
        for ours, theirs in gguf_names(arch).items():
            data, raw_dtype = _encode(weights[ours].detach().float().cpu().numpy(), dtype)
            writer.add_tensor(theirs, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _add_architecture(writer: gguf.GGUFWriter, arch: ModelConfig, dtype: str) -> None:
    writer.add_name("lmproject")
    writer.add_context_length(arch.context_length)
    writer.add_embedding_length(arch.d_model)
    writer.add_block_count(arch.num_layers)
    writer.add_feed_forward_length(arch.d_ff)
    writer.add_head_count(arch.num_heads)
    writer.add_head_count_kv(arch.num_heads)
    writer.add_rope_dimension_count(arch.d_head)
    writer.add_rope_freq_base(float(arch.rope_theta))
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
    writer.add_vocab_size(arch.vocab_size)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def gguf_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """The token strings and types of ids 0..vocab_size-1: ordinary tokens in GPT-2's byte alphabet
    (token_to_str), special tokens as their text and type CONTROL, ids the tokenizer lacks (the model's
    embedding table may be larger) as `[PAD<id>]` of type UNUSED, as llama.cpp's converter pads them."""
    special = {token.encode("utf-8") for token in tokenizer.special_tokens}
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = tokenizer.vocab.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            tokens.append(token.decode("utf-8"))
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token_to_str(token))
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    tokens, types = gguf_vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(
        [f"{token_to_str(left)} {token_to_str(right)}" for left, right in tokenizer.merges]
    )
    if EOS_TOKEN in tokenizer.special_tokens:
        eos_id = tokenizer.encode(EOS_TOKEN)[0]
        writer.add_bos_token_id(eos_id)
        writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)  # a prompt starts as written, as in training and the Hugging Face export
    writer.add_add_eos_token(False)


def _encode(weight: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """A float32 weight in the file's dtype, with the raw GGML type when numpy has no such dtype. Vectors
    (the norms' gains) stay float32, as in llama.cpp's own files."""
    if weight.ndim == 1 or dtype == "float32":
        return weight, None
    if dtype == "float16" or (dtype == "q8_0" and weight.shape[-1] % _Q8_BLOCK):
        return weight.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bfloat16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(weight, qtype), qtype
