"""Peak memory of a training step of this implementation: predicted from the shapes, and measured on CPU.

The prediction counts the tensors this code keeps alive at its two high points (GB = 1e9 bytes):

- Forward end / start of backward: parameters (float32), AdamW's two moments, under bf16-mixed the bfloat16
  copies autocast makes of every matmul weight, and the activations autograd saved, plus the loss's
  buffers. Gradients do not exist yet (Lightning and the plain loop zero them to None).
- The optimizer step: parameters, gradients, both moments and one more parameter-sized temporary (√v + ε).

Saved activations per token and layer (pre-norm, SwiGLU, the fused attention; d = d_model, f = d_ff,
h = heads), counted from what each op of lmproject.nn saves (the SiLU FFN saves 3 f-sized tensors instead
of 5, and under bf16-mixed one bfloat16 copy of its input instead of 2; other norm placements and
attention="math", which keeps the scores, are not modelled):
  float32:      44d + 20f + 4h + 8 bytes: the block input, x/rms and the normed input twice (ln1, ln2), q and
                k after RoPE, v, attention output and its reshaped copy, the residual after attention, the
                SwiGLU's w1 output, its sigmoid, silu, w3 output and the product (f each), 4 bytes of
                log-sum-exp per head, two inverse RMS values.
  bf16-mixed:   36d + 10f + 4h + 8: the residual stream and norms stay float32, matmul inputs are saved as
                bfloat16 copies (q, k and v each cast the normed input again, as do w1 and w3), matmul
                outputs are bfloat16.
  checkpointed: 4d, the block's input; backward recomputes one block at a time, adding one block's
                activations back during its backward (whichever is larger: that, or the loss's buffers).
After the last layer: the final residual, x/rms and ln_final's output (12d float32, 10d bf16-mixed), and the
loss. The plain cross-entropy holds 8V bytes per token at its peak (the float32 logits and the shifted copy
in forward; the softmax and its gradient in backward), 10V under bf16-mixed (the bfloat16 logits besides);
the chunked one (model.loss_chunk_tokens) keeps the gradient of the hidden states (4d) and of the lm head
(4 bytes per weight, plus one chunk's share of it: 2 bf16, 4 float32) and a chunk's logits: 4V bytes per
chunk token in float32; 8V in bf16-mixed, the float32 copy besides the bfloat16 logits and gradient.
The token ids and targets add 16 bytes per token.

Not counted: the allocator's own slack (a CUDA caching allocator rounds blocks; glibc keeps freed memory),
kernel workspaces, CUDA context, torch.compile's buffers. `python -m lmproject.memory measure ...` measures
the peak resident memory of real training steps on CPU in a fresh process (tests/test_memory.py holds the
prediction to within 15% of it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace

from lmproject.accounting import parameter_counts
from lmproject.errors import ArgumentParser
from lmproject.nn.config import ModelConfig

PRECISIONS = ("32-true", "bf16-mixed")
GB = 1e9


def layer_activation_bytes(config: ModelConfig, bf16: bool) -> int:
    """Activation bytes one layer saves per token (docstring above)."""
    d, f, h = config.d_model, config.d_ff, config.num_heads
    swiglu = config.ffn == "swiglu"
    ffn_tensors = 5 if swiglu else 3  # the SiLU ablation: w1 output, sigmoid, silu
    if bf16:  # w1 and w3 each save their own bfloat16 copy of the normed input (SiLU: w1 only)
        return 32 * d + (4 if swiglu else 2) * d + 2 * ffn_tensors * f + 4 * h + 8
    return 44 * d + 4 * ffn_tensors * f + 4 * h + 8


def _matmul_parameters(config: ModelConfig) -> int:
    """Parameters that go through a matmul (autocast casts them to bfloat16): all but embeddings, norms."""
    counts = parameter_counts(config)
    return counts["attention"] + counts["ffn"] + config.vocab_size * config.d_model


def training_memory(
    config: ModelConfig,
    batch_size: int,
    precision: str = "32-true",
    activation_checkpointing: bool = False,
    loss_chunk_tokens: int | None = None,
) -> dict[str, int]:
    """Predicted bytes at the forward/backward high point by component, and "peak": the larger of their
    sum and the optimizer step's parameters + gradients + moments + temporary."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16-mixed"
    params = sum(parameter_counts(config).values())
    d, vocab, tokens = config.d_model, config.vocab_size, batch_size * config.context_length
    layer = layer_activation_bytes(config, bf16)
    final = 10 * d if bf16 else 12 * d
    if loss_chunk_tokens is None:
        loss_per_token, loss_fixed = (10 if bf16 else 8) * vocab, 0
    else:
        loss_per_token = 4 * d
        # the lm head's float32 gradient and one chunk's share of it, a chunk's logits and cast copy
        chunk = min(loss_chunk_tokens, tokens)
        loss_fixed = (6 if bf16 else 8) * vocab * d + (8 if bf16 else 4) * vocab * chunk
    if activation_checkpointing:
        per_token = config.num_layers * 4 * d + final + max(loss_per_token, layer) + 16
    else:
        per_token = config.num_layers * layer + final + loss_per_token + 16
    components = {
        "parameters": 4 * params,
        "AdamW moments": 8 * params,
        "bf16 weight copies": 2 * _matmul_parameters(config) if bf16 else 0,
        "activations and loss": per_token * tokens + loss_fixed,
    }
    components["peak"] = max(sum(components.values()), 20 * params)
    return components


