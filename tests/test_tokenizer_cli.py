"""`lmproject-bpe train|encode|inspect`: the user's workflow, and one-line errors with no partial output."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lmproject.errors import UserError
from lmproject.tokenizer import Tokenizer, train_bpe
from lmproject.tokenizer.cli import main

EOT = "<|endoftext|>"
STORIES = (
    "".join(
        f"Once upon a time, {name} found a {thing}. {name} was happy!\n{EOT}"
        for name in ("Tom", "Lily", "Ben", "Sue")
        for thing in ("ball", "red kite", "little dog", "box of toys")
    )
    * 5
)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "stories.txt"
    path.write_text(STORIES, encoding="utf-8")
    return path


@pytest.fixture
def tokenizer_dir(tmp_path, corpus) -> Path:
    out = tmp_path / "tok"
    assert main(["train", str(corpus), "--vocab-size", "300", "--special-token", EOT, "--out", str(out)]) == 0
    return out


def fails(argv: list[str], capsys) -> str:
    """Run the CLI expecting a bad-input exit; return its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lmproject-bpe") and ": error: " in err
    return err


def test_train_encode_inspect(tmp_path, corpus, tokenizer_dir, capsys):
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == [
        "merges.txt",
        "special_tokens.json",
        "vocab.json",
    ]
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    assert len(tokenizer.vocab) == 300 and tokenizer.special_tokens == [EOT]

    out = tmp_path / "stories.npy"
    assert main(["encode", "--tokenizer", str(tokenizer_dir), str(corpus), str(out), "--workers", "2"]) == 0
    ids = np.load(out, mmap_mode="r")
    assert ids.dtype == np.uint16 and ids.tolist() == tokenizer.encode(STORIES)
    assert f"wrote {out}: {len(ids):,} tokens (uint16)" in capsys.readouterr().out

    assert main(["inspect", "--tokenizer", str(tokenizer_dir), "--text", str(corpus), "--top", "3"]) == 0
    shown = capsys.readouterr().out
    assert "vocab size: 300" in shown and "merges: 43" in shown and f"special tokens: '{EOT}'" in shown
    assert ("encoder merge loop: compiled" if tokenizer.compiled else "encoder merge loop: Python") in shown
    first = tokenizer.merges[0]
    assert f"first merges: {first[0].decode()!r}+{first[1].decode()!r}" in shown
    longest = max((t for t in tokenizer.vocab.values() if t != EOT.encode()), key=len)
    assert f"longest tokens: {longest.decode()!r}" in shown
    ratio = len(STORIES.encode()) / len(ids)
    assert f"{len(ids):,} tokens, {ratio:.2f} bytes/token" in shown


