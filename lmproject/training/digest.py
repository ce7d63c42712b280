"""A SHA-256 digest inside every checkpoint file, so damage (a zeroed or flipped block) is caught on load.

torch.save writes a zip archive. A zip archive ends with the "end of central directory" record, whose last
field is a comment that zip readers (torch's included) skip. `save_with_digest` hashes the bytes as torch
writes them and puts `lmproject-sha256:<hex digest of every byte before the comment's length field>` into
that comment: the digest travels with the file (copies keep it), costs no second pass when writing, and
checking it reads the file once. Files without it (written before it existed, or by other code) still load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any, Literal

import torch

MARK = b"lmproject-sha256:"
COMMENT_LENGTH = len(MARK) + 64  # the mark and a hex SHA-256
END_RECORD = b"PK\x05\x06"  # signature of the zip's end of central directory record (22 bytes, no comment)
END_RECORD_SIZE = 22
_READ_BLOCK = 1 << 22


class _HashingWriter:
    """A binary file that hashes what passes through, holding back the last 22 bytes (the end record,
    whose final two bytes, the comment length, change when the digest is added)."""

    def __init__(self, file: IO[bytes]):
        self.file, self.hash, self.tail = file, hashlib.sha256(), b""
        self.error: OSError | None = None  # torch's zip writer turns it into a RuntimeError without it

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= END_RECORD_SIZE:
            self.hash.update(self.tail)
            self.hash.update(view[:-END_RECORD_SIZE])
            self.tail = bytes(view[-END_RECORD_SIZE:])
        else:
            joined = self.tail + bytes(view)
            self.hash.update(joined[:-END_RECORD_SIZE])
            self.tail = joined[-END_RECORD_SIZE:]
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def save_with_digest(obj: Any, file: IO[bytes]) -> None:
    """torch.save `obj` into `file` (opened for writing at its start, seekable) with the digest comment."""
    writer = _HashingWriter(file)
    try:
        torch.save(obj, writer)
    except RuntimeError:
        if writer.error is not None:  # e.g. a full disk: "unexpected pos 43776 vs 43728" from torch
            raise writer.error from None
        raise
    tail = writer.tail
    if not (tail.startswith(END_RECORD) and tail.endswith(b"\x00\x00")):
        return  # not the zip layout this expects (no end record, or a comment already): leave it as is
    writer.hash.update(tail[:-2])
    file.seek(-2, os.SEEK_CUR)
    file.write(COMMENT_LENGTH.to_bytes(2, "little") + MARK + writer.hash.hexdigest().encode())


def digest_status(path: str | os.PathLike[str]) -> Literal["intact", "damaged", "no digest"]:
    """Whether the file's bytes match the digest it carries ("no digest": a file without one)."""
    path = Path(path)
    size = path.stat().st_size
    trailer = END_RECORD_SIZE + COMMENT_LENGTH
    if size < trailer:
        return "no digest"
    with open(path, "rb") as file:
        file.seek(size - trailer)
        end = file.read(trailer)
        comment = end[END_RECORD_SIZE:]
        if not (end.startswith(END_RECORD) and comment.startswith(MARK)):
            return "no digest"
        if int.from_bytes(end[END_RECORD_SIZE - 2 : END_RECORD_SIZE], "little") != COMMENT_LENGTH:
            return "damaged"
        digest = hashlib.sha256()
        file.seek(0)
        remaining = size - COMMENT_LENGTH - 2
        while remaining > 0:
            block = file.read(min(_READ_BLOCK, remaining))
            if not block:
                return "damaged"
            digest.update(block)
            remaining -= len(block)
    return "intact" if digest.hexdigest().encode() == comment[len(MARK) :] else "damaged"
