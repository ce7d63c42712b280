"""Byte-level BPE training: count pre-tokens of a file in parallel, then merge the most frequent pairs.

Phase 1 (`count_pretokens`) streams the file in chunks cut at special tokens (see `pretokenize`) and counts
pre-tokens in worker processes. Phase 2 (`merge_pretokens`) is the merge loop. It works on each distinct
pre-token ("word") once, weighted by its count, and keeps pair counts up to date incrementally: merging
(a, b) into c only touches the words that contain (a, b) (found through an index from pair to words) and
only the pairs next to each merged spot. A heap finds the most frequent pair; its entries are checked
lazily when popped instead of being updated on every change.
"""

from __future__ import annotations

import gc
import heapq
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import compress, pairwise, repeat
from operator import is_not

from tqdm import tqdm

from lmproject.errors import UserError, utf8_argument
from lmproject.tokenizer.chunks import MAX_CHUNK_BYTES, check_options, map_chunks, plan_chunks
from lmproject.tokenizer.pretokenize import (
    find_pretokens,
    read_chunk,
    split_on_special_tokens,
    validate_special_tokens,
)

MAX_VOCAB_SIZE = 0x110000
"""The merge loop stores token ids as characters, chr(id)."""


def train_bpe(
    input_path: str | os.PathLike[str],
    vocab_size: int,
    special_tokens: Sequence[str] | None = None,
    *,
    num_workers: int | None = None,
    chunk_bytes: int = MAX_CHUNK_BYTES,
    errors: str = "strict",
    progress: bool = True,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on a UTF-8 text file.

    Returns `(vocab, merges)`: ids 0..255 are the single bytes, then the special tokens in the given
    order, then one token per merge, in merge order; `vocab_size` counts all of them. Merging stops early
    when no pair is left. Special tokens split the text and are never merged or counted; ties between
    equally frequent pairs go to the lexicographically greater `(bytes, bytes)` pair.

    `num_workers` processes pre-tokenize (default: all cores; 1 runs in this process). `errors="strict"`
    rejects invalid UTF-8 with the byte offset of the first bad byte; `errors="replace"` replaces it with
    U+FFFD. A corpus with no text outside special tokens is a UserError (there is nothing to learn from).

    >>> vocab, merges = train_bpe("../shared/data/corpus.en", 500, ["<|endoftext|>"])  # doctest: +SKIP
    >>> merges[:3], vocab[256], vocab[257]  # doctest: +SKIP
    ([(b' ', b't'), (b' ', b'a'), (b'h', b'e')], b'<|endoftext|>', b' t')
    """
    special_tokens = validate_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, special_tokens)
    counts = count_pretokens(
        input_path,
        special_tokens,
        num_workers=num_workers,
        chunk_bytes=chunk_bytes,
        errors=errors,
        progress=progress,
    )
    if not counts:
        raise UserError(f"{input_path}: no text to train on (the file is empty or holds only special tokens)")
    return merge_pretokens(counts, vocab_size, special_tokens, progress=progress)


def _check_vocab_size(vocab_size: int, special_tokens: list[str]) -> None:
    """Refuse a vocab_size that cannot hold the initial vocab, and special tokens that are already in it
    (one byte: the vocab would hold the same bytes under two ids), or that are not UTF-8 text."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise UserError(f"vocab_size must be an integer, got {vocab_size!r}")
    for token in special_tokens:
        if len(utf8_argument(token, f"special token {token!r}").encode("utf-8")) == 1:
            raise UserError(
                f"special token {token!r} is a single byte, already one of the 256 byte tokens "
                "(special tokens look like <|endoftext|>)"
            )
    initial_size = 256 + len(special_tokens)
    if vocab_size < initial_size:
        specials = f"{len(special_tokens)} special token{'' if len(special_tokens) == 1 else 's'}"
        raise UserError(
            f"vocab_size {vocab_size} is too small: the 256 bytes and {specials} take {initial_size}"
        )
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"vocab_size {vocab_size} is above the supported maximum of {MAX_VOCAB_SIZE}")


