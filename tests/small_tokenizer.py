"""Tokenizers over the 256 bytes plus given merges, for the tokenizer tests: `make_tokenizer` and merges
learned on a little English (tests/test_tokenizer_encode.py, tests/test_tokenizer_merge_compiled.py)."""

from __future__ import annotations

from lmproject.tokenizer import Tokenizer

EOT = "<|endoftext|>"
BYTES = {i: bytes([i]) for i in range(256)}


def make_tokenizer(merges: list[tuple[bytes, bytes]], special_tokens=None, **options) -> Tokenizer:
    vocab = dict(BYTES)
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return Tokenizer(vocab, merges, special_tokens, **options)


# Merges learned on a little English, so that encoding exercises real multi-step merges.
ENGLISH_MERGES = [
    (b" ", b"t"), (b"h", b"e"), (b" t", b"he"), (b"i", b"n"), (b" ", b"a"), (b"e", b"r"), (b"o", b"n"),
    (b"in", b"g"), (b" ", b"s"), (b"'", b"s"), (b" ", b"w"), (b"e", b"n"), (b"l", b"l"), (b" a", b"n"),
    (b" an", b"d"), (b"\n", b"\n"), (b" ", b" "), (b"  ", b"  "), (b"o", b"u"), (b"<", b"|"),
]  # fmt: skip
