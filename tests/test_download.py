"""Dataset downloads against local sources: file:// mirrors and a local HTTP server (no internet needed)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from lmproject.errors import UserError
from lmproject.tools import download
from lmproject.tools.download import RemoteFile, download_dataset, fetch, main, sha256_from_etag

CONTENT = b"".join(b"Once upon a time there was story number %d.\n<|endoftext|>" % i for i in range(20_000))
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "src" / "data.txt"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


class FailAfter:
    """A stream that breaks after `limit` bytes, like a dropped connection."""

    def __init__(self, stream, limit: int) -> None:
        self.stream, self.left = stream, limit

    def read(self, size: int) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("connection reset by peer")
        block = self.stream.read(min(size, self.left))
        self.left -= len(block)
        return block


def test_file_url_download_writes_checksum(tmp_path, source):
    path = tmp_path / "data.txt"
    assert fetch(RemoteFile(source.as_uri(), SHA), path, progress=False) == SHA
    assert path.read_bytes() == CONTENT
    assert (tmp_path / "data.txt.sha256").read_text() == f"{SHA}  data.txt\n"
    assert not (tmp_path / "data.txt.part").exists()


def test_interrupted_download_resumes(tmp_path, source, monkeypatch):
    real_open = download._open_from

    @contextmanager
    def flaky_open(url, offset):
        with real_open(url, offset) as (stream, start, total):
            yield FailAfter(stream, 100_000), start, total

    monkeypatch.setattr(download, "_open_from", flaky_open)
    path = tmp_path / "data.txt"
    with pytest.raises(UserError, match="interrupted after 100,000 bytes .* run again to resume"):
        fetch(RemoteFile(source.as_uri(), SHA), path, progress=False)
    assert not path.exists() and (tmp_path / "data.txt.part").stat().st_size == 100_000
    monkeypatch.undo()
    # Spoil the source's first bytes: only a download that keeps the part file still matches the checksum.
    source.write_bytes(b"X" * 100_000 + CONTENT[100_000:])
    fetch(RemoteFile(source.as_uri(), SHA), path, progress=False)
    assert path.read_bytes() == CONTENT


def test_checksum_mismatch_leaves_no_file(tmp_path, source, capsys):
    path = tmp_path / "data.txt"
    with pytest.raises(UserError, match=f"SHA-256 {SHA} differs from 0{{64}} \\(pinned in the manifest\\)"):
        fetch(RemoteFile(source.as_uri(), "0" * 64), path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.slow
def test_part_longer_than_the_source_starts_over(tmp_path, source):
    (tmp_path / "data.txt.part").write_bytes(CONTENT + b"left over from another file")
    fetch(RemoteFile(source.as_uri()), tmp_path / "data.txt", progress=False)  # no digest to catch it
    assert (tmp_path / "data.txt").read_bytes() == CONTENT

    (tmp_path / "web.txt.part").write_bytes(CONTENT + b"left over from another file")
    with hub_like_server("") as (server, url):  # states no SHA-256
        fetch(RemoteFile(url), tmp_path / "web.txt", progress=False)
        assert server.requested_ranges == [len(CONTENT) + 27, 0]
    assert (tmp_path / "web.txt").read_bytes() == CONTENT
    (tmp_path / "done.txt.part").write_bytes(CONTENT)
    with hub_like_server("") as (server, url):  # a complete part is kept
        fetch(RemoteFile(url), tmp_path / "done.txt", progress=False)
        assert server.requested_ranges == [len(CONTENT)]
    assert (tmp_path / "done.txt").read_bytes() == CONTENT


def test_unpinned_file_url_is_reported_unverified(tmp_path, source, capsys):
    fetch(RemoteFile(source.as_uri()), tmp_path / "data.txt", progress=False)
    assert "NOT verified" in capsys.readouterr().out
    assert (tmp_path / "data.txt.sha256").read_text().split()[0] == SHA  # what was received


def test_etag_parsing():
    assert sha256_from_etag(f'"{SHA.upper()}"') == SHA
    assert sha256_from_etag(f'W/"{SHA}"') == SHA
    assert sha256_from_etag('"0123456789abcdef0123456789abcdef01234567"') is None  # a git blob hash
    assert sha256_from_etag(None) is None


def test_dataset_from_mirror_with_gzip(tmp_path, source, capsys):
    for name in ("owt_train.txt.gz", "owt_valid.txt.gz"):
        (source.parent / name).write_bytes(gzip.compress(CONTENT))
    dest = tmp_path / "data" / "owt"
    assert main(["owt", "--dest", str(dest), "--mirror", source.parent.as_uri()]) == 0
    assert sorted(p.name for p in dest.iterdir()) == [
        "owt_train.txt", "owt_train.txt.gz.sha256", "owt_valid.txt", "owt_valid.txt.gz.sha256"
    ]  # fmt: skip
    assert (dest / "owt_train.txt").read_bytes() == CONTENT
    assert main(["owt", "--dest", str(dest), "--mirror", source.parent.as_uri()]) == 0
    assert "already there, skipped" in capsys.readouterr().out


def test_bad_gzip_and_missing_source_are_one_line_errors(tmp_path, source, capsys):
    (source.parent / "owt_train.txt.gz").write_bytes(b"not gzip at all")
    dest = tmp_path / "owt"
    with pytest.raises(SystemExit) as exit_info:
        main(["owt", "--dest", str(dest), "--mirror", source.parent.as_uri()])
    assert exit_info.value.code == 2
    assert "owt_train.txt.gz: not a valid gzip file" in capsys.readouterr().err
    assert not (dest / "owt_train.txt").exists()
    with pytest.raises(SystemExit):
        main(["tinystories", "--dest", str(dest), "--mirror", source.parent.as_uri()])
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmproject.tools.download: error: ") and "TinyStoriesV2-GPT4-train.txt" in err
    assert "\n" not in err
    with pytest.raises(UserError, match="unknown dataset"):
        download_dataset("wikipedia", dest)


class _HubLikeHandler(http.server.BaseHTTPRequestHandler):
    """Serves CONTENT like the hub serves an LFS file: HEAD states the SHA-256, GET honours Range."""

    stated_sha = SHA

    def do_HEAD(self):
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("X-Linked-Etag", f'"{self.stated_sha}"')
        self.end_headers()

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers["Range"] else 0
        self.server.requested_ranges.append(start)
        if start >= len(CONTENT):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(CONTENT)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = CONTENT[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def hub_like_server(stated_sha: str):
    handler = type("Handler", (_HubLikeHandler,), {"stated_sha": stated_sha})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requested_ranges = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/data.txt"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_http_resume_with_range_and_server_stated_checksum(tmp_path, capsys):
    path = tmp_path / "data.txt"
    (tmp_path / "data.txt.part").write_bytes(CONTENT[:12_345])
    with hub_like_server(SHA) as (server, url):
        fetch(RemoteFile(url), path, progress=False)
        assert server.requested_ranges == [12_345]
    assert path.read_bytes() == CONTENT
    assert "verified SHA-256 stated by the server" in capsys.readouterr().out

    with hub_like_server("f" * 64) as (server, url), pytest.raises(UserError, match="stated by the server"):
        fetch(RemoteFile(url), tmp_path / "other.txt", progress=False)
    assert not (tmp_path / "other.txt").exists() and not (tmp_path / "other.txt.part").exists()
