"""`lmproject export` and `lmproject import`: the project's models as Hugging Face Llama folders and back.

The CS336 Transformer (pre-norm RMSNorm, SwiGLU, RoPE, no biases) is Llama's architecture, so the mapping is
exact: the tensors are renamed, and the rows of the q and k projections are reordered within each head,
because our RoPE rotates adjacent pairs (x0, x1), (x2, x3), ... while Llama's rotates the two halves
(x_i, x_{i + d/2}). Attention scores are dot products of q and k, which one common reordering of both leaves
unchanged; the values, the output projection and everything else keep their order.

    lmproject export --config CFG --ckpt_path PATH|last --out DIR [--dtype float32|bfloat16]
    lmproject import HF_DIR --out RUN_DIR

An export folder holds config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json and special_tokens_map.json; it appears whole or not at all. An import writes a run
directory: config.yaml, checkpoints/last.ckpt (weights and hyperparameters only: `fit` starts a new run from
them at step 0 with a fresh optimizer) and tokenizer/ when the folder has a tokenizer.json.

This module is the mapping and the files; the command lines, which read a run's config, are
lmproject.lit.interop_cli.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from lmproject.atomic import atomic_dir, usual_permissions
from lmproject.errors import UserError
from lmproject.nn import ModelConfig
from lmproject.nn.layers import RMS_NORM_EPS
from lmproject.precision import DTYPES
from lmproject.tokenizer import EOS_TOKEN, Tokenizer
from lmproject.tokenizer.hf_json import TOKENIZER_JSON, load_tokenizer_json, save_tokenizer_json
from lmproject.training.checkpoint import first_non_finite, write_checkpoint
from lmproject.training.checkpoint_files import model_shapes

# Each model switch Llama can express, with the one value it can express and why. A switch added to the
# model gets its entry here; export refuses any other value with a one-line error naming the switch.
LLAMA_SWITCHES: dict[str, tuple[Any, str]] = {
    "norm": ("pre", "Llama normalizes the input of each sublayer (pre-norm RMSNorm)"),
    "position": ("rope", "Llama encodes positions with RoPE"),
    "ffn": ("swiglu", "Llama's MLP is SwiGLU"),
    "qk_norm": (False, "Llama has no norm on each head's queries and keys"),
    "logit_softcap": (None, "Llama's logits are not soft-capped"),
}

# Our tensor names -> Llama's, for the whole model and for each layer i (`layers.{i}.` / `model.layers.{i}.`).
_MODEL_NAMES = {
    "token_embeddings.weight": "model.embed_tokens.weight",
    "ln_final.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "ln1.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ln2.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
}
_ROTATED = ("attn.q_proj.weight", "attn.k_proj.weight")
_LLAMA_SIZES = (
    "vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size",
)  # fmt: skip
MAX_IMPORT_POSITIONS = 1 << 20  # Llama 3.1's 131,072 fits 8 times; 1e10 would mean a 40 GB RoPE table
_IGNORED_ON_IMPORT = "rotary_emb.inv_freq"  # a buffer some older Llama checkpoints saved; recomputed here


def check_llama_expressible(arch: ModelConfig) -> None:
    """Refuse a model that Llama cannot express, naming the switch (see LLAMA_SWITCHES)."""
    for switch, (supported, why) in LLAMA_SWITCHES.items():
        value = getattr(arch, switch)
        if value != supported:
            raise UserError(
                f"model.arch.{switch}={value!r} cannot be exported: {why} (only {switch}={supported!r})"
            )


def check_tokenizer_fits(tokenizer: Tokenizer, arch: ModelConfig) -> None:
    """Refuse a tokenizer with more ids than the model has embeddings (not the one it was trained with)."""
    if tokenizer.vocab_size > arch.vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's vocab_size="
            f"{arch.vocab_size}: not the tokenizer this model was trained with"
        )


def pairs_to_halves(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder the output rows of a q or k projection (d_out, d_in), head by head, from our RoPE layout
    (pair k = rows 2k, 2k+1) to Llama's (pair k = rows k, k + d_head/2): even rows first, then odd rows."""
    d_out, d_in = weight.shape
    return weight.reshape(num_heads, d_out // num_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def halves_to_pairs(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of pairs_to_halves: Llama's half-split rows back to adjacent pairs."""
    d_out, d_in = weight.shape
    return weight.reshape(num_heads, 2, d_out // num_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def _name_map(num_layers: int) -> dict[str, str]:
    names = dict(_MODEL_NAMES)
    for i in range(num_layers):
        names.update(
            {f"layers.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in _LAYER_NAMES.items()}
        )
    return names


def to_llama(
    weights: dict[str, torch.Tensor], arch: ModelConfig, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Our state dict (TransformerLM names) as Llama's, in `dtype`; tied embeddings keep embed_tokens only."""
    tensors = {}
    for ours, theirs in _name_map(arch.num_layers).items():
        if ours == "lm_head.weight" and arch.tie_embeddings:
            continue
        tensor = weights[ours]
        if ours.endswith(_ROTATED):
            tensor = pairs_to_halves(tensor, arch.num_heads)
        tensors[theirs] = tensor.to(dtype).contiguous()
    return tensors


def from_llama(
    tensors: dict[str, torch.Tensor], arch: ModelConfig, shapes: dict[str, torch.Size], where: Path
) -> dict[str, torch.Tensor]:
    """Llama's tensors as our state dict in float32; a missing or unknown tensor, or one whose shape differs
    from `shapes` (our model's, from config.json), is a UserError."""
    names = _name_map(arch.num_layers)
    tied = arch.tie_embeddings
    unknown = sorted(
        set(tensors) - set(names.values()) - {n for n in tensors if n.endswith(_IGNORED_ON_IMPORT)}
    )
    if unknown:
        raise UserError(
            f"{where}: tensor {unknown[0]} has no counterpart here (a feature lmproject does not have)"
        )
    weights = {}
    for ours, theirs in names.items():
        if ours == "lm_head.weight" and tied:
            weights[ours] = weights["token_embeddings.weight"]
            continue
        if theirs not in tensors:
            raise UserError(f"{where}: tensor {theirs} is missing")
        if tensors[theirs].shape != shapes[ours]:  # before reordering rows, which needs the shape
            raise UserError(
                f"{where}: {theirs} has shape {tuple(tensors[theirs].shape)}, config.json implies "
                f"{tuple(shapes[ours])}"
            )
        tensor = tensors[theirs].to(torch.float32)
        weights[ours] = halves_to_pairs(tensor, arch.num_heads) if ours.endswith(_ROTATED) else tensor
    return weights


def llama_config(arch: ModelConfig, dtype: str, eos_id: int | None) -> dict[str, Any]:
    """config.json of LlamaForCausalLM for our architecture."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.d_model,
        "intermediate_size": arch.d_ff,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_heads,
        "head_dim": arch.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": arch.context_length,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": float(arch.rope_theta),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": arch.tie_embeddings,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def arch_from_llama(config: dict[str, Any], where: Path) -> ModelConfig:
    """Our architecture from a Llama config.json; a feature we do not have is a UserError naming the
    field."""
    for field in _LLAMA_SIZES:
        if isinstance(config.get(field), bool) or not isinstance(config.get(field), int) or config[field] < 1:
            raise UserError(f"{where}: {field} is {config.get(field)!r}, expected a positive integer")
    heads = config["num_attention_heads"]
    if config["max_position_embeddings"] > MAX_IMPORT_POSITIONS:
        raise UserError(
            f"{where}: max_position_embeddings is {config['max_position_embeddings']:,}, more than the "
            f"{MAX_IMPORT_POSITIONS:,} positions lmproject imports (its RoPE tables and KV cache hold "
            "every position)"
        )
    kv_heads = config.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else kv_heads  # Hugging Face's null: as many as the heads
    rope = config.get("rope_parameters") or {}
    theta_field = "rope_parameters.rope_theta" if "rope_theta" in rope else "rope_theta"
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise UserError(f"{where}: {theta_field} is {theta!r}, expected a number > 0")
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise UserError(f"{where}: tie_word_embeddings is {tied!r}, expected true or false")
    refusals = [
        (config.get("model_type") != "llama", f"model_type is {config.get('model_type')!r}, not 'llama'"),
        (kv_heads != heads,
         f"num_key_value_heads={kv_heads} differs from num_attention_heads={heads} "
         "(grouped-query attention)"),
        (bool(config.get("rope_scaling")) or rope.get("rope_type", "default") != "default",
         f"rope_scaling is {config.get('rope_scaling') or rope!r} (only plain RoPE)"),
        (bool(config.get("attention_bias")), "attention_bias is true (no biases here)"),
        (bool(config.get("mlp_bias")), "mlp_bias is true (no biases here)"),
        (config.get("hidden_act", "silu") != "silu",
         f"hidden_act is {config.get('hidden_act')!r} (only silu)"),
        (config.get("sliding_window") is not None, f"sliding_window is {config.get('sliding_window')}"),
        (config.get("rms_norm_eps") != RMS_NORM_EPS,
         f"rms_norm_eps is {config.get('rms_norm_eps')} (lmproject's RMSNorm uses {RMS_NORM_EPS})"),
        (config.get("head_dim", config["hidden_size"] // heads) * heads != config["hidden_size"],
         f"head_dim={config.get('head_dim')} x {heads} heads is not hidden_size={config['hidden_size']}"),
    ]  # fmt: skip
    for refused, reason in refusals:
        if refused:
            raise UserError(f"{where}: {reason}: lmproject cannot express this model")
    return ModelConfig(
        vocab_size=config["vocab_size"],
        context_length=config["max_position_embeddings"],
        d_model=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        d_ff=config["intermediate_size"],
        rope_theta=float(theta),
        tie_embeddings=tied,
    )


def export_folder(
    arch: ModelConfig, weights: dict[str, torch.Tensor], tokenizer: Tokenizer, out: Path, dtype: str
) -> None:
    """Write the Hugging Face folder of a model (our architecture and state dict) and its tokenizer."""
    check_llama_expressible(arch)
    check_tokenizer_fits(tokenizer, arch)
    eos = EOS_TOKEN if EOS_TOKEN in tokenizer.special_tokens else None
    eos_id = tokenizer.encode(eos)[0] if eos else None
    others = [token for token in tokenizer.special_tokens if token != eos]
    special_tokens = {"bos_token": eos, "eos_token": eos} if eos else {}
    if others:
        special_tokens["additional_special_tokens"] = others
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": arch.context_length,
        "clean_up_tokenization_spaces": False,  # decode gives the text back exactly
        "add_bos_token": False,  # documents start as trained: <|endoftext|> only where the text has one
        **special_tokens,
    }
    with atomic_dir(out) as folder:
        save_file(
            to_llama(weights, arch, DTYPES[dtype]), folder / "model.safetensors", metadata={"format": "pt"}
        )
        usual_permissions(folder / "model.safetensors")  # save_file makes it private (0600)
        _write_json(folder / "config.json", llama_config(arch, dtype, eos_id))
        _write_json(folder / "generation_config.json", {"bos_token_id": eos_id, "eos_token_id": eos_id})
        save_tokenizer_json(
            folder / TOKENIZER_JSON, tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens
        )
        _write_json(folder / "tokenizer_config.json", tokenizer_config)
        _write_json(folder / "special_tokens_map.json", special_tokens)


def import_folder(source: Path, out: Path, settings: Mapping[str, Any]) -> ModelConfig:
    """Turn a Hugging Face Llama folder into the run directory `out`; returns the model's architecture.
    `settings` are the training settings saved beside it in the checkpoint's hyperparameters."""
    config_path = source / "config.json"
    config = _read_json(config_path)
    arch = arch_from_llama(config, config_path)
    weights = from_llama(_load_safetensors(source), arch, model_shapes(arch), source)
    bad = first_non_finite(weights)
    if bad is not None:
        raise UserError(f"{source}: the weight {bad} holds NaN or infinite values: not a usable model")
    tokenizer = None
    if (source / TOKENIZER_JSON).is_file():
        try:
            tokenizer = Tokenizer(*load_tokenizer_json(source / TOKENIZER_JSON))
        except ValueError as err:
            raise UserError(f"{source / TOKENIZER_JSON}: {err}") from None
        if tokenizer.vocab_size > arch.vocab_size:
            raise UserError(
                f"{source / TOKENIZER_JSON}: {tokenizer.vocab_size} ids, more than config.json's "
                f"vocab_size={arch.vocab_size}"
            )
    dtype = config.get("torch_dtype") or config.get("dtype")
    with atomic_dir(out) as folder:
        hyper_parameters = {"arch": asdict(arch), **settings}
        save_weights_checkpoint(weights, hyper_parameters, folder / "checkpoints" / "last.ckpt")
        if tokenizer is not None:
            tokenizer.save(folder / "tokenizer")
        run_config = _run_config(out.absolute(), arch, dtype, tokenizer is not None)
        (folder / "config.yaml").write_text(run_config, encoding="utf-8")
    return arch


def save_weights_checkpoint(
    weights: dict[str, torch.Tensor], hyper_parameters: dict[str, Any], path: Path
) -> None:
    """Write a weights-only checkpoint in LanguageModel's Lightning format: the TransformerLM's state dict
    under `model.` and LanguageModel's hyperparameters, no optimizer or loop state (`fit` starts a new run
    from it)."""
    checkpoint = {
        "state_dict": {f"model.{name}": tensor for name, tensor in weights.items()},
        "hyper_parameters": hyper_parameters,
        "pytorch-lightning_version": importlib.metadata.version("lightning"),
        "epoch": 0,
        "global_step": 0,
    }
    write_checkpoint(checkpoint, path)


def _run_config(out: Path, arch: ModelConfig, dtype: str | None, has_tokenizer: bool) -> str:
    """config.yaml of an imported run: its model, its run directory, placeholders for the token files.
    The paths are absolute (`out` is), so that the config works from any directory."""
    config = {
        "trainer": {
            "default_root_dir": str(out),
            "precision": "bf16-mixed" if dtype in ("bfloat16", "float16") else "32-true",
        },
        "model": {"arch": asdict(arch)},
        "data": {
            "train_path": str(out / "data" / "train.npy"),
            "val_path": str(out / "data" / "valid.npy"),
            "tokenizer_dir": str(out / "tokenizer"),
            "batch_size": 32,
        },
    }
    ready = (
        "predict and evaluate work as is"
        if has_tokenizer
        else "the folder had no tokenizer.json: predict and evaluate need one in data.tokenizer_dir"
    )
    header = (
        f"# Written by `lmproject import`. {ready}.\n"
        "# validate, test and fit need token files (at data.train_path / data.val_path, or\n"
        "# --data.train_path ... --data.val_path ...), and fit a token budget (--train_tokens N).\n"
        "# fit starts at step 0 from the imported weights, with a fresh AdamW.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def _load_safetensors(source: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: the shards listed in model.safetensors.index.json, or else its .safetensors
    files."""
    index = source / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no weight_map")
        files = sorted({source / name for name in weight_map.values()})
    else:
        files = sorted(source.glob("*.safetensors"))
    if not files:
        raise UserError(f"{source}: no model.safetensors (only safetensors weights can be imported)")
    tensors = {}
    for file in files:
        if not file.is_file():
            raise UserError(f"{file}: listed in {index.name} but missing")
        try:
            tensors.update(load_file(file))
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise UserError(f"{file}: not a readable safetensors file ({err})") from None
    return tensors


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object")
    return document


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