def test_empty_text_encodes_to_an_empty_array(tmp_path, tokenizer_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["encode", "--tokenizer", str(tokenizer_dir), str(empty), str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy", mmap_mode="r").shape == (0,)
    assert main(["inspect", "--tokenizer", str(tokenizer_dir), "--text", str(empty)]) == 0
    assert "no tokens (empty text)" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_runs_the_same_cli(tmp_path, corpus, tokenizer_dir):
    out = tmp_path / "m.npy"
    command = [sys.executable, "-m", "lmproject.tokenizer", "encode", "--tokenizer", str(tokenizer_dir)]
    result = subprocess.run([*command, str(corpus), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert np.load(out).tolist() == Tokenizer.from_dir(tokenizer_dir).encode(STORIES)
    result = subprocess.run(
        [*command, str(tmp_path / "missing.txt"), str(out)], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.strip().startswith("lmproject-bpe: error: ")
    assert "Traceback" not in result.stderr


def test_bad_training_input(tmp_path, corpus, capsys):
    out = tmp_path / "tok"
    train = ["train", "--special-token", EOT, "--out", str(out)]
    assert "missing.txt" in fails([*train, str(tmp_path / "missing.txt"), "--vocab-size", "300"], capsys)
    assert "is a directory" in fails([*train, str(tmp_path), "--vocab-size", "300"], capsys)
    assert "vocab_size 100" in fails([*train, str(corpus), "--vocab-size", "100"], capsys)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(STORIES.encode() + b"\xc3(" + STORIES.encode())
    assert f"byte offset {len(STORIES.encode())}" in fails([*train, str(bad), "--vocab-size", "300"], capsys)
    assert not out.exists()
    assert main([*train, str(bad), "--vocab-size", "300", "--replace-invalid-utf8"]) == 0
    assert "\ufffd" in Tokenizer.from_dir(out).decode(Tokenizer.from_dir(out).encode("\ufffd"))
    assert "--workers: expected a positive integer, got 0" in fails(
        [*train, str(corpus), "--workers", "0"], capsys
    )


def test_bad_encoding_input(tmp_path, corpus, tokenizer_dir, capsys):
    encode = ["encode", "--tokenizer", str(tokenizer_dir)]
    assert "does not exist" in fails([*encode, str(corpus), str(tmp_path / "nodir" / "x.npy")], capsys)
    assert "missing.txt" in fails([*encode, str(tmp_path / "missing.txt"), str(tmp_path / "x.npy")], capsys)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Once upon a time\n\xff\n")
    assert "bad.txt: invalid UTF-8 at byte offset 17" in fails(
        [*encode, str(bad), str(tmp_path / "x.npy")], capsys
    )
    assert not (tmp_path / "x.npy").exists()
    assert "not a directory" in fails(["inspect", "--tokenizer", str(tmp_path / "none")], capsys)
    inspect = ["inspect", "--tokenizer", str(tokenizer_dir), "--text"]
    for text, message in [
        ("missing.txt", "cannot read: No such file or directory"),
        ("", "is a directory, expected a text file"),  # tmp_path itself
        ("bad.txt", "invalid UTF-8 at byte offset 17"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main([*inspect, str(tmp_path / text)])
        out, err = capsys.readouterr()
        assert out == ""  # checked before any of the report is printed
        assert err.strip() == f"lmproject-bpe: error: {tmp_path / text}: {message}"

    merges = tokenizer_dir / "merges.txt"
    merges.write_text(merges.read_text(encoding="utf-8") + "a b c\n", encoding="utf-8")
    line = len(merges.read_text(encoding="utf-8").splitlines())
    assert f"merges.txt: line {line}: expected two tokens" in fails(
        [*encode, str(corpus), str(tmp_path / "x.npy")], capsys
    )
    (tokenizer_dir / "vocab.json").write_text('{"a": 0,\n"b": }', encoding="utf-8")
    assert "vocab.json: line 2: not valid JSON" in fails(
        ["inspect", "--tokenizer", str(tokenizer_dir)], capsys
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "stories.txt", "tok"]


def test_train_checks_its_output_folder_and_special_tokens_before_training(
    tmp_path, corpus, capsys, monkeypatch
):
    import lmproject.tokenizer.cli as cli

    monkeypatch.setattr(cli, "train_bpe", lambda *a, **k: pytest.fail("trained before checking"))
    train = ["train", str(corpus), "--vocab-size", "300"]
    assert fails([*train, "--out", str(corpus / "tok")], capsys).endswith(
        f"--out {corpus / 'tok'}: {corpus} is a file, not a directory"
    )
    monkeypatch.undo()
    assert fails([*train, "--special-token", "a", "--out", str(tmp_path / "tok")], capsys).endswith(
        "special token 'a' is a single byte, already one of the 256 byte tokens (special tokens look like "
        "<|endoftext|>)"
    )
    assert not (tmp_path / "tok").exists()


def test_encode_removes_what_a_killed_encode_left_for_its_output(tmp_path, corpus, tokenizer_dir):
    dead = 99_999_999  # above Linux's largest pid: no process has it
    parts = tmp_path / f".out.npy.{dead}.abcd_123.parts"
    parts.mkdir()
    (parts / "000000.bin").write_bytes(b"\0\0")
    half = tmp_path / f".out.npy.{dead}.efgh_456.tmp"
    half.write_bytes(b"")
    others = [tmp_path / f".other.npy.{dead}.abcd_123.parts", tmp_path / ".out.npy.parts"]
    for folder in others:
        folder.mkdir()
    assert main(["encode", "--tokenizer", str(tokenizer_dir), str(corpus), str(tmp_path / "out.npy")]) == 0
    assert not parts.exists() and not half.exists()
    assert all(folder.is_dir() for folder in others)  # another output's, and a name not of this shape


def test_argument_errors_are_one_line_without_the_usage_block(tmp_path, corpus, tokenizer_dir, capsys):
    for argv in (
        ["--workers", "0"],
        ["train", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "o"), "--workers", "0"],
        ["inspect", "--tokenizer", str(tokenizer_dir), "--top", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith("lmproject-bpe") and ": error: " in err
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: lmproject-bpe inspect")


def test_special_tokens_and_vocab_sizes_of_the_wrong_type_are_refused(tmp_path, corpus, capsys):
    """(Bytes that are not UTF-8 in --special-token were a UnicodeEncodeError traceback; a vocab_size of
    300.5 was accepted.)"""
    token = os.fsdecode(b"<|\xff|>")  # how such command-line bytes reach Python
    message = fails(["train", str(corpus), "--vocab-size", "300", "--special-token", token, "--out",
                     str(tmp_path / "tok")], capsys)  # fmt: skip
    assert message.endswith("--special-token is not valid UTF-8 (byte 0xff at character 2)")
    with pytest.raises(UserError, match="vocab_size must be an integer, got 300.5"):
        train_bpe(corpus, 300.5, [EOT], num_workers=1, progress=False)
    assert not (tmp_path / "tok").exists()


SLOW_POOL = """
import sys, time
from lmproject.errors import run_cli
from lmproject.tokenizer.chunks import map_chunks

def slow(job):
    time.sleep(60)

def work():
    print("started", flush=True)
    list(map_chunks(slow, [(0,), (1,)], [0, 1, 2], num_workers=2, desc="x", progress=False))

run_cli(work, "lmproject-bpe")
"""


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_pool_without_their_tracebacks(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the workers printed KeyboardInterrupt
    tracebacks beside the parent's one line."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_POOL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert process.stdout.readline() == "started\n"
    time.sleep(1.0)  # the workers are in their jobs
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err == "lmproject-bpe: interrupted\n"


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_output_and_leaves_nothing(
    tmp_path, corpus, tokenizer_dir, capsys, monkeypatch
):
    """(`[Errno 28] No space left on device` named no file, train left an empty --out folder, and encode's
    workers said `601743 requested and 215040 written`.)"""
    import lmproject.tokenizer.encode_file as encode_module
    import lmproject.tokenizer.tokenizer as tokenizer_module

    before = sorted(tmp_path.iterdir())
    monkeypatch.setattr(tokenizer_module, "save_merges", no_space)
    out = tmp_path / "new" / "tok"
    message = fails(["train", str(corpus), "--vocab-size", "300", "--out", str(out)], capsys)
    assert message == f"lmproject-bpe: error: {out}: cannot write it: the disk is full"
    monkeypatch.setattr(encode_module.shutil, "copyfileobj", no_space)
    npy = tmp_path / "x.npy"
    message = fails(
        ["encode", "--tokenizer", str(tokenizer_dir), str(corpus), str(npy), "--workers", "1"], capsys
    )
    assert message == f"lmproject-bpe: error: {npy}: cannot write it: the disk is full"
    assert sorted(tmp_path.iterdir()) == before  # no output, no temp file or folder


def test_a_read_only_output_folder_is_named_by_the_output(
    tmp_path, corpus, tokenizer_dir, capsys, monkeypatch
):
    """(The message named the temp folder, `.x.npy.13461._9wcp6ka.parts`.)"""

    def refuse(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}abcd_123{suffix}")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # as in a read-only folder (root writes anywhere)
    npy = tmp_path / "x.npy"
    message = fails(["encode", "--tokenizer", str(tokenizer_dir), str(corpus), str(npy)], capsys)
    assert message == f"lmproject-bpe: error: {npy}: cannot write it: Permission denied"


@pytest.mark.parametrize("command", ["train", "encode"])
def test_a_fifo_input_is_refused_not_waited_on(tmp_path, tokenizer_dir, command):
    """(train on a FIFO hung, even with a writer: the file is opened more than once.)"""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    argv = {
        "train": ["train", str(fifo), "--vocab-size", "300", "--out", str(tmp_path / "t")],
        "encode": ["encode", "--tokenizer", str(tokenizer_dir), str(fifo), str(tmp_path / "x.npy")],
    }[command]
    result = subprocess.run(
        [sys.executable, "-m", "lmproject.tokenizer", *argv], capture_output=True, text=True, timeout=60,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"lmproject-bpe: error: {fifo}: is a FIFO (named pipe); the text file must be a regular file "
        "(it is read more than once)\n"
    )
