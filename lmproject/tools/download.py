"""Download the training corpora: `python -m lmproject.tools.download {tinystories,owt} --dest DIR`.

Each file is fetched into `<name>.part` and resumed from where it stopped when run again (an HTTP Range
request; `file://` mirrors seek). It is checked against a SHA-256 before being renamed to its final name,
and the digest is then recorded in `<name>.sha256` (`sha256sum -c` format). Where the digest comes from:

- pinned: a digest written in the manifest below (none are pinned yet: we have not been able to fetch the
  files to pin them, and we do not copy digests we cannot check);
- server-stated: for files stored with Git LFS, the Hugging Face hub states the file's SHA-256 as the
  `X-Linked-Etag` (or `ETag`) header of its `resolve` URL, which we read with a HEAD request;
- none: neither is available (say a `file://` mirror of an unpinned file); the download is then not
  verified, the command says so, and the `.sha256` file only records what was received.

`.gz` files are decompressed afterwards (to a temp file, then renamed) and removed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from lmproject.atomic import atomic_write
from lmproject.errors import ArgumentParser, UserError, run_cli

_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
_OWT_SAMPLE = "https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main"
_DESCRIPTION = "Download a training corpus (resumable, checksummed)."
_BLOCK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it is, and the SHA-256 of its bytes if we have pinned it."""

    url: str
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def final_name(self) -> str:
        """The name the user gets: `.gz` files are decompressed."""
        return self.name.removesuffix(".gz")


DATASETS: dict[str, list[RemoteFile]] = {
    "tinystories": [
        RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-train.txt"),
        RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-valid.txt"),
    ],
    "owt": [
        RemoteFile(f"{_OWT_SAMPLE}/owt_train.txt.gz"),
        RemoteFile(f"{_OWT_SAMPLE}/owt_valid.txt.gz"),
    ],
}


def download_dataset(name: str, dest: str | os.PathLike[str], *, mirror: str | None = None) -> list[Path]:
    """Download (or finish downloading) every file of dataset `name` into `dest`; return the final paths.

    `mirror` replaces each file's base URL (everything before its name), for a local copy or another host.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest}: exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for remote in DATASETS[name]:
        if mirror is not None:
            remote = RemoteFile(f"{mirror.rstrip('/')}/{remote.name}", remote.sha256)
        final = dest / remote.final_name
        if final.exists():
            print(f"{final}: already there, skipped (delete it to download again)")
        else:
            downloaded = dest / remote.name
            if not downloaded.exists():
                fetch(remote, downloaded)
            if remote.name.endswith(".gz"):
                gunzip(downloaded, final)
                downloaded.unlink()
        paths.append(final)
    return paths


def fetch(remote: RemoteFile, path: Path, *, progress: bool = True) -> str:
    """Download `remote` to `path` via `path.part`, resuming it; verify, rename, return the SHA-256."""
    part = path.with_name(path.name + ".part")
    expected, source = remote.sha256, "pinned in the manifest"
    if expected is None:
        expected, source = server_sha256(remote.url), "stated by the server"
    digest = hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    desc = path.name
    with _open_from(remote.url, have) as (stream, start, total), open(part, "ab" if start else "wb") as out:
        if start:
            _hash_file(part, digest)
        with tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=desc, disable=not progress
        ) as bar:
            _copy(stream, out, digest, bar, remote.url, part)
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        part.unlink()
        raise UserError(f"{remote.url}: SHA-256 {actual} differs from {expected} ({source}); removed it")
    os.replace(part, path)
    with atomic_write(path.with_name(path.name + ".sha256")) as file:
        file.write(f"{actual}  {path.name}\n")
    verified = f"verified SHA-256 {source}" if expected else "NOT verified: no SHA-256 known for it"
    print(f"{path}: downloaded, {verified}")
    return actual


def server_sha256(url: str) -> str | None:
    """The SHA-256 that a Hugging Face `resolve` URL states for an LFS file, or None if it states none."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        return None
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=_TIMEOUT_S) as response:
            headers = response.headers
    except urllib.error.HTTPError as err:
        if err.code not in (301, 302, 303, 307, 308):  # the hub answers LFS files with a redirect
            raise UserError(f"{url}: HTTP {err.code} {err.reason}") from None
        headers = err.headers
    except urllib.error.URLError as err:
        raise UserError(f"{url}: cannot connect ({err.reason})") from None
    return sha256_from_etag(headers.get("X-Linked-Etag") or headers.get("ETag"))


