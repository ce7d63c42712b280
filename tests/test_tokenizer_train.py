"""BPE training: the CS336 reference result, tie-breaking, special tokens, chunking invariance, bad input."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmproject.errors import UserError
from lmproject.tokenizer.files import load_merges, load_vocab
from lmproject.tokenizer.pretokenize import PRETOKEN_RE, split_on_special_tokens
from lmproject.tokenizer.train import _desc_key, train_bpe

EOT = "<|endoftext|>"


def naive_bpe(text: str, vocab_size: int, special_tokens: list[str]) -> list[tuple[bytes, bytes]]:
    """The textbook algorithm, slow and obviously right: recount every pair before each merge."""
    words = Counter(
        tuple(bytes([b]) for b in token.encode())
        for piece in split_on_special_tokens(text, special_tokens)
        for token in PRETOKEN_RE.findall(piece)
    )
    merges = []
    while 256 + len(special_tokens) + len(merges) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write(tmp_path: Path, content: str | bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("num_workers", "chunk_bytes"), [(1, 1 << 30), (2, 5000)])
def test_matches_the_cs336_reference_exactly(num_workers, chunk_bytes):
    corpus = shared("corpus.en")
    vocab, merges = train_bpe(
        corpus, 500, [EOT], num_workers=num_workers, chunk_bytes=chunk_bytes, progress=False
    )
    assert merges == load_merges(shared("train-bpe-reference-merges.txt"))
    assert set(vocab.values()) == set(load_vocab(shared("train-bpe-reference-vocab.json")).values())
    assert len(vocab) == 500


def test_vocab_layout_bytes_then_special_tokens_then_merges(tmp_path):
    vocab, merges = train_bpe(write(tmp_path, "low lower lowest"), 262, ["<|a|>", "<|b|>"], progress=False)
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert (vocab[256], vocab[257]) == (b"<|a|>", b"<|b|>")
    assert [vocab[258 + i] for i in range(len(merges))] == [a + b for a, b in merges]


def test_ties_go_to_the_lexicographically_greater_pair(tmp_path):
    # "ab", "bc" and "ax" all occur twice: (b, c) wins on the first byte, then (a, x) beats (a, bc).
    text = EOT.join(["abc", "abc", "ax", "ax"])
    _, merges = train_bpe(write(tmp_path, text), 260, [EOT], progress=False)
    assert merges == [(b"b", b"c"), (b"a", b"x"), (b"a", b"bc")]


@given(st.binary(max_size=6), st.binary(max_size=6), st.binary(max_size=6), st.binary(max_size=6))
def test_heap_key_orders_pairs_by_descending_bytes(a, b, c, d):
    assume((a, b) != (c, d))
    assert ((a, b) > (c, d)) == (_desc_key(a) + _desc_key(b) < _desc_key(c) + _desc_key(d))


TEXT_PIECES = ["a", "b", "ab", "ba", " a", " b", "aa", "\n", "  ", "x!", "é", EOT]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from(TEXT_PIECES), max_size=80),
    st.integers(257, 300),
    st.integers(1, 40),
    st.sampled_from([[], [EOT]]),
)
def test_agrees_with_the_naive_algorithm_for_any_chunking(parts, vocab_size, chunk_bytes, specials):
    text = "".join(parts)
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), text)
        if not split_on_special_tokens(text, specials):
            with pytest.raises(UserError, match="no text to train on"):
                train_bpe(path, vocab_size, specials, num_workers=1, progress=False)
            return
        vocab, merges = train_bpe(
            path, vocab_size, specials, num_workers=1, chunk_bytes=chunk_bytes, progress=False
        )
    assert merges == naive_bpe(text, vocab_size, specials)
    assert len(vocab) == 256 + len(specials) + len(merges)


def test_same_merges_whatever_the_workers_and_chunk_size(tmp_path):
    path = write(tmp_path, (shared("tinystories_sample.txt").read_text(encoding="utf-8") + "\n") * 8)
    expected = train_bpe(path, 400, [EOT], num_workers=1, chunk_bytes=1 << 30, progress=False)
    for num_workers, chunk_bytes in [(1, 700), (2, 3000), (2, 64)]:
        assert train_bpe(
            path, 400, [EOT], num_workers=num_workers, chunk_bytes=chunk_bytes, progress=False
        ) == (expected)


def test_special_tokens_are_never_merged_or_counted(tmp_path):
    specials = [EOT, EOT + EOT]
    vocab, merges = train_bpe(write(tmp_path, f"xy{EOT}{EOT}xy{EOT}" * 20), 300, specials, progress=False)
    assert merges == [(b"x", b"y")]  # then no pair is left: training stops below vocab_size
    assert len(vocab) == 259 and vocab[256] == EOT.encode() and vocab[257] == (EOT + EOT).encode()


def test_without_special_tokens_the_marker_is_ordinary_text(tmp_path):
    text = f"xy{EOT}" * 20
    _, merges = train_bpe(write(tmp_path, text), 270, [], progress=False)
    assert merges == naive_bpe(text, 270, [])
    assert (b"<", b"|") in merges and (b"|", b">") in merges


def test_progress_is_shown_for_both_phases(tmp_path, capsys):
    train_bpe(write(tmp_path, "the quick brown fox jumps over a lazy dog " * 9), 270, [EOT], num_workers=1)
    err = capsys.readouterr().err
    assert "pre-tokenize" in err and "merge" in err
    assert "13/13" in err.split("\r")[-1]  # the merge bar ends at 270 - 257 merges
    assert "stopped after" not in err


def test_running_out_of_pairs_is_reported_and_the_bar_ends_there(tmp_path, capsys):
    vocab, merges = train_bpe(write(tmp_path, "abab cd " * 50), 300, [EOT], num_workers=1)
    assert len(merges) == 5 and len(vocab) == 262  # ab, cd, abab, " cd", " abab": then nothing
    err = capsys.readouterr().err
    assert "stopped after 5 merges: no pair left (vocab size 262 < requested 300)\n" in err
    assert "5/5" in err.split("\r")[-1]


def test_invalid_utf8_names_the_file_and_the_first_bad_offset(tmp_path):
    data = b"good text\n" * 50 + b"bad \xff here\n" + b"more text\n" * 50 + b"\xfe"
    path = write(tmp_path, data)
    first_bad = data.index(b"\xff")
    with pytest.raises(UserError, match=rf"corpus\.txt: invalid UTF-8 at byte offset {first_bad}$"):
        train_bpe(path, 300, [EOT], num_workers=2, chunk_bytes=100, progress=False)


def test_invalid_utf8_is_replaced_on_request(tmp_path):
    path = write(tmp_path, b"caf\xe9 caf\xe9 caf\xe9")
    vocab, _ = train_bpe(path, 300, [], errors="replace", progress=False)
    assert "\ufffd".encode() in vocab.values()  # the replacement character was counted and merged


@pytest.mark.parametrize(
    ("content", "vocab_size", "specials", "message"),
    [
        ("text", 256, [EOT], r"vocab_size 256 is too small: .* take 257"),
        ("text", 2_000_000, [EOT], "above the supported maximum"),
        ("text", 300, [""], "special token must not be empty"),
        ("text", 300, [EOT, EOT], "given twice"),
        ("", 300, [EOT], "no text to train on"),
        (EOT * 3, 300, [EOT], "no text to train on"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(tmp_path, content, vocab_size, specials, message):
    with pytest.raises(UserError, match=message) as err:
        train_bpe(write(tmp_path, content), vocab_size, specials, progress=False)
    assert "\n" not in str(err.value)


def test_missing_input_and_directory_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"nope\.txt: cannot read"):
        train_bpe(tmp_path / "nope.txt", 300, [EOT], progress=False)
    with pytest.raises(UserError, match="is a directory"):
        train_bpe(tmp_path, 300, [EOT], progress=False)
