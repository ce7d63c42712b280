"""Resource accounting for the Transformer LM: parameters, FLOPs, AdamW memory, training time.

Conventions (they reproduce the CS336 reference analysis exactly; tests/test_accounting.py pins the figures):

- Parameters: token embeddings and an untied lm head (vocab x d_model each); per layer four d x d attention
  projections (q, k, v, output), the FFN (SwiGLU: three d x d_ff matrices w1, w2, w3; the SiLU ablation and
  the ReLU² FFN: two), two RMSNorm gains of d; one final RMSNorm gain. No biases. RoPE has no parameters.
  The ablations' switches (`norm` post/none, `ffn` silu or relu2, `tie_embeddings`) change the counts
  exactly as lmproject.nn builds the model (qk_norm's per-head gains, 2 x d_head a layer, are not counted).
- FLOPs: only matrix multiplies count, 2 FLOPs per multiply-add, for one sequence of `context_length` tokens:
  attention projections 2*T*d*4d, attention scores Q K^T plus the weighted sum of values 2 * 2*T*T*d (the full
  T x T matrix, no causal saving), FFN 2*T*d*d_ff per matrix, lm head 2*T*d*V. The embedding lookup, norms,
  softmax and activations are elementwise and are not counted.
- Training step: forward x 3 (the backward pass costs two forward passes: gradients for the inputs and for the
  weights) times the batch size, plus the optimizer: AdamW spends 14 FLOPs per parameter (m: 3, v: 4,
  the update m / (sqrt(v) + eps) scaled by the learning rate: 5, decoupled weight decay: 2).
- Memory: float32 (4 bytes) everywhere; GB = 1e9 bytes. Parameters, gradients (one per parameter) and AdamW's
  two moments give 16 bytes per parameter. Activations follow the handout's list per layer: both RMSNorm
  outputs (2*T*d), Q, K, V (3*T*d), the scores Q K^T and their softmax (2*h*T*T), the weighted sum (T*d), the
  output projection (T*d), the FFN's W1 output and SiLU (2*T*d_ff) and W2 output (T*d); then the final
  RMSNorm (T*d), the logits (T*V) and the cross-entropy's softmax over them (T*V). Absent norms store nothing.
  That is the handout's estimate; `lmproject accounting` also prints lmproject.memory's prediction of this
  implementation's peak (what its ops save, bf16-mixed, activation checkpointing), checked against measured
  peaks.

Two reference figures are rounded there and exact here: the reference's constant memory term 34.04 GB is
8.51 + 8.51 + 17.02 (parameters, gradients, optimizer state each rounded to 10 MB first), exactly 34.03 GB;
its "about 6,581 days" divides the per-step FLOPs rounded to 1.386e16, the exact figure is 6,583.57 days
(printed 6,583.6).
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

from lmproject.errors import UserError
from lmproject.nn.config import ModelConfig
from lmproject.settings import check_settings, did_you_mean
from lmproject.tokenizer.files import read_text

BYTES_PER_FLOAT = 4
GB = 1e9
ADAMW_FLOPS_PER_PARAM = 14
A100_FLOAT32 = 19.5e12  # FLOP/s: the default peak of the training-time estimate
FFN_MATRICES = {"swiglu": 3, "silu": 2, "relu2": 2}
# RMSNorms per layer and after the last layer: pre-norm has ln1, ln2 and ln_final; post-norm has no ln_final.
NORM_COUNTS = {"pre": (2, 1), "post": (2, 0), "none": (0, 0)}


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Trainable parameters by component."""
    d, n_layers = config.d_model, config.num_layers
    per_layer_norms, final_norms = NORM_COUNTS[config.norm]
    return {
        "token embeddings": config.vocab_size * d,
        "attention": n_layers * 4 * d * d,
        "ffn": n_layers * FFN_MATRICES[config.ffn] * d * config.d_ff,
        "rmsnorm": (n_layers * per_layer_norms + final_norms) * d,
        "lm head": 0 if config.tie_embeddings else config.vocab_size * d,
    }


def forward_flops(config: ModelConfig) -> dict[str, int]:
    """Forward-pass matmul FLOPs for one sequence of `context_length` tokens, by component."""
    t, d, n_layers = config.context_length, config.d_model, config.num_layers
    return {
        "attention projections": n_layers * 2 * t * d * 4 * d,
        "attention scores + weighted sum": n_layers * 2 * 2 * t * t * d,
        "ffn": n_layers * 2 * t * d * config.d_ff * FFN_MATRICES[config.ffn],
        "lm head": 2 * t * d * config.vocab_size,
    }


def flop_shares(config: ModelConfig) -> dict[str, float]:
    """Percent of forward FLOPs in attention (projections + scores), the FFN and the lm head."""
    flops = forward_flops(config)
    total = sum(flops.values())
    attention = flops["attention projections"] + flops["attention scores + weighted sum"]
    return {
        name: 100 * value / total
        for name, value in [("attention", attention), ("ffn", flops["ffn"]), ("lm head", flops["lm head"])]
    }


