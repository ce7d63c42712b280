"""Encoding throughput of our Tokenizer against tiktoken, side by side, with the same 10K vocab/merges.

    .venv/bin/python bench/bench_encode.py [CORPUS_DIR]     (default $BENCH_CORPUS_DIR or /tmp/bench-corpus)

Trains (once, cached in bench/out/) a 10K tokenizer with `<|endoftext|>` on CORPUS_DIR/corpus.txt with our
trainer, builds a tiktoken Encoding from the same vocab, then reports MB/s of UTF-8 input, one process:
- heldout.txt, best of several runs: tiktoken `encode`; ours on a fresh tokenizer (cold pre-token cache);
  ours again with the cache warm (what a long file sees after its first megabytes); ids compared;
- corpus.txt (20 MB) in one pass: tiktoken and ours, the steady state of a long single-process encode;
- `encode_file` on corpus.txt with 1 and 2 worker processes (the `lmproject-bpe encode` path), and the
  time this extrapolates to for TinyStories' 2.1 GB train split on this machine.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tiktoken

from lmproject.tokenizer import Tokenizer, train_bpe
from lmproject.tokenizer.encode_file import encode_file
from lmproject.tokenizer.pretokenize import GPT2_PATTERN

EOT = "<|endoftext|>"
TINYSTORIES_TRAIN_BYTES = 2.1e9
REPEATS = 5


def main() -> int:
    default_dir = os.environ.get("BENCH_CORPUS_DIR", "/tmp/bench-corpus")
    corpus_dir = Path(sys.argv[1] if len(sys.argv) > 1 else default_dir)
    corpus, heldout = corpus_dir / "corpus.txt", corpus_dir / "heldout.txt"
    tokenizer = load_or_train(corpus)
    reference = as_tiktoken(tokenizer)
    print(f"tokenizer: {len(tokenizer.vocab):,} tokens trained on {corpus}; machine: {os.cpu_count()} CPUs")

    text = heldout.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    expected = reference.encode(text, allowed_special="all")
    tiktoken_s = best_time(lambda: reference.encode(text, allowed_special="all"))
    cold_s, cold_ids = float("inf"), None
    for _ in range(REPEATS):
        fresh = Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
        started = time.perf_counter()
        cold_ids = fresh.encode(text)
        cold_s = min(cold_s, time.perf_counter() - started)
    warm_s = best_time(lambda: fresh.encode(text))
    print(f"\n{heldout.name} ({megabytes:.2f} MB, {len(expected):,} tokens), best of {REPEATS}, one process:")
    print(f"  tiktoken encode        {megabytes / tiktoken_s:6.2f} MB/s")
    print(
        f"  ours, cold cache       {megabytes / cold_s:6.2f} MB/s   ratio {tiktoken_s / cold_s:.2f}x tiktoken"
    )
    print(
        f"  ours, warm cache       {megabytes / warm_s:6.2f} MB/s   ratio {tiktoken_s / warm_s:.2f}x tiktoken"
    )
    print(f"  ids identical: {cold_ids == expected and fresh.encode(text) == expected}")

    big = corpus.read_text(encoding="utf-8")
    big_mb = len(big.encode("utf-8")) / 1e6
    started = time.perf_counter()
    big_expected = reference.encode(big, allowed_special="all")
    big_tiktoken_s = time.perf_counter() - started
    fresh = Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
    started = time.perf_counter()
    big_ids = fresh.encode(big)
    big_ours_s = time.perf_counter() - started
    print(f"\n{corpus.name} ({big_mb:.1f} MB) in one pass from a fresh tokenizer, one process:")
    print(f"  tiktoken {big_mb / big_tiktoken_s:.2f} MB/s, ours {big_mb / big_ours_s:.2f} MB/s, "
          f"ratio {big_tiktoken_s / big_ours_s:.2f}x, ids identical: {big_ids == big_expected}")  # fmt: skip
    del big, big_ids, big_expected

    print(f"\nencode_file({corpus.name}) -> .npy (lmproject-bpe encode); 1 worker runs in this process:")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"ids{workers}.npy"
            started = time.perf_counter()
            count = encode_file(tokenizer, corpus, out, num_workers=workers, progress=False)
            seconds = time.perf_counter() - started
            same = np.array_equal(np.load(out, mmap_mode="r"), np.load(Path(tmp) / "ids1.npy", mmap_mode="r"))
            print(f"  {workers} worker(s): {big_mb / seconds:.2f} MB/s ({count:,} tokens, {seconds:.1f} s), "
                  f"same as 1 worker: {same}")  # fmt: skip
        minutes = TINYSTORIES_TRAIN_BYTES / 1e6 / (big_mb / seconds) / 60
        print(f"  extrapolated for TinyStories train (2.1 GB) with 2 workers: about {minutes:.0f} minutes")
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  peak RSS of a worker process: {peak_child:.0f} MB; of this process: {peak_self():.0f} MB")
    return 0


def peak_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def best_time(run) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    raise SystemExit(main())