def precision_kind(precision: str) -> str:
    """A Lightning precision setting as the prediction's "32-true" or "bf16-mixed" (16-mixed autocasts to
    float16, whose tensors have the same sizes)."""
    kinds = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "bf16-mixed"}
    if str(precision) not in kinds:
        raise ValueError(f"the memory prediction covers precision {', '.join(kinds)}; got {precision!r}")
    return kinds[str(precision)]


def memory_report(config: ModelConfig, batch_size: int, precision: str, loss_chunk_tokens: int | None) -> str:
    """The predicted peaks for `precision` and float32, each with and without activation checkpointing."""
    precision = precision_kind(precision)
    chunk = f"the loss in chunks of {loss_chunk_tokens} tokens" if loss_chunk_tokens else "the plain loss"
    lines = [
        f"predicted peak training memory of this implementation, batch {batch_size}, {chunk} "
        "(lmproject.memory; GB = 1e9 bytes)",
        f"  {'precision':<11} {'checkpointing':<13} {'weights+AdamW':>13} {'activations':>11} {'peak':>9}",
    ]
    for kind in dict.fromkeys([precision, "32-true"]):
        for checkpointing in (False, True):
            parts = training_memory(config, batch_size, kind, checkpointing, loss_chunk_tokens)
            fixed = parts["parameters"] + parts["AdamW moments"] + parts["bf16 weight copies"]
            lines.append(
                f"  {kind:<11} {'on' if checkpointing else 'off':<13} {fixed / GB:13.3f} "
                f"{parts['activations and loss'] / GB:11.3f} {parts['peak'] / GB:9.3f}"
            )
    lines.append(
        "  peak: what `lmproject fit` needs on one device with these settings (this implementation's "
        "tensors;\n  the handout's total above counts its own list)"
    )
    return "\n".join(lines)


def measure_peak(
    config: ModelConfig,
    batch_size: int,
    precision: str = "32-true",
    activation_checkpointing: bool = False,
    loss_chunk_tokens: int | None = None,
    steps: int = 2,
) -> dict:
    """Peak resident memory (bytes) of `steps` training steps on CPU above the resident memory before the
    model existed, in this process: the model, the project's AdamW and clipping, the config's precision.
    Run it in a fresh process (main() below) with MALLOC_MMAP_THRESHOLD_ set, so that freed tensors go back
    to the system and the resident size follows the live tensors."""

    tiny = replace(config, vocab_size=64, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=16)
    # The first step maps in library code and allocator pools that no later step adds: take them out of
    # the figure with a step of a tiny model first.
    _train(tiny, 2, precision, activation_checkpointing, loss_chunk_tokens, steps=2)
    with open("/proc/self/clear_refs", "w") as refs:  # restart the peak (VmHWM) from here
        refs.write("5")
    baseline = _status_bytes("VmRSS")
    start = time.perf_counter()
    losses = _train(config, batch_size, precision, activation_checkpointing, loss_chunk_tokens, steps)
    return {
        "peak_bytes": _status_bytes("VmHWM") - baseline,
        "seconds_per_step": (time.perf_counter() - start) / steps,
        "losses": losses,
    }


def _train(
    config: ModelConfig, batch_size: int, precision: str, activation_checkpointing: bool,
    loss_chunk_tokens: int | None, steps: int,
) -> list[float]:  # fmt: skip
    """`steps` training steps of a fresh model (seed 0) on random tokens; the losses."""
    import torch

    from lmproject.nn import TransformerLM
    from lmproject.training.optim import AdamW, clip_gradients

    torch.manual_seed(0)
    model = TransformerLM(config, activation_checkpointing=activation_checkpointing)
    optimizer = AdamW(model.parameters())
    losses = []
    for _ in range(steps):
        x, y = torch.randint(0, config.vocab_size, (2, batch_size, config.context_length))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = model.loss(x, y, loss_chunk_tokens)
        loss.backward()
        clip_gradients(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_in_subprocess(
    config: ModelConfig, batch_size: int, precision: str, activation_checkpointing: bool = False,
    loss_chunk_tokens: int | None = None, threads: int = 1, steps: int = 2,
) -> dict:  # fmt: skip
    """measure_peak in a fresh Python process (nothing else of this process's memory is counted)."""
    import subprocess

    args = [sys.executable, "-m", "lmproject.memory", "--config", json.dumps(asdict(config)),
            "--batch-size", str(batch_size), "--precision", precision, "--steps", str(steps)]  # fmt: skip
    if activation_checkpointing:
        args.append("--activation-checkpointing")
    if loss_chunk_tokens is not None:
        args += ["--loss-chunk-tokens", str(loss_chunk_tokens)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """`python -m lmproject.memory --config JSON --batch-size B ...`: print measure_peak's result as JSON."""
    parser = ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", required=True, help="ModelConfig fields as a JSON object")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--loss-chunk-tokens", type=int)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure_peak(
        ModelConfig(**json.loads(args.config)),
        args.batch_size,
        args.precision,
        args.activation_checkpointing,
        args.loss_chunk_tokens,
        args.steps,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
