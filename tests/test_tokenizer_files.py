"""GPT-2-format vocab/merges files: the byte alphabet, round trips, GPT-2's own files, and bad files."""

from __future__ import annotations

import pytest
from conftest import shared

from lmproject.errors import UserError
from lmproject.tokenizer.files import (
    BYTE_TO_CHAR,
    iter_text_blocks,
    load_merges,
    load_vocab,
    save_merges,
    save_vocab,
    str_to_token,
    token_to_str,
)


def test_byte_alphabet_is_gpt2s():
    assert len(set(BYTE_TO_CHAR)) == 256
    assert BYTE_TO_CHAR[ord("a")] == "a" and BYTE_TO_CHAR[ord("!")] == "!"
    assert token_to_str(b" the\n") == "\u0120the\u010a"  # "Ġthe" + "Ċ"
    assert BYTE_TO_CHAR[0] == "\u0100" and BYTE_TO_CHAR[0xAD] == "\u0143"  # shifted in byte order
    every_byte = bytes(range(256))
    assert str_to_token(token_to_str(every_byte)) == every_byte
    assert " " not in token_to_str(every_byte)  # merges.txt can split its lines at spaces


def test_vocab_and_merges_round_trip(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>", 257: b" t", 258: b"\xff\xfe"}
    merges = [(b" ", b"t"), (b"\xff", b"\xfe")]
    save_vocab(vocab, tmp_path / "vocab.json")
    save_merges(merges, tmp_path / "merges.txt")
    assert load_vocab(tmp_path / "vocab.json") == vocab
    assert load_merges(tmp_path / "merges.txt") == merges
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[:2] == ["#version: 0.2", "Ġ t"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]  # no temp files left


def test_gpt2_files_load():
    vocab = load_vocab(shared("gpt2_vocab.json"))
    merges = load_merges(shared("gpt2_merges.txt"))
    assert len(vocab) == 50257 and vocab[50256] == b"<|endoftext|>" and vocab[220] == b" "
    assert len(merges) == 50000 and merges[0] == (b" ", b"t")


def test_reference_files_load():
    vocab = load_vocab(shared("train-bpe-reference-vocab.json"))
    merges = load_merges(shared("train-bpe-reference-merges.txt"))
    assert len(vocab) == 500 and len(merges) == 500 - 257
    assert b"<|endoftext|>" in vocab.values()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("vocab.json", '{"a": 0,\n "b": 1,\n "c" 2}', r"vocab.json: line 3: not valid JSON"),
        (
            "vocab.json",
            '{"a": 0,\n "b": "one"}',
            r"vocab.json: line 2: token 'b': id 'one' is not a",
        ),
        ("vocab.json", '{"a": 0,\n "b": 0}', r"vocab.json: line 2: token 'b': id 0 is used twice"),
        ("vocab.json", '{"a": 0,\n "a b": 1}', r"vocab.json: line 2: token 'a b': has a character outside"),
        ("vocab.json", '["a", "b"]', r"vocab.json: expected a JSON object"),
        (
            "merges.txt",
            "#version: 0.2\nĠ t\nh e r\n",
            r"merges.txt: line 3: expected two tokens and",
        ),
        ("merges.txt", "Ġ t\nhe\n", r"merges.txt: line 2: expected two tokens"),
        (
            "merges.txt",
            "Ġ t\nh \u00a0\n",
            r"merges.txt: line 2: character '\\xa0' is not in GPT-2's",
        ),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        (load_vocab if name == "vocab.json" else load_merges)(path)


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_merges(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="is a directory"):
        load_vocab(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"h e\n\xff x\n")
    with pytest.raises(UserError, match="invalid UTF-8 at byte offset 4"):
        load_merges(tmp_path / "bad.txt")


def test_text_blocks_cross_characters_and_report_offsets(tmp_path):
    path = tmp_path / "text.txt"
    text = "héllo wörld ✓ " * 50
    path.write_text(text, encoding="utf-8")
    assert "".join(iter_text_blocks(path, block_bytes=7)) == text  # blocks cut inside characters
    data = text.encode("utf-8")
    path.write_bytes(data[:100] + b"\xe2\x9c" + b"!" + data[100:])  # a truncated 3-byte character
    with pytest.raises(UserError, match="invalid UTF-8 at byte offset 100"):
        list(iter_text_blocks(path, block_bytes=7))
