"""Encoding throughput of our Tokenizer against tiktoken, side by side, with the same 10K vocab/merges.

    .venv/bin/python bench/bench_encode.py [CORPUS_DIR]     (default $BENCH_CORPUS_DIR or /tmp/bench-corpus)

Trains (once, cached in bench/out/) a 10K tokenizer with `<|endoftext|>` on CORPUS_DIR/corpus.txt with our
trainer, builds a tiktoken Encoding from the same vocab, then reports MB/s of UTF-8 input, one process:
- heldout.txt, best of several runs: tiktoken `encode`; ours on a fresh tokenizer (cold pre-token cache);
  ours again with the cache warm (what a long file sees after its first megabytes); ids compared;
- corpus.txt (20 MB) in one pass: tiktoken and ours, the steady state of a long single-process encode;
- the time to build a Tokenizer from that 10K vocab and from GPT-2's 50K one (../shared/data), which
  the cold-cache figure with construction includes;
- `encode_file` on corpus.txt with 1 and 2 worker processes (the `lmproject-bpe encode` path), and the
  time this extrapolates to for TinyStories' 2.1 GB train split on this machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tiktoken

from lmproject.tokenizer import Tokenizer, train_bpe
from lmproject.tokenizer.encode_file import encode_file
from lmproject.tokenizer.files import load_merges, load_vocab
from lmproject.tokenizer.pretokenize import GPT2_PATTERN

EOT = "<|endoftext|>"
TINYSTORIES_TRAIN_BYTES = 2.1e9
REPEATS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("BENCH_CORPUS_DIR", "/tmp/bench-corpus"))
    parser.add_argument("corpus_dir", type=Path, nargs="?", default=default_dir)
    corpus_dir = parser.parse_args().corpus_dir
    corpus, heldout = corpus_dir / "corpus.txt", corpus_dir / "heldout.txt"
    if not (corpus.is_file() and heldout.is_file()):
        parser.error(f"{corpus_dir}: no corpus.txt and heldout.txt (bash ../shared/bench/make_corpus.sh)")
    tokenizer = load_or_train(corpus)
    reference = as_tiktoken(tokenizer)
    loop = "compiled (tokenizer/_merge.c)" if tokenizer.compiled else "Python (the C extension was not built)"
    print(f"tokenizer: {len(tokenizer.vocab):,} tokens trained on {corpus}; machine: {os.cpu_count()} CPUs")
    print(f"merge loop: {loop}")
    bench_encode_file(tokenizer, corpus)  # first, while this process (which workers fork from) is small
    bench_construction(tokenizer)
    compare(tokenizer, reference, heldout, REPEATS, warm=True)
    compare(tokenizer, reference, corpus, 2, warm=False)
    return 0


def compare(tokenizer: Tokenizer, reference: tiktoken.Encoding, path: Path, repeats: int, warm: bool) -> None:
    """Best-of-`repeats` MB/s of tiktoken and of ours on one file, runs interleaved so that load from other
    processes hits both alike; ours from a fresh tokenizer (cold cache; also with the time to build it),
    then again (warm cache)."""
    text = path.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    best: dict[str, float] = {}
    identical = True

    def record(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(repeats):
        seconds, expected = timed(reference.encode, text, allowed_special="all")
        record("tiktoken", seconds)
        built, fresh = timed(Tokenizer, tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
        cold, ids = timed(fresh.encode, text)
        identical &= ids == expected
        record("ours, cold cache", cold)
        record("ours, cold + construction", built + cold)
        if warm:
            seconds, ids = timed(fresh.encode, text)
            record("ours, warm cache", seconds)
            identical &= ids == expected
    print(f"\n{path.name} ({megabytes:.2f} MB, {len(expected):,} tokens), one process, best of {repeats}:")
    for name, seconds in best.items():
        print(f"  {name:25s} {megabytes / seconds:6.2f} MB/s   {best['tiktoken'] / seconds:.2f}x tiktoken")
    print(f"  ids identical: {identical}")


def bench_construction(tokenizer: Tokenizer) -> None:
    """Best-of-3 seconds to build a Tokenizer: this 10K vocab, and GPT-2's 50K vocab where its files exist."""
    print("\nconstructing a Tokenizer (checking the vocab, indexing the merges), best of 3:")
    builds = {"10K vocab": lambda: Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)}
    gpt2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    if (gpt2 / "gpt2_vocab.json").exists():
        vocab, merges = load_vocab(gpt2 / "gpt2_vocab.json"), load_merges(gpt2 / "gpt2_merges.txt")
        builds["GPT-2 50K vocab"] = lambda: Tokenizer(vocab, merges, [EOT])
    for name, build in builds.items():
        print(f"  {name:16s} {min(timed(build)[0] for _ in range(3)):.3f} s")


def bench_encode_file(tokenizer: Tokenizer, corpus: Path) -> None:
    """`lmproject-bpe encode`'s path: MB/s with 1 worker (this process) and 2 worker processes."""
    megabytes = corpus.stat().st_size / 1e6
    print(f"\nencode_file({corpus.name}) -> .npy, {megabytes:.1f} MB; 1 worker runs in this process:")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"ids{workers}.npy"
            seconds, count = timed(encode_file, tokenizer, corpus, out, num_workers=workers, progress=False)
            same = np.array_equal(np.load(out), np.load(Path(tmp) / "ids1.npy"))
            rate = megabytes / seconds
            print(f"  {workers} worker(s): {rate:.2f} MB/s, {count:,} ids, {seconds:.1f} s, same ids: {same}")
    minutes = TINYSTORIES_TRAIN_BYTES / 1e6 / (megabytes / seconds) / 60
    print(f"  extrapolated for TinyStories train (2.1 GB) with 2 workers: about {minutes:.0f} minutes")
    rss = {
        who: resource.getrusage(who).ru_maxrss / 1024
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    }
    print(f"  peak RSS: this process {rss[resource.RUSAGE_SELF]:.0f} MB, "
          f"largest worker {rss[resource.RUSAGE_CHILDREN]:.0f} MB")  # fmt: skip


def load_or_train(corpus: Path) -> Tokenizer:
    """The 10K tokenizer of this corpus, trained with our trainer on first use and kept in bench/out/."""
    stat = corpus.stat()
    cache = Path(__file__).resolve().parent / "out" / f"tokenizer-10k-{stat.st_size}-{stat.st_mtime_ns}"
    if not (cache / "vocab.json").exists():
        print(f"training a 10K tokenizer on {corpus} (cached in {cache}) ...", flush=True)
        vocab, merges = train_bpe(corpus, 10_000, [EOT], progress=False)
        Tokenizer(vocab, merges, [EOT]).save(cache)
    return Tokenizer.from_dir(cache)


def as_tiktoken(tokenizer: Tokenizer) -> tiktoken.Encoding:
    specials = {token: tokenizer.encode(token)[0] for token in tokenizer.special_tokens}
    ranks = {token: i for i, token in tokenizer.vocab.items() if i not in specials.values()}
    return tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


if __name__ == "__main__":
    raise SystemExit(main())