# ---- phase 1: pre-token counting ----


def count_pretokens(
    input_path: str | os.PathLike[str],
    special_tokens: Sequence[str] | None = None,
    *,
    num_workers: int | None = None,
    chunk_bytes: int = MAX_CHUNK_BYTES,
    errors: str = "strict",
    progress: bool = True,
) -> dict[bytes, int]:
    """How often each pre-token (as UTF-8 bytes) occurs in the file, outside special tokens."""
    special_tokens = validate_special_tokens(special_tokens)
    num_workers = check_options(num_workers, errors)
    path = os.fspath(input_path)
    bounds = plan_chunks(path, num_workers, chunk_bytes, special_tokens)
    jobs = [(path, start, end, special_tokens, errors) for start, end in pairwise(bounds)]
    counts: Counter[str] = Counter()
    for chunk_counts in map_chunks(
        _count_chunk, jobs, bounds, num_workers=num_workers, desc="pre-tokenize", progress=progress
    ):
        counts.update(chunk_counts)
    return {token.encode("utf-8"): count for token, count in counts.items()}


def _count_chunk(job: tuple[str, int, int, list[str], str]) -> Counter[str]:
    """Count the pre-tokens of bytes [start, end) of a file (runs in a worker process)."""
    path, start, end, special_tokens, errors = job
    text = read_chunk(path, start, end, errors)
    counts: Counter[str] = Counter()
    for piece in split_on_special_tokens(text, special_tokens):
        counts.update(find_pretokens(piece))
    return counts


# ---- phase 2: the merge loop ----
#
# Representation, chosen so that the hot operations run in C: a word is a str with one character per
# token, chr(token_id) (so a fresh word is its bytes decoded as Latin-1), and a pair is the 2-character
# str of its two tokens. Merging (a, b) into c in a word is `word.replace(a + b, c)`, which goes left to
# right exactly like BPE. The heap holds (-count, tie_key, pair); tie_key orders the pairs by descending
# (bytes, bytes) so that heapq's minimum is the most frequent pair with the greatest bytes (see _desc_key).


