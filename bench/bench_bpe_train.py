"""BPE training speed and memory: our trainer vs HuggingFace tokenizers' BpeTrainer, side by side.

Usage: python bench/bench_bpe_train.py CORPUS [--vocab-size 10000] [--workers 2] [--repeats 3]

Each run is a fresh Python process (interpreter start, imports and reading the file included); runs of
the two trainers alternate and the best of `--repeats` is reported, since the machine is shared. Also
prints our two phases (pre-token counting, merge loop), each process's peak RSS, and an extrapolation to
the 2.1 GB TinyStories train split.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SPECIAL = "<|endoftext|>"
TINYSTORIES_TRAIN_BYTES = 2.1e9

OURS = """
import json, resource, sys, time
def cpu():
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)
start = time.perf_counter()
from lmproject.tokenizer.train import count_pretokens, merge_pretokens
path, vocab_size, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = count_pretokens(path, [SPECIAL], num_workers=workers, progress=False)
counted, count_cpu = time.perf_counter(), cpu()
vocab, merges = merge_pretokens(counts, vocab_size, [SPECIAL], progress=False)
done = time.perf_counter()
print(json.dumps({"count_s": counted - start, "count_cpu_s": count_cpu, "merge_s": done - counted,
    "merge_cpu_s": cpu() - count_cpu, "vocab": len(vocab), "words": len(counts),
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

HUGGINGFACE = """
import json, resource, sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
path, vocab_size = sys.argv[1], int(sys.argv[2])
with open(path, encoding="utf-8") as file:
    documents = file.read().split(SPECIAL)
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tokenizer.train_from_iterator(documents, trainer)
print(json.dumps({"vocab": tokenizer.get_vocab_size(),
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(script: str, args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Run a script in a fresh interpreter; return its wall time and the JSON it prints, plus the CPU
    seconds it and its worker processes used (less sensitive than wall time to a busy machine)."""
    code = f"SPECIAL = {SPECIAL!r}\n{script}"
    cpu_before = cpu_seconds_of_children()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"benchmark run failed:\n{done.stderr}")
    info = json.loads(done.stdout.splitlines()[-1])
    info["cpu_s"] = cpu_seconds_of_children() - cpu_before
    return wall, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.workers), TOKENIZERS_PARALLELISM="true")
    size = os.path.getsize(args.corpus)

    ours: list[tuple[float, dict]] = []
    theirs: list[tuple[float, dict]] = []
    for _ in range(args.repeats):
        ours.append(run(OURS, [args.corpus, str(args.vocab_size), str(args.workers)], env))
        theirs.append(run(HUGGINGFACE, [args.corpus, str(args.vocab_size)], env))
        print(f"  run: ours {ours[-1][0]:.2f} s, HF {theirs[-1][0]:.2f} s (wall)", flush=True)
    our_wall, our_info = min(ours, key=lambda run: run[0])
    hf_wall, hf_info = min(theirs, key=lambda run: run[0])
    count_s, merge_s = (min(info[key] for _, info in ours) for key in ("count_s", "merge_s"))
    count_cpu, merge_cpu = (min(info[key] for _, info in ours) for key in ("count_cpu_s", "merge_cpu_s"))
    our_cpu = min(info["cpu_s"] for _, info in ours)
    hf_cpu = min(info["cpu_s"] for _, info in theirs)

    print(f"corpus: {args.corpus} ({size / 1e6:.1f} MB), vocab {args.vocab_size}, {args.workers} workers")
    print(f"distinct pre-tokens: {our_info['words']}; vocab: ours {our_info['vocab']}, HF {hf_info['vocab']}")
    print(f"ours: {our_wall:.2f} s wall (best of {args.repeats}), {our_cpu:.2f} CPU-s")
    print(f"  pre-tokenize + count (imports included): {count_s:.2f} s wall, {count_cpu:.2f} CPU-s")
    print(f"  merges: {merge_s:.2f} s wall, {merge_cpu:.2f} CPU-s")
    print(f"  peak RSS: main {our_info['rss_mb']:.0f} MB, largest worker {our_info['worker_rss_mb']:.0f} MB")
    print(f"HF BpeTrainer: {hf_wall:.2f} s wall, {hf_cpu:.2f} CPU-s, peak RSS {hf_info['rss_mb']:.0f} MB")
    print(f"ratio ours / HF: wall {our_wall / hf_wall:.2f} (target <= 1.5), CPU {our_cpu / hf_cpu:.2f}")
    # Counting scales with bytes and splits over the workers; the merge loop scales with the number of
    # distinct pre-tokens, which grows far slower than the file (TinyStories has a small vocabulary).
    scale = TINYSTORIES_TRAIN_BYTES / size
    print(
        f"TinyStories train (2.1 GB) extrapolated: counting {count_s * scale / 60:.1f} min at this run's "
        f"wall rate, {count_cpu * scale / args.workers / 60:.1f} min if {args.workers} cores were free; "
        f"merges about {merge_cpu:.0f} s"
    )


if __name__ == "__main__":
    main()
