"""Generation speed: our cached `generate` against a plain KV-cache loop and the weight-streaming limit.

    .venv/bin/python bench/bench_generate.py [--dtype float32|bfloat16] [--device cpu|cuda] [--cuda-graph]
        [--compiled-step] [--new-tokens 240] [--prompt-len 16] [--num-samples 16] [--repeats 3] [--threads N]
        [--clock wall|cpu] [--recompute] [--window-slide N]

TinyStories configuration with random weights, greedy, a 16-token prompt and 240 new tokens (inside the
256-token context). Each repeat runs, on the same weights and in the same dtype:
  - plain: a straightforward KV-cache loop written below with torch.nn.functional (cache grown by torch.cat);
  - cached: lmproject.sampling.generate at batch 1;
  - batch N: `--num-samples` copies of the prompt in one `generate` call (what `predict --num_samples N`
    runs), counted as N x new tokens;
  - no graph (with --cuda-graph): `generate` launching each step's kernels from Python;
  - compiled, batch N compiled (with --compiled-step, CPU): `generate(..., compiled_step=True)`, the decode
    step compiled by torch.compile (lmproject/sampling/compiled_step.py); compiled once before the repeats,
    and the compile time printed; with --dtype bfloat16 also `float32 compiled`, the float32 model compiled;
  - recompute (--recompute): no cache, the whole window per token (tests/reference_model.greedy_recompute);
    with `--new-tokens 256` the run passes the context, both slide the window (`--window-slide`), and the
    plain loop, which does not slide, is left out (issue 5's comparison).
A batch-1 decode step reads every non-embedding weight once, so the memory bandwidth sets a limit:
bandwidth / bytes of those weights. The bandwidth is measured here with a matrix-vector product over a
matrix much larger than any cache. With --dtype bfloat16 the float32 `generate` runs too, for the speed
ratio and for how many of 256 greedy tokens the two dtypes share (random weights: near-ties are common).
Figures: best tokens/s of each, and the median of the per-repeat ratios (robust to noisy neighbours).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_model import TINYSTORIES  # noqa: E402
from reference_model import feed_forward, greedy_recompute, rms_norm, rope  # noqa: E402

from lmproject.nn import TransformerLM  # noqa: E402
from lmproject.precision import DTYPES  # noqa: E402
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import generate, window_slide_for  # noqa: E402

STREAM_BYTES = 512 * 2**20  # the bandwidth probe's matrix: far beyond any CPU cache
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@torch.no_grad()
def plain_kv_greedy(model: TransformerLM, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding with a plain KV cache: keys and values grow by torch.cat, every weight is read
    from the state dict with F.linear, the head runs on the last position only."""
    w = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    config = model.config
    heads, d_model = config.num_heads, config.d_model
    cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * config.num_layers

    def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
        seq = ids.shape[1]
        positions = torch.arange(start, start + seq, device=ids.device)
        x = F.embedding(ids, w["token_embeddings.weight"])
        for i in range(config.num_layers):
            p = f"layers.{i}."
            h = rms_norm(x, w[p + "ln1.weight"])
            q, k, v = (
                F.linear(h, w[f"{p}attn.{name}_proj.weight"]).view(1, seq, heads, -1).transpose(1, 2)
                for name in "qkv"
            )
            q, k = rope(q, positions, config.rope_theta), rope(k, positions, config.rope_theta)
            if cache[i] is not None:
                k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
            cache[i] = (k, v)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1)
            x = x + F.linear(out.transpose(1, 2).reshape(1, seq, d_model), w[p + "attn.output_proj.weight"])
            x = x + feed_forward(rms_norm(x, w[p + "ln2.weight"]), w, p + "ffn.", "swiglu")
        return F.linear(rms_norm(x[:, -1], w["ln_final.weight"]), w["lm_head.weight"])

    device = w["lm_head.weight"].device
    logits = forward(torch.tensor([prompt], device=device), 0)
    completion = []
    for step in range(new_tokens):
        token = logits.argmax(dim=-1)
        completion.append(int(token))
        if step < new_tokens - 1:
            logits = forward(token[:, None], len(prompt) + step)
    return completion


