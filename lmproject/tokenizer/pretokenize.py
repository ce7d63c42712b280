"""Pre-tokenization shared by BPE training and encoding: special-token splitting, the GPT-2 regex, and
file chunking at boundaries where splitting the text cannot change the pre-tokens.

BPE never merges across a pre-token, so both the trainer and the tokenizer first cut the text at special
tokens (which are never merged or counted) and then cut each piece with the GPT-2 regex.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import BinaryIO

import regex

from lmproject.errors import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenizer: contractions, words with one leading space, numbers, punctuation runs, whitespace.

>>> PRETOKEN_RE.findall("Hello, world!  It's 2024.")
['Hello', ',', ' world', '!', ' ', ' It', "'s", ' 2024', '.']
"""

PRETOKEN_RE = regex.compile(GPT2_PATTERN)

# The same pattern for ASCII-only text, with each class cut down to its ASCII members (\p{L} -> [A-Za-z],
# \p{N} -> [0-9], \s -> the six ASCII spaces). On ASCII input it finds exactly the same pre-tokens (a test
# checks the classes character by character), and the stdlib `re` engine runs it faster (bench/RESULTS.md).
_ASCII_SPACE = r"\t\n\x0b\x0c\r "
_ASCII_PRETOKEN_RE = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_ASCII_SPACE}A-Za-z0-9]+"""
    rf"""|[{_ASCII_SPACE}]+(?![^{_ASCII_SPACE}])|[{_ASCII_SPACE}]+"""
)


def find_pretokens(text: str) -> list[str]:
    """`PRETOKEN_RE.findall(text)`, faster when the text is ASCII-only (checking that is free in CPython).

    >>> find_pretokens("It's 42°C")
    ['It', "'s", ' 42', '°', 'C']
    """
    return (_ASCII_PRETOKEN_RE if text.isascii() else PRETOKEN_RE).findall(text)


# Safe places to cut the text where it has no special token to cut at (no pre-token reaches across them,
# and the pre-tokens on either side are the same whether or not the text continues):
# - right after b"\n" with an ASCII graphic character on both sides (b"x\ny"): the newline is a pre-token
#   of its own;
# - right before b" " with an ASCII graphic character on both sides (b"x y"): no pre-token holds a
#   non-space followed by a space, and the space starts the next one (" y").
# The second keeps chunks small in text without single line breaks (one long line, or paragraphs cut by
# b"\n\n" as in OpenWebText).
_SAFE_BREAK = rb"(?<=[\x21-\x7e]\n)(?=[\x21-\x7e])|(?<=[\x21-\x7e])(?= [\x21-\x7e])"
_BOUNDARY_WINDOW = 1 << 16


def validate_special_tokens(special_tokens: Iterable[str] | None, what: str = "special token") -> list[str]:
    """Return the special tokens as a list; an empty, non-string or duplicated one is a UserError.

    >>> validate_special_tokens(["<|endoftext|>"])
    ['<|endoftext|>']
    """
    tokens = list(special_tokens or [])
    seen: set[str] = set()
    for token in tokens:
        if not isinstance(token, str):
            raise UserError(f"{what} must be a string, got {token!r}")
        if not token:
            raise UserError(f"{what} must not be empty")
        if token in seen:
            raise UserError(f"{what} {token!r} is given twice")
        seen.add(token)
    return tokens


def special_token_re(special_tokens: Sequence[str] | None) -> regex.Pattern | None:
    """A regex matching any special token, longest first, so that overlapping tokens both work; None if none.

    >>> special_token_re(["<|a|>", "<|a|><|a|>"]).findall("x<|a|><|a|>y<|a|>")
    ['<|a|><|a|>', '<|a|>']
    """
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("|".join(regex.escape(token) for token in ordered))


def split_on_special_tokens(text: str, special_tokens: Sequence[str] | None) -> list[str]:
    """The non-empty pieces of text between special tokens, the special tokens dropped: what training counts.

    >>> split_on_special_tokens("a b<|endoftext|>c<|endoftext|>", ["<|endoftext|>"])
    ['a b', 'c']
    """
    pattern = special_token_re(special_tokens)
    pieces = [text] if pattern is None else pattern.split(text)
    return [piece for piece in pieces if piece]


def find_chunk_boundaries(
    source: str | os.PathLike[str] | BinaryIO, chunk_bytes: int, special_tokens: Sequence[str] | None = None
) -> list[int]:
    """Byte offsets [0, ..., file size] cutting a file into chunks of about `chunk_bytes` each (often more,
    never less except the last) that can be pre-tokenized independently, with the same result as the whole.

    Each inner boundary is the start of a special token, or else a safe break (after b"\\n" or before b" "
    between two ASCII graphic characters), whichever comes first after the target offset, and never inside a
    longer special token that overlaps it. All boundaries are at UTF-8 character starts, so chunks decode on
    their own. Only small windows around the targets are read. For N chunks, pass
    `chunk_bytes = ceil(size / N)`.

    >>> import io
    >>> find_chunk_boundaries(io.BytesIO(b"ab<|e|>cd<|e|>ef"), 4, ["<|e|>"])
    [0, 9, 16]
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return find_chunk_boundaries(file, chunk_bytes, special_tokens)
    specials = [token.encode("utf-8") for token in special_tokens or []]
    alternatives = [_SAFE_BREAK] + [b"(?=" + regex.escape(token) + b")" for token in specials]
    candidate_re = regex.compile(b"|".join(alternatives))
    reach = max([2] + [len(token) for token in specials])

    size = source.seek(0, os.SEEK_END)
    boundaries = [0]
    target = chunk_bytes
    while target < size:
        boundary = _next_boundary(source, target, size, candidate_re, specials, reach)
        if boundary >= size:
            break
        boundaries.append(boundary)
        target = boundary + chunk_bytes
    boundaries.append(size)
    return boundaries


def read_chunk(path: str | os.PathLike[str], start: int, end: int, errors: str = "strict") -> str:
    """Bytes [start, end) of a file decoded as UTF-8 (a chunk from `find_chunk_boundaries`).

    Invalid UTF-8 is a UserError naming the file and the byte offset of the first bad byte in the file,
    unless `errors="replace"`, which replaces it with U+FFFD.
    """
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(end - start)
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as err:
        raise UserError(f"{os.fspath(path)}: invalid UTF-8 at byte offset {start + err.start}") from None


def _next_boundary(
    file: BinaryIO, target: int, size: int, candidate_re: regex.Pattern, specials: list[bytes], reach: int
) -> int:
    """The first acceptable boundary at or after `target`, or `size` if there is none."""
    while target < size:
        # Read `reach` bytes of context on each side so that lookarounds and overlap checks see enough.
        start = max(0, target - reach)
        file.seek(start)
        window = file.read(target - start + _BOUNDARY_WINDOW + reach)
        for match in candidate_re.finditer(window, pos=target - start):
            offset = match.start()
            if offset + reach > len(window) and start + len(window) < size:
                break  # too close to the window end to check overlaps: read the next window
            if not _inside_special(window, offset, specials):
                return start + offset
        target += _BOUNDARY_WINDOW
    return size


def _inside_special(window: bytes, offset: int, specials: list[bytes]) -> bool:
    """Whether an occurrence of some special token covers `offset` without starting there."""
    for token in specials:
        for shift in range(1, len(token)):
            if offset - shift >= 0 and window.startswith(token, offset - shift):
                return True
    return False