def merge_pretokens(
    pretoken_counts: dict[bytes, int],
    vocab_size: int,
    special_tokens: Sequence[str] | None = None,
    *,
    progress: bool = True,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The BPE merge loop on pre-token counts: returns `(vocab, merges)` as described in `train_bpe`."""
    special_tokens = validate_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, special_tokens)
    with _garbage_collector_paused():
        return _merge_loop(pretoken_counts, vocab_size, special_tokens, progress)


@contextmanager
def _garbage_collector_paused() -> Iterator[None]:
    """The merge loop keeps hundreds of thousands of lists and tuples alive, none in a reference cycle:
    Python's cycle collector would walk them all again and again for nothing (about 10% of the time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _merge_loop(
    pretoken_counts: dict[bytes, int], vocab_size: int, special_tokens: list[str], progress: bool
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Pick the best pair from the heap, merge it everywhere, push the new pairs; until vocab_size."""
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    desc_keys = [_desc_key(vocab.get(i, b"")) for i in range(len(vocab))]

    words = [token.decode("latin-1") for token in pretoken_counts]
    counts = list(pretoken_counts.values())
    pair_counts, where = _index_pairs(words, counts)
    heap = [(-count, desc_keys[ord(p[0])] + desc_keys[ord(p[1])], p) for p, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    num_merges = vocab_size - len(vocab)
    with tqdm(total=num_merges, unit="merge", desc="merge", disable=not progress, smoothing=0.1) as bar:
        while len(merges) < num_merges and heap:
            neg_count, tie_key, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -neg_count:  # stale: the pair lost occurrences since this entry was pushed
                if count > 0:
                    heapq.heappush(heap, (-count, tie_key, pair))
                continue
            new_id = len(vocab)
            first, second = ord(pair[0]), ord(pair[1])
            vocab[new_id] = vocab[first] + vocab[second]
            desc_keys.append(desc_keys[first][:-1] + desc_keys[second])
            merges.append((vocab[first], vocab[second]))
            new_counts = _merge_pair(pair, chr(new_id), words, counts, pair_counts, where)
            for new_pair, new_count in new_counts.items():
                key = desc_keys[ord(new_pair[0])] + desc_keys[ord(new_pair[1])]
                heapq.heappush(heap, (-new_count, key, new_pair))
            if len(merges) % 64 == 0:
                bar.update(64)
        bar.update(len(merges) % 64)
        bar.total = len(merges)  # no pair left: the bar ends full, at the real count
    if len(merges) < num_merges and progress:
        print(
            f"stopped after {len(merges):,} merges: no pair left "
            f"(vocab size {len(vocab):,} < requested {vocab_size:,})",
            file=sys.stderr,
        )
    return vocab, merges


def _index_pairs(
    words: list[str], counts: list[int]
) -> tuple[defaultdict[str, int], defaultdict[str, list[int]]]:
    """Count every pair of adjacent tokens, and index the words that have each pair.

    `where[pair]` lists the words that had the pair when they were listed, once per occurrence; a word
    may lose the pair through later merges, which `_merge_pair` notices.
    """
    pair_counts: defaultdict[str, int] = defaultdict(int)
    where: defaultdict[str, list[int]] = defaultdict(list)
    for index, word in enumerate(words):
        count = counts[index]
        for pair in map(str.__add__, word, word[1:]):
            pair_counts[pair] += count
            where[pair].append(index)
    return pair_counts, where


def _desc_key(token: bytes) -> str:
    """A str whose ascending order is the descending order of the byte strings.

    Each byte b becomes chr(255 - b), and chr(256) ends the key, so a prefix sorts after its extensions
    (b"a" < b"ab", so the key of b"a" must be greater). Keys of pairs are the two keys concatenated: the
    terminator makes that compare like the (bytes, bytes) tuple.
    """
    return "".join(chr(255 - b) for b in token) + chr(256)


def _merge_pair(
    pair: str,
    merged: str,
    words: list[str],
    counts: list[int],
    pair_counts: defaultdict[str, int],
    where: defaultdict[str, list[int]],
) -> dict[str, int]:
    """Replace `pair` by the token `merged` in every word that has it, updating pair counts and the index.

    Returns the counts of the pairs that contain the new token: they are all new, and since later merges
    only take occurrences away, these are the highest counts they will ever have.
    """
    first, second = pair
    new_where: defaultdict[str, list[int]] = defaultdict(list)  # new pair -> its words, once per occurrence
    # Gather the listed words and their merged forms with C-level loops: most listed words changed, but
    # some lost the pair through earlier merges, and `replace` returns those unchanged, as the same object.
    indices = set(where.pop(pair))
    old_words = list(map(words.__getitem__, indices))
    new_words = list(map(str.replace, old_words, repeat(pair), repeat(merged)))
    is_changed = map(is_not, old_words, new_words)
    changed_words = compress(zip(indices, old_words, new_words, strict=True), is_changed)
    for index, word, new_word in changed_words:
        words[index] = new_word
        count = counts[index]
        length = len(word)
        if length - len(new_word) == 1:
            # One occurrence: only the neighbours' pairs change, (x, a) -> (x, c) and (b, y) -> (c, y).
            at = word.find(pair)
            if at:
                left = word[at - 1]
                pair_counts[left + first] -= count
                new_where[left + merged].append(index)
            if at + 2 < length:
                right = word[at + 2]
                pair_counts[second + right] -= count
                new_where[merged + right].append(index)
        else:
            # Several occurrences (rare): recount the word's pairs.
            for old in map(str.__add__, word, word[1:]):
                pair_counts[old] -= count
            for changed in map(str.__add__, new_word, new_word[1:]):
                if merged in changed:
                    new_where[changed].append(index)
                else:
                    pair_counts[changed] += count
    del pair_counts[pair]
    new_counts = {new: sum(map(counts.__getitem__, listed)) for new, listed in new_where.items()}
    pair_counts.update(new_counts)
    where.update(new_where)
    return new_counts