def stream_bandwidth(device: str, dtype: torch.dtype, clock: Callable[[], float], repeats: int = 5) -> float:
    """Bytes/s of a matrix-vector product over a STREAM_BYTES matrix (best of `repeats`)."""
    rows = 8192
    matrix = torch.randn(rows, STREAM_BYTES // (rows * dtype.itemsize), device=device).to(dtype)
    vector = torch.randn(1, matrix.shape[1], device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        F.linear(vector, matrix).sum().item()
        best = min(best, clock() - start)
    return matrix.numel() * dtype.itemsize / best


def timed(run: Callable[[], list], tokens: int, clock: Callable[[], float]) -> tuple[float, list]:
    start = clock()
    out = run()
    return tokens / (clock() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=240)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=16, help="rows of the batched run (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--cuda-graph", action="store_true", help="replay a captured decode step (CUDA)")
    parser.add_argument("--compiled-step", action="store_true", help="also time the compiled step (CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="cpu: the process's CPU time, for a CPU shared with other jobs (use with --threads 1)",
    )
    parser.add_argument("--recompute", action="store_true", help="also time generation without a cache")
    parser.add_argument(
        "--window-slide", type=int, default=None, help="past the context; default: generate's"
    )
    args = parser.parse_args()
    if args.cuda_graph and not args.device.startswith("cuda"):
        parser.error("--cuda-graph needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, clock = DTYPES[args.dtype], CLOCKS[args.clock]

    torch.manual_seed(0)
    float32_model = TransformerLM(TINYSTORIES).to(args.device)
    model = copy.deepcopy(float32_model).to(dtype)
    prompt = torch.randint(0, TINYSTORIES.vocab_size, (args.prompt_len,)).tolist()
    n, slide = args.new_tokens, window_slide_for(TINYSTORIES.context_length, args.window_slide)

    sampling = SamplingConfig(max_new_tokens=n, temperature=0, window_slide=slide)

    def greedy(
        model: TransformerLM,
        prompts: list[list[int]],
        cuda_graph: bool = args.cuda_graph,
        compiled: bool = False,
    ) -> list:
        return generate(model, prompts, sampling, cuda_graph=cuda_graph, compiled_step=compiled)

    runs: dict[str, Callable[[], list]] = {"cached": lambda: greedy(model, [prompt])[0]}
    if args.prompt_len + n <= TINYSTORIES.context_length:  # the plain loop does not slide a window
        runs["plain"] = lambda: plain_kv_greedy(model, prompt, n)
    if args.cuda_graph:
        runs["no graph"] = lambda: greedy(model, [prompt], cuda_graph=False)[0]
    if dtype != torch.float32:
        runs["float32"] = lambda: greedy(float32_model, [prompt])[0]
    if args.num_samples:
        runs[f"batch {args.num_samples}"] = lambda: greedy(model, [prompt] * args.num_samples)
    if args.recompute:
        runs["recompute"] = lambda: greedy_recompute(model, prompt, n, slide)
    if args.compiled_step:
        runs["compiled"] = lambda: greedy(model, [prompt], compiled=True)[0]
        if dtype != torch.float32:
            runs["float32 compiled"] = lambda: greedy(float32_model, [prompt], compiled=True)[0]
        if args.num_samples:
            runs[f"batch {args.num_samples} compiled"] = lambda: greedy(
                model, [prompt] * args.num_samples, compiled=True
            )

    weight_bytes = sum(
        p.numel() * p.element_size() for name, p in model.named_parameters() if "embed" not in name
    )
    print(
        f"device {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}, {args.clock} clock, "
        f"cuda graph {args.cuda_graph}, "
        f"{args.prompt_len}-token prompt + {n} new tokens, greedy; non-embedding weights "
        f"{weight_bytes / 1e6:.1f} MB per token",
        flush=True,
    )
    for name in [name for name in runs if name.endswith("compiled")]:  # compile once, before the timing
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        runs[name]()
        print(
            f"  {name}: compiling and one run took {time.perf_counter() - start_wall:.1f} s wall, "
            f"{time.process_time() - start_cpu:.1f} s CPU",
            flush=True,
        )
    rates: dict[str, list[float]] = {"limit": [], **{name: [] for name in runs}}
    outputs: dict[str, list] = {}
    for repeat in range(args.repeats):
        bandwidth = stream_bandwidth(
            args.device, dtype, clock
        )  # every repeat: the load on the machine varies
        rates["limit"].append(bandwidth / weight_bytes)
        print(
            f"  repeat {repeat + 1} bandwidth {bandwidth / 1e9:.1f} GB/s (GEMV over {STREAM_BYTES >> 20} "
            f"MiB) -> limit {rates['limit'][-1]:.1f} tok/s at batch 1",
            flush=True,
        )
        for name, run in runs.items():
            rate, outputs[name] = timed(run, (args.num_samples if name.startswith("batch") else 1) * n, clock)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[name].append(rate)
            print(f"  repeat {repeat + 1} {name:18s} {rate:9.1f} tok/s", flush=True)
    report(rates, outputs)
    if dtype != torch.float32:
        greedy_256 = SamplingConfig(max_new_tokens=256, temperature=0)
        ours, reference = (generate(m, [prompt], greedy_256)[0] for m in (model, float32_model))
        same = sum(a == b for a, b in zip(ours, reference, strict=True))
        print(
            f"{args.dtype} vs float32, 256 greedy tokens: the first {first_difference(ours, reference)} "
            f"identical, {same} of 256 positions equal"
        )


def report(rates: dict[str, list[float]], outputs: dict[str, list]) -> None:
    def ratio(a: str, b: str) -> str:
        paired = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
        best_a, best_b = max(rates[a]), max(rates[b])
        return (
            f"{a} / {b}: {best_a:.1f} / {best_b:.1f} tok/s = {best_a / best_b:.2f}x best, "
            f"{paired:.2f}x median paired"
        )

    batch_1 = [name for name in ("cached", "compiled") if name in rates]
    for ours in batch_1:
        print(ratio(ours, "limit"))
        if "plain" in rates:
            print(ratio(ours, "plain") + f"; tokens {agreement(outputs[ours], outputs['plain'])}")
    for name in rates:
        if name.startswith("batch"):  # against batch 1 of the same kind
            single = "compiled" if name.endswith("compiled") else "cached"
            rows = {agreement(row, outputs[single]) for row in outputs[name]}
            print(ratio(name, single) + f"; rows vs batch 1: {', '.join(sorted(rows))}")
        elif name in ("no graph", "float32", "recompute", "compiled"):
            print(ratio("cached", name) + f"; tokens {agreement(outputs['cached'], outputs[name])}")
        elif name == "float32 compiled":
            print(ratio("compiled", name) + f"; tokens {agreement(outputs['compiled'], outputs[name])}")


def agreement(a: list[int], b: list[int]) -> str:
    return "identical" if a == b else f"differ from step {first_difference(a, b)}"


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


if __name__ == "__main__":
    main()
