"""Tokenizer files in GPT-2's format: vocab.json (token string -> id) and merges.txt (one merge a line).

GPT-2 writes each token's bytes as a string in a printable alphabet of 256 characters, one per byte value,
so that the files are plain text with no spaces inside tokens: printable Latin-1 bytes stand for themselves
and the other 68 bytes (controls, space, soft hyphen...) are shifted to code points 256 and up, in byte
order. Space (0x20) becomes "Ġ" (U+0120), newline (0x0a) becomes "Ċ" (U+010A).
Writes are atomic (lmproject.atomic), and files that do not parse name the file and line.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lmproject.atomic import atomic_write
from lmproject.errors import UserError


def _gpt2_byte_alphabet() -> list[str]:
    """The character standing for each byte value 0..255 in GPT-2's files."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = [""] * 256
    for byte in printable:
        alphabet[byte] = chr(byte)
    shifted = (byte for byte in range(256) if not alphabet[byte])
    for offset, byte in enumerate(shifted):
        alphabet[byte] = chr(256 + offset)
    return alphabet


BYTE_TO_CHAR: list[str] = _gpt2_byte_alphabet()
CHAR_TO_BYTE: dict[str, int] = {char: byte for byte, char in enumerate(BYTE_TO_CHAR)}


def token_to_str(token: bytes) -> str:
    """A token's bytes in GPT-2's alphabet: `token_to_str(b" the") == "Ġthe"`."""
    return "".join(BYTE_TO_CHAR[byte] for byte in token)


def str_to_token(text: str) -> bytes:
    """The inverse of token_to_str; a KeyError names the first character outside the alphabet."""
    return bytes(CHAR_TO_BYTE[char] for char in text)


def save_vocab(vocab: dict[int, bytes], path: str | os.PathLike[str]) -> None:
    """Write vocab.json: {token string: id}, in id order, one entry a line."""
    entries = {token_to_str(token): token_id for token_id, token in sorted(vocab.items())}
    if len(entries) != len(vocab):
        raise ValueError("vocab maps two ids to the same bytes")
    with atomic_write(path) as file:
        json.dump(entries, file, ensure_ascii=False, indent=1)
        file.write("\n")


def save_merges(merges: list[tuple[bytes, bytes]], path: str | os.PathLike[str]) -> None:
    """Write merges.txt: a version line as GPT-2 has, then `left right` per merge, in merge order."""
    with atomic_write(path) as file:
        file.write("#version: 0.2\n")
        file.writelines(f"{token_to_str(left)} {token_to_str(right)}\n" for left, right in merges)


def load_vocab(path: str | os.PathLike[str]) -> dict[int, bytes]:
    """Read a vocab.json ({token string: id}) into {id: bytes}; a malformed file is a UserError."""
    text = read_text(path)
    try:
        pairs = json.loads(text, object_pairs_hook=list)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(pairs, list) or not all(isinstance(pair, tuple) for pair in pairs):
        raise UserError(f"{path}: expected a JSON object mapping token strings to ids")
    vocab: dict[int, bytes] = {}
    for token, token_id in pairs:
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            problem = f"id {token_id!r} is not a non-negative integer"
        elif token_id in vocab:
            problem = f"id {token_id} is used twice"
        elif not all(char in CHAR_TO_BYTE for char in token):
            problem = "has a character outside GPT-2's byte alphabet"
        else:
            vocab[token_id] = str_to_token(token)
            continue
        raise UserError(f"{path}: line {_line_of(text, token)}: token {token!r}: {problem}")
    if len(set(vocab.values())) != len(vocab):
        raise UserError(f"{path}: the same token appears twice")
    return vocab


def load_merges(path: str | os.PathLike[str]) -> list[tuple[bytes, bytes]]:
    """Read a merges.txt (an optional `#version` first line, then `left right` lines) in merge order."""
    merges = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"{path}: line {number}: expected two tokens and one space, got {line!r}")
        where = f"{path}: line {number}"
        merges.append((_decode_token(parts[0], where), _decode_token(parts[1], where)))
    return merges


def read_text(path: str | os.PathLike[str]) -> str:
    """A whole UTF-8 text file; a missing file, a directory or invalid UTF-8 is a UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: invalid UTF-8 at byte offset {err.start}") from None


def iter_text_blocks(path: str | os.PathLike[str], block_bytes: int = 1 << 20) -> Iterator[str]:
    """A UTF-8 file's text in blocks of about `block_bytes`, for streaming; invalid UTF-8 is a UserError
    naming the byte offset of the first bad byte."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes read before this block
    with open(path, "rb") as file:
        while True:
            data = file.read(block_bytes)
            held = len(decoder.getstate()[0])  # an incomplete character carried over from the last block
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                raise UserError(f"{path}: invalid UTF-8 at byte offset {offset - held + err.start}") from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def _decode_token(token: str, where: str) -> bytes:
    try:
        return str_to_token(token)
    except KeyError as err:
        raise UserError(f"{where}: character {err.args[0]!r} is not in GPT-2's byte alphabet") from None


def _line_of(text: str, token: str) -> int | str:
    """The line where a JSON key first appears (written either escaped or not), or '?' if not found."""
    for spelling in (json.dumps(token, ensure_ascii=False), json.dumps(token)):
        offset = text.find(spelling + ":")
        if offset < 0:
            offset = text.find(spelling)
        if offset >= 0:
            return text.count("\n", 0, offset) + 1
    return "?"