def sha256_from_etag(etag: str | None) -> str | None:
    """An ETag that is a SHA-256 (64 hex digits, maybe quoted or weak), lowercased; otherwise None.

    Git LFS files on the hub carry their SHA-256 as ETag; other files carry a git blob hash (40 digits).
    """
    match = re.fullmatch(r'(?:W/)?"?([0-9a-fA-F]{64})"?', (etag or "").strip())
    return match.group(1).lower() if match else None


def gunzip(src: Path, dst: Path, *, progress: bool = True) -> None:
    """Decompress `src` into `dst` (through a temp file) with a progress bar over the compressed bytes."""
    size = src.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"gunzip {src.name}", disable=not progress)
    with bar, open(src, "rb") as raw, gzip.open(raw) as unzipped, atomic_write(dst, "wb") as out:
        try:
            while block := unzipped.read(_BLOCK):
                out.write(block)
                bar.update(raw.tell() - bar.n)
        except (OSError, EOFError) as err:
            raise UserError(f"{src}: not a valid gzip file ({err}); delete it and download again") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Makes a redirect come back as an HTTPError, whose headers we want to read."""

    def redirect_request(self, *args, **kwargs):
        return None


@contextmanager
def _open_from(url: str, offset: int) -> Iterator[tuple[BinaryIO, int, int | None]]:
    """(stream, start offset, total size or None) for reading `url` from byte `offset` on.

    The start offset is 0 when the server ignores the range, or when `offset` is past the end of the file
    (the part file cannot be a prefix of it): the download then starts over.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        try:
            stream = open(urllib.request.url2pathname(parsed.path), "rb")  # noqa: SIM115 (closed below)
        except OSError as err:
            raise UserError(f"{url}: cannot read ({err.strerror})") from None
        with stream:
            total = os.fstat(stream.fileno()).st_size
            start = offset if offset <= total else 0
            stream.seek(start)
            yield stream, start, total
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code != 416:
            raise UserError(f"{url}: HTTP {err.code} {err.reason}") from None
        response, total = None, _unsatisfied_range_total(err.headers.get("Content-Range"))
    except urllib.error.URLError as err:
        raise UserError(f"{url}: cannot connect ({err.reason})") from None
    if response is None:  # the range starts at or past the end of the file
        if total is not None and offset > total:
            with _open_from(url, 0) as opened:
                yield opened
        else:
            yield io.BytesIO(), offset, offset  # the part file is complete
        return
    with response:
        start = offset if response.status == 206 else 0
        length = response.headers.get("Content-Length")
        yield response, start, start + int(length) if length else None


def _unsatisfied_range_total(content_range: str | None) -> int | None:
    """The file size a 416 answer states (`Content-Range: bytes */SIZE`), or None if it states none."""
    match = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)


def _copy(stream: BinaryIO, out: BinaryIO, digest, bar: tqdm, url: str, part: Path) -> None:
    """Copy the rest of the download into the part file, hashing it; a broken connection keeps the part."""
    try:
        while block := stream.read(_BLOCK):
            out.write(block)
            digest.update(block)
            bar.update(len(block))
    except (OSError, http.client.HTTPException) as err:  # URLError and ConnectionError are OSErrors
        out.flush()
        raise UserError(
            f"{url}: download interrupted after {part.stat().st_size:,} bytes ({err}); run again to resume"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """`python -m lmproject.tools.download DATASET --dest DIR [--mirror URL]`."""

    def run() -> int:
        parser = ArgumentParser(prog="python -m lmproject.tools.download", description=_DESCRIPTION)
        parser.add_argument("dataset", choices=sorted(DATASETS), help="which corpus")
        parser.add_argument("--dest", type=Path, required=True, help="directory to put the files in")
        parser.add_argument("--mirror", help="base URL to fetch the same file names from instead")
        args = parser.parse_args(argv)
        download_dataset(args.dataset, args.dest, mirror=args.mirror)
        return 0

    return run_cli(run, "lmproject.tools.download")


if __name__ == "__main__":
    raise SystemExit(main())