def train_flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token (forward x 3) for MFU: multiply by tokens/s and divide by the peak FLOP/s.

    The optimizer's per-step cost is left out (it is about 1e-6 of a step for any realistic batch)."""
    return 3 * sum(forward_flops(config).values()) / config.context_length


def train_step_flops(config: ModelConfig, batch_size: int) -> int:
    """FLOPs of one training step: forward x 3 over the batch plus the AdamW update."""
    params = sum(parameter_counts(config).values())
    return 3 * sum(forward_flops(config).values()) * batch_size + ADAMW_FLOPS_PER_PARAM * params


def activation_floats(config: ModelConfig) -> int:
    """Activations kept for the backward pass of one sequence, in floats (the handout's list)."""
    t, d, h = config.context_length, config.d_model, config.num_heads
    per_layer_norms, final_norms = NORM_COUNTS[config.norm]
    per_layer = (
        per_layer_norms * t * d + 3 * t * d + 2 * h * t * t + t * d + t * d + 2 * t * config.d_ff + t * d
    )
    return config.num_layers * per_layer + final_norms * t * d + 2 * t * config.vocab_size


def adamw_memory_bytes(config: ModelConfig, batch_size: int) -> dict[str, int]:
    """Peak float32 memory of an AdamW training step, by component."""
    params = sum(parameter_counts(config).values())
    return {
        "parameters": BYTES_PER_FLOAT * params,
        "gradients": BYTES_PER_FLOAT * params,
        "optimizer state": 2 * BYTES_PER_FLOAT * params,
        "activations": BYTES_PER_FLOAT * activation_floats(config) * batch_size,
    }


def max_batch_size(config: ModelConfig, memory_bytes: float) -> int:
    """Largest batch whose AdamW step fits in `memory_bytes` (0 if not even the weights and state fit)."""
    fixed = sum(adamw_memory_bytes(config, 0).values())
    per_sequence = adamw_memory_bytes(config, 1)["activations"]
    return max(0, math.floor((memory_bytes - fixed) / per_sequence))


def training_seconds(
    config: ModelConfig, batch_size: int, steps: int, mfu: float, peak_flops: float, devices: int = 1
) -> float:
    """Wall-clock time of `steps` training steps of `batch_size` sequences (all devices together) at a model
    FLOPs utilization of `mfu` of `peak_flops` per device."""
    return train_step_flops(config, batch_size) * steps / (mfu * peak_flops * devices)


def steps_for_tokens(
    tokens: int, batch_size: int, context_length: int, accumulation: int = 1, devices: int = 1
) -> int:
    """Optimizer steps in a budget of `tokens` training tokens, as `lmproject fit --train_tokens` runs it:
    a step takes `accumulation` micro-batches of batch_size x context_length tokens on each of `devices`;
    the last step is rounded up."""
    return math.ceil(tokens / (batch_size * context_length * accumulation * devices))


# GPT-2's shapes as the reference analysis uses them (SwiGLU FFN, untied lm head, d_ff = 4 * d_model).
PRESETS = {
    "gpt2-small": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=3072
    ),
    "gpt2-medium": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=1024, num_layers=24, num_heads=16, d_ff=4096
    ),
    "gpt2-large": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=1280, num_layers=36, num_heads=20, d_ff=5120
    ),
    "gpt2-xl": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=1600, num_layers=48, num_heads=25, d_ff=6400
    ),
}


def _mapping_with(node: object, key: str) -> dict:
    """The first mapping, depth first, that holds `key` (LightningCLI nests values under init_args)."""
    if isinstance(node, dict):
        if key in node:
            return node
        for value in node.values():
            found = _mapping_with(value, key)
            if found:
                return found
    return {}


def load_config_file(path: Path) -> dict:
    """One LightningCLI YAML file as a mapping; a missing, unreadable or malformed file (an empty one, a key
    given twice: lmproject.config_yaml) is a UserError naming it."""
    from lmproject.config_yaml import load_config_yaml  # imports yaml: only for a --config

    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    config = load_config_yaml(read_text(path), str(path))
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping with a `model:` section")
    return config


