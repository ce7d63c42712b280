"""Our GGUF export against llama.cpp itself: the same token ids, the same greedy text, the same perplexity
under llama-perplexity's scheme, and llama-bench's speed beside ours. Not part of the tests: it builds
llama.cpp from source (minutes), and needs a compiler, cmake and PyPI.

    .venv/bin/python bench/bench_llama_cpp.py --config RUN/config.yaml [--ckpt_path last] --text VALID.txt
        [--threads 2] [--chunks 40]

1. Build (skipped when bench/out/llama.cpp/bin has the tools): llama-cpp-python's source distribution
   carries llama.cpp under vendor/llama.cpp (`pip download --no-deps --no-binary :all: llama-cpp-python`);
   cmake builds llama-tokenize, llama-completion (or llama-cli where that is the plain completion tool),
   llama-perplexity and llama-bench, CPU only, into bench/out/llama.cpp. The build time is recorded.
2. `lmproject export --format gguf` in float32 and q8_0.
3. llama-tokenize --ids on the first --sample_chars characters of --text and a line of emoji, accents,
   digits and spaces (special tokens parsed) against our tokenizer.
4. llama-completion, greedy (--temp 0), 50 tokens after --prompt, EOS ignored and special tokens printed,
   against `generate` with temperature 0 (what `lmproject predict --temperature 0` runs).
5. llama-perplexity -c CONTEXT -b CONTEXT: chunks of CONTEXT tokens of the whole text tokenized without
   special-token parsing (so `<|endoftext|>` is plain text there), each scored on its second half; the same
   scheme computed here with our model, in float64 sums. For float32 and q8_0.
6. llama-bench (prompt processing of CONTEXT tokens, generation of --new_tokens tokens, --threads threads)
   against our forward over CONTEXT tokens and `generate` of as many tokens, batch 1, on as many torch
   threads.

Prints one JSON object and writes it to bench/out/llama_cpp.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmproject.lit.cli import parse_run_config
from lmproject.lit.datamodule import TokenDataModule
from lmproject.lit.module import LanguageModel
from lmproject.lit.run_config import resolve_checkpoint
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import generate
from lmproject.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
LLAMA = OUT / "llama.cpp"
EXTRA = (
    "<|endoftext|> Ünïcödé 🙂 naïve café, it's 1234 5678!\n\n\t  spaces  <|endoftext|>"  # beyond the stories
)
TOOLS = ("llama-tokenize", "llama-completion", "llama-perplexity", "llama-bench")


def build() -> float | None:
    """Build the tools into LLAMA/bin; returns the seconds it took (None when they were there already)."""
    if all((LLAMA / "bin" / tool).exists() for tool in TOOLS):
        return None
    started = time.perf_counter()
    source_dir = OUT / "src"
    source_dir.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python"]
    subprocess.run([*pip, "-d", str(source_dir)], check=True)
    archive = max(source_dir.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(source_dir, filter="data")
    vendor = source_dir / archive.name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    build_dir = OUT / "build"
    options = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
    ]
    subprocess.run(["cmake", "-S", str(vendor), "-B", str(build_dir), *options], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", "2", "--target", *TOOLS], check=True)
    (LLAMA / "bin").mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        shutil.copy2(build_dir / "bin" / tool, LLAMA / "bin" / tool)
    for library in (build_dir / "bin").glob("*.so*"):
        shutil.copy2(library, LLAMA / "bin" / library.name, follow_symlinks=True)
    return time.perf_counter() - started


def tool(name: str, *args: str, log: bool = False) -> str:
    """Run a llama.cpp tool; its stdout, and its log (stderr) after it when `log`."""
    command = [str(LLAMA / "bin" / name), *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env={"LD_LIBRARY_PATH": str(LLAMA / "bin")}
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout + (done.stderr if log else "")


def export(config: Path, ckpt_path: str, out: Path, dtype: str) -> None:
    out.unlink(missing_ok=True)
    argv = ["export", "--config", str(config), "--ckpt_path", ckpt_path, "--format", "gguf"]
    command = [sys.executable, "-m", "lmproject.lit.commands", *argv, "--out", str(out), "--dtype", dtype]
    subprocess.run(command, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def chunked_perplexity(model: torch.nn.Module, ids: list[int], context: int, chunks: int) -> float:
    """llama-perplexity's scheme: chunk i is ids[i*context : (i+1)*context], one forward each, and the
    predictions of positions context/2 + 1 .. context - 1 are scored."""
    first, nats, count = context // 2, 0.0, 0
    with torch.inference_mode():
        for i in range(min(chunks, len(ids) // context)):
            chunk = torch.tensor(ids[i * context : (i + 1) * context])
            logits = model(chunk[None])[0, first:-1].double()
            nats += F.cross_entropy(logits, chunk[first + 1 :], reduction="sum").item()
            count += context - 1 - first
    return float(np.exp(nats / count))


def final_ppl(output: str) -> float:
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", output).group(1))


def best_seconds(work, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--ckpt_path", default="last")
    parser.add_argument("--text", type=Path, required=True, help="a UTF-8 validation text")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=40, help="llama-perplexity chunks to score")
    parser.add_argument("--sample_chars", type=int, default=20000)
    parser.add_argument("--new_tokens", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"build_seconds": build()}

    config = parse_run_config([str(args.config)], [])
    _, checkpoint = resolve_checkpoint(args.ckpt_path, config)
    module = LanguageModel(**config.model.as_dict())
    module.load_state_dict(checkpoint["state_dict"])
    model = module.model.eval()
    context = model.config.context_length
    tokenizer = Tokenizer.from_dir(TokenDataModule(**config.data.as_dict()).tokenizer_dir)
    files = {dtype: OUT / f"model-{dtype}.gguf" for dtype in ("float32", "q8_0")}
    for dtype, path in files.items():
        export(args.config, args.ckpt_path, path, dtype)
    report["gguf_bytes"] = {dtype: path.stat().st_size for dtype, path in files.items()}
    f32 = str(files["float32"])

    text = args.text.read_text(encoding="utf-8")
    sample = OUT / "sample.txt"
    sample.write_text(text[: args.sample_chars] + EXTRA, encoding="utf-8")
    listed = tool("llama-tokenize", "-m", f32, "-f", str(sample), "--ids", "--no-escape", "--log-disable")
    theirs = json.loads(listed.strip().splitlines()[-1])
    ours = tokenizer.encode(sample.read_text(encoding="utf-8"))
    report["tokenize"] = {"tokens": len(ours), "equal": theirs == ours}

    prompt_ids = tokenizer.encode(args.prompt)
    greedy = generate(model, [prompt_ids], SamplingConfig(max_new_tokens=50, temperature=0.0))[0]
    # no --log-disable here: it silences the completion too
    completion = tool(
        "llama-completion", "-m", f32, "-p", args.prompt, "-n", "50", "--temp", "0", "--ignore-eos",
        "--special", "-no-cnv", "--no-display-prompt", "--simple-io", "-t", str(args.threads),
    )  # fmt: skip
    ours_text = tokenizer.decode(greedy)
    report["greedy_50"] = {
        "equal": completion.startswith(ours_text),
        "ours": ours_text,
        "llama_cpp": completion[:400],
    }

    plain = Tokenizer(tokenizer.vocab, tokenizer.merges, [])  # llama-perplexity parses no special tokens
    ids = plain.encode(text)
    report["perplexity"] = {"context": context, "chunks": min(args.chunks, len(ids) // context)}
    report["perplexity"]["ours"] = chunked_perplexity(model, ids, context, args.chunks)
    for dtype, path in files.items():
        output = tool(
            "llama-perplexity", "-m", str(path), "-f", str(args.text), "-c", str(context), "-b", str(context),
            "--chunks", str(args.chunks), "-t", str(args.threads), log=True,
        )  # fmt: skip
        report["perplexity"][f"llama_cpp_{dtype}"] = final_ppl(output)

    bench = tool(
        "llama-bench", "-m", f32, "-p", str(context), "-n", str(args.new_tokens), "-t", str(args.threads),
        "-o", "json", "-r", "3",
    )  # fmt: skip
    runs = json.loads(bench[bench.index("[") : bench.rindex("]") + 1])
    speed = {("prompt" if run["n_prompt"] else "generate"): run["avg_ts"] for run in runs}
    x = torch.randint(0, model.config.vocab_size, (1, context))
    with torch.inference_mode():
        forward = best_seconds(lambda: model(x))
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    decode = best_seconds(lambda: generate(model, [prompt_ids[:1]], sampling))
    report["tokens_per_second"] = {
        "llama_cpp_f32": speed,
        "ours": {"prompt": context / forward, "generate": args.new_tokens / decode},
        "threads": args.threads,
    }
    (OUT / "llama_cpp.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