def merge_configs(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section, as LightningCLI layers repeated --config files."""
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_configs(merged[key], value) if both else value
    return merged


def _config_devices(trainer: dict) -> int | None:
    """trainer.devices x trainer.num_nodes as Lightning reads them (a count, a list or "0,1" of device ids);
    None for "auto" or -1, every visible device, which only the training machine knows."""
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    elif isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, list):
        devices = len(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices <= 0:
        return None
    return devices * nodes


def read_config(paths: list[Path]) -> tuple[dict, dict]:
    """(the architecture, `model.arch`; other defaults: the model's other settings, batch size, accumulation,
    devices, steps) from LightningCLI YAMLs."""
    config: dict = {}
    for path in paths:
        config = merge_configs(config, load_config_file(path))
    return config_settings(config, " + ".join(str(p) for p in paths))


def config_settings(config: dict, names: str) -> tuple[dict, dict]:
    """read_config's figures from a merged config; `names` (its files) heads the errors."""
    model = _mapping_with(config.get("model"), "arch")
    if not isinstance(model.get("arch"), dict):
        raise UserError(f"{names}: no architecture (d_model, ...) under `model: arch:`")
    unknown = [name for name in model["arch"] if name not in {f.name for f in fields(ModelConfig)}]
    if unknown:
        valid = [f"model.arch.{f.name}" for f in fields(ModelConfig)]
        raise UserError(
            f"{names}: model.arch.{unknown[0]} is not an architecture field (lmproject.nn.ModelConfig)"
            + did_you_mean(f"model.arch.{unknown[0]}", valid)
        )
    data = _mapping_with(config.get("data"), "batch_size")
    check_settings("data", data)
    check_settings("", {"train_tokens": config.get("train_tokens")})
    trainer = config.get("trainer") or {}
    check_settings("trainer", trainer)
    steps = trainer.get("max_steps")
    return dict(model["arch"]), {
        "model": {name: value for name, value in model.items() if name != "arch"},
        "batch_size": data.get("batch_size"),
        "accumulation": trainer.get("accumulate_grad_batches"),
        "devices": _config_devices(trainer),
        "steps": steps if steps and steps > 0 else None,
        "train_tokens": config.get("train_tokens"),
        "precision": None if trainer.get("precision") is None else str(trainer["precision"]),
    }


def _table(title: str, rows: dict[str, float], unit: str, fmt: str = ",.0f") -> str:
    total = sum(rows.values())
    width = max(len(name) for name in [*rows, "total"])
    lines = [f"{title}", f"  {'component':<{width}}  {unit:>22}  {'share':>7}"]
    for name, value in [*rows.items(), ("total", total)]:
        share = 100 * value / total if total else 0.0
        lines.append(f"  {name:<{width}}  {value:>22{fmt}}  {share:>6.2f}%")
    return "\n".join(lines)


def report(
    config: ModelConfig,
    batch_size: int,
    memory_gb: float,
    mfu: float,
    peak: float,
    steps: int,
    accumulation: int = 1,
    devices: int = 1,
) -> str:
    """All the tables for one model config, as printed by `lmproject accounting`. `batch_size` is one
    device's micro-batch (what memory holds); an optimizer step trains batch_size x accumulation x devices
    sequences."""
    memory_bytes = adamw_memory_bytes(config, batch_size)
    unit, scale = ("GB", GB) if sum(memory_bytes.values()) >= GB else ("MB", 1e6)
    memory = {k: v / scale for k, v in memory_bytes.items()}
    per_seq = adamw_memory_bytes(config, 1)["activations"] / scale
    fixed = sum(memory.values()) - memory["activations"]
    step_batch = batch_size * accumulation * devices
    step = train_step_flops(config, step_batch)
    seconds = training_seconds(config, step_batch, steps, mfu, peak, devices)
    batch_line = f"batch {step_batch}"
    if step_batch != batch_size:
        batch_line += f" ({batch_size} per device x {accumulation} accumulated x {devices} devices)"
    arch_line = ", ".join(f"{k}={v}" for k, v in asdict(config).items())
    return "\n\n".join(
        [
            f"model.arch: {arch_line}",
            _table("parameters", parameter_counts(config), "parameters"),
            _table(
                f"forward matmul FLOPs per sequence of {config.context_length} tokens",
                forward_flops(config),
                "FLOPs",
            )
            + "\n  shares: "
            + ", ".join(f"{name} {share:.2f}%" for name, share in flop_shares(config).items()),
            f"training step FLOPs (forward x 3 over {batch_line} + AdamW): {step:.4e}\n"
            f"training FLOPs per token: {step / (step_batch * config.context_length):.4e}",
            _table(
                f"AdamW peak memory, float32, batch {batch_size} (one device's micro-batch)",
                memory,
                f"{unit} (1e{math.log10(scale):.0f} bytes)",
                ",.2f",
            )
            + f"\n  = {per_seq:.2f} * batch + {fixed:.2f} {unit}; largest batch in {memory_gb:g} GB: "
            f"{max_batch_size(config, memory_gb * GB)}\n  total: the handout's estimate of a float32 AdamW "
            "step (its list of tensors);\n  what this implementation needs: the predicted peak below",
            f"training time for {steps:,} steps of {batch_line} at {100 * mfu:g}% MFU of "
            f"{peak / 1e12:g} TFLOP/s{' per device' if devices > 1 else ''}"
            f"{' (assumed: an A100, float32; --peak-flops, --mfu)' if peak == A100_FLOAT32 else ''}: "
            + duration(seconds),
        ]
    )


def duration(seconds: float) -> str:
    """`seconds` in seconds, hours and days, as the report prints a training time."""
    return f"{seconds:,.0f} s = {seconds / 3600:,.2f} h = {seconds / 86400:,.1f} days"
