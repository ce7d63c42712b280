"""Tokenizer semantics: merge order, special tokens, decode, streaming, saving, and file encoding."""

from __future__ import annotations

import itertools
import pickle
import re
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from small_tokenizer import BYTES, ENGLISH_MERGES, EOT, make_tokenizer

from lmproject.errors import UserError
from lmproject.tokenizer import Tokenizer
from lmproject.tokenizer import tokenizer as tokenizer_module
from lmproject.tokenizer.encode_file import encode_file
from lmproject.tokenizer.pretokenize import PRETOKEN_RE, find_pretokens

ASCII_EDGES = " \t\n\r\x0b\x0c\x1c\x1f'sltvea1!"


@pytest.fixture(scope="module")
def english() -> Tokenizer:
    return make_tokenizer(ENGLISH_MERGES, [EOT])


def pieces(tokenizer: Tokenizer, text: str) -> list[bytes]:
    return [tokenizer.vocab[i] for i in tokenizer.encode(text)]


def test_merges_apply_by_rank_not_left_to_right():
    tokenizer = make_tokenizer([(b"b", b"c"), (b"a", b"b")])
    assert pieces(tokenizer, "abc") == [b"a", b"bc"]  # (b, c) was learned first, so (a, b) never forms
    assert pieces(tokenizer, "abab") == [b"ab", b"ab"]
    assert pieces(tokenizer, "bbbb") == [b"b", b"b", b"b", b"b"]


def test_a_vocab_token_encodes_as_its_merges_give_not_as_itself():
    """A shortcut that maps text equal to a vocab token straight to that token would be wrong here."""
    tokenizer = make_tokenizer([(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")])
    assert pieces(tokenizer, "abc") == [b"ab", b"c"]  # learned as a + bc, but (a, b) comes first
    assert pieces(tokenizer, "bc") == [b"bc"]


def test_equal_pairs_merge_left_to_right():
    tokenizer = make_tokenizer([(b"a", b"a")])
    assert pieces(tokenizer, "aaa") == [b"aa", b"a"]
    assert pieces(tokenizer, "aaaaa") == [b"aa", b"aa", b"a"]


def test_merges_stay_inside_pre_tokens(english):
    assert pieces(english, " the then") == [b" the", b" the", b"n"]
    assert pieces(english, "the") == [b"t", b"he"]  # no leading space: " t" cannot apply
    assert pieces(english, "in,g") == [b"in", b",", b"g"]  # "," is its own pre-token


def test_special_tokens_longest_first():
    double = EOT + EOT
    tokenizer = make_tokenizer(ENGLISH_MERGES, [EOT, double])
    ids = tokenizer.encode(f"a{double}b{EOT}c{EOT}{EOT}{EOT}")
    eot, eot2 = tokenizer.encode(EOT), tokenizer.encode(double)
    assert len(eot) == 1 and len(eot2) == 1 and eot != eot2
    assert ids == [ord("a"), *eot2, ord("b"), *eot, ord("c"), *eot2, *eot]


def test_special_token_text_is_ordinary_without_special_tokens():
    tokenizer = make_tokenizer(ENGLISH_MERGES)
    ids = tokenizer.encode(f"hi{EOT}")
    assert len(ids) > 3 and b"".join(tokenizer.vocab[i] for i in ids) == f"hi{EOT}".encode()
    assert tokenizer.decode(ids) == f"hi{EOT}"


def test_special_tokens_get_ids_and_split_merges(english):
    eot = len(BYTES) + len(ENGLISH_MERGES)  # not in the vocab: appended after it
    assert english.vocab[eot] == EOT.encode() and english.vocab_size == eot + 1
    assert pieces(english, f" t{EOT}he") == [b" t", EOT.encode(), b"he"]
    assert english.encode(EOT) == [eot]


def test_decode_replaces_malformed_utf8_and_rejects_unknown_ids(english):
    assert english.decode([0xE2, 0x9C]) == "\ufffd"  # a truncated 3-byte character
    assert english.decode([0xFF, ord("a")]) == "\ufffda"
    assert english.decode(np.array([104, 105], dtype=np.uint16)) == "hi"
    with pytest.raises(ValueError, match="token id 60000 is not in the vocab"):
        english.decode(np.array([104, 60000], dtype=np.uint16))
    for bad in (english.vocab_size, -1):
        with pytest.raises(ValueError, match=f"token id {bad} is not in the vocab"):
            english.decode([104, bad])
    for bad, kind in ((104.0, "float"), (True, "bool"), (np.float32(1), "float32"), ([1], "list")):
        message = rf"token id {re.escape(repr(bad))} is not an integer \({kind}\)"
        with pytest.raises(ValueError, match=message):
            english.decode([104, bad])


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_inverts_encode(text):
    tokenizer = make_tokenizer(ENGLISH_MERGES, [EOT])
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(max_codepoint=127)) | st.lists(st.sampled_from(list(ASCII_EDGES))).map("".join))
def test_ascii_fast_path_pre_tokenizes_like_the_gpt2_regex(text):
    """Pure-ASCII text goes through `re` with ASCII classes; \\x1c-\\x1f are `re` but not `regex` spaces."""
    assert find_pretokens(text) == PRETOKEN_RE.findall(text)


# Text built from the pieces where chunk edges are delicate: contractions, whitespace runs, special tokens
# (and prefixes of them), numbers, non-ASCII letters.
DELICATE = st.lists(
    st.sampled_from(["'", "s", "ll", "ve", "re", " ", "  ", "\n", "\t", "a", "the", "1", "23", "é", "日本",
                     "!", "?!", "<|", "<|endoftext", "|>", EOT, " ", "\r\n", "\u3000", "\x1c"]),
    max_size=40,
).map("".join)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(DELICATE, st.lists(st.integers(0, 200), max_size=12), st.booleans())
@example(EOT + EOT, [], True)  # the longer special token must win although the shorter one ends first
@example("\n\n''", [], False)  # "\n\n" alone is one pre-token, but two before "'"
@example("a\n\n  the", [1, 4], False)
def test_encode_iterable_matches_encode_for_any_chunking(text, cuts, overlapping_specials):
    specials = [EOT, EOT + EOT] if overlapping_specials else [EOT]
    tokenizer = make_tokenizer(ENGLISH_MERGES, specials)
    cuts = sorted({min(cut, len(text)) for cut in cuts})
    chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    with mock.patch.object(tokenizer_module, "_STREAM_BLOCK", 1):  # encode at every chunk edge
        assert list(tokenizer.encode_iterable(chunks)) == tokenizer.encode(text)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("line", "lines"),
    [
        ("the cat and the dog, line {}\n", 6_000),
        ("hello world the cat {}\n", 6_000),  # no punctuation: the only cuts are next to whitespace
        ("{}\n", 30_000),  # a list of numbers
    ],
)
def test_encode_iterable_streams(english, line, lines):
    story = ["Once upon a time, ", "there was a cat.\n", EOT, "\n"]
    first = list(itertools.islice(english.encode_iterable(itertools.cycle(story)), 1000))  # it does return
    assert first == english.encode("".join(story * 100))[:1000]

    def peak_memory(lines: int) -> int:
        texts = (line.format(i % 100) for i in range(lines))
        tracemalloc.start()
        assert sum(1 for _ in english.encode_iterable(texts)) > lines
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    assert peak_memory(4 * lines) < 1.2 * peak_memory(lines)  # 4x the text, about the same memory


def test_encode_iterable_cuts_text_without_punctuation(english):
    text = "hello world the cat\n" * 5000
    assert len(text) - english._stable_prefix_length(text) < 8  # pending text stays short


def test_cache_is_bounded_and_transparent():
    small_cache = make_tokenizer(ENGLISH_MERGES, [EOT], cache_entries=8)
    reference = make_tokenizer(ENGLISH_MERGES, [EOT])
    text = " ".join(f"word{i} the{i % 7}" for i in range(500))
    assert small_cache.encode(text) == reference.encode(text)
    assert len(small_cache._cache) <= 8


def test_invalid_vocab_or_merges_are_value_errors():
    with pytest.raises(ValueError, match="lacks single-byte tokens"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])
    with pytest.raises(ValueError, match="merge 1 .* not in the vocab"):
        Tokenizer(dict(BYTES), [(b"a", b"b")])
    with pytest.raises(UserError, match="given twice"):
        Tokenizer(dict(BYTES), [], [EOT, EOT])
    for bad_id in (-1, 2**32 - 1):
        with pytest.raises(ValueError, match=f"token id {bad_id} is outside 0..4294967294"):
            Tokenizer(dict(BYTES) | {bad_id: b"ab"}, [])


def test_save_and_load_directory(tmp_path, english):
    english.save(tmp_path / "tok")
    loaded = Tokenizer.from_dir(tmp_path / "tok")
    assert (
        loaded.special_tokens == [EOT] and loaded.vocab == english.vocab and loaded.merges == english.merges
    )
    text = f"the thing's in{EOT}and then\n\n"
    assert loaded.encode(text) == english.encode(text)
    assert pickle.loads(pickle.dumps(english)).encode(text) == english.encode(text)


def test_a_failed_save_leaves_the_previous_files_whole(tmp_path, english):
    english.save(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    other = make_tokenizer(ENGLISH_MERGES[:3], [])
    failing = mock.patch.object(tokenizer_module, "save_merges", side_effect=OSError("disk full"))
    with failing, pytest.raises(OSError, match="disk full"):
        other.save(tmp_path)  # fails after vocab.json is written
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    other.save(tmp_path)
    assert Tokenizer.from_dir(tmp_path).merges == other.merges
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(before)


def test_from_files_reports_files_that_do_not_fit(tmp_path, english):
    english.save(tmp_path)
    (tmp_path / "merges.txt").write_text("x y\n", encoding="utf-8")
    with pytest.raises(UserError, match="vocab.json and .*merges.txt do not fit together: merge 1"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "special_tokens.json").write_text('["<|a|>", ""]', encoding="utf-8")
    with pytest.raises(UserError, match="special_tokens.json: special token must not be empty"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        Tokenizer.from_dir(tmp_path / "missing")


STORY = "Once upon a time, there was a cat. The cat's name was Tom!\nTom liked the sun.\n"


@pytest.mark.parametrize("specials", [[EOT], []])
def test_encode_file_in_parallel_chunks_matches_encode(tmp_path, english, specials):
    tokenizer = make_tokenizer(ENGLISH_MERGES, specials)
    text = "".join(f"{STORY * (i % 3 + 1)}{i} héllo{EOT}" for i in range(300))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    count = encode_file(
        tokenizer,
        tmp_path / "corpus.txt",
        tmp_path / "ids.npy",
        num_workers=2,
        chunk_bytes=2000,
        progress=False,
    )
    ids = np.load(tmp_path / "ids.npy", mmap_mode="r")
    assert ids.dtype == np.uint16 and count == len(ids)
    assert ids.tolist() == tokenizer.encode(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "ids.npy"]  # parts cleaned up


def test_encode_file_uses_uint32_above_65536_ids(tmp_path):
    tokenizer = Tokenizer(BYTES | {70_000: b"<|big|>"}, [], ["<|big|>"])
    (tmp_path / "a.txt").write_text("hi<|big|>", encoding="utf-8")
    encode_file(tokenizer, tmp_path / "a.txt", tmp_path / "a.npy", progress=False)
    ids = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert ids.dtype == np.uint32 and ids.tolist() == [104, 105, 70_000]


def test_encode_file_bad_input_leaves_no_output(tmp_path, english):
    data = (STORY * 200).encode()
    (tmp_path / "bad.txt").write_bytes(data + b"caf\xe9\n" + data)
    with pytest.raises(UserError, match=f"bad.txt: invalid UTF-8 at byte offset {len(data) + 3}"):
        encode_file(
            english,
            tmp_path / "bad.txt",
            tmp_path / "out.npy",
            num_workers=2,
            chunk_bytes=1000,
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]
    encode_file(english, tmp_path / "bad.txt", tmp_path / "out.npy", errors="replace", progress=False)
    assert "caf\ufffd\n" in english.decode(np.load(tmp_path / "out.npy"))
    with pytest.raises(UserError, match="missing does not exist"):
        encode_file(english, tmp_path / "bad.txt", tmp_path / "missing" / "out.npy", progress=False)
    with pytest.raises(UserError, match="is a directory"):
        encode_file(english, tmp_path, tmp_path / "out2.npy", progress=False)
    with pytest.raises(UserError, match="num_workers must be at least 1, got 0"):
        encode_file(english, tmp_path / "bad.txt", tmp_path / "out2.npy", num_workers=0, progress=False)
    with pytest.raises(UserError, match="out2.bin: the output is a .npy array, so its name must end in .npy"):
        encode_file(english, tmp_path / "bad.txt", tmp_path / "out2.bin", progress=False)
    with pytest.raises(UserError, match="cannot read"):
        encode_file(english, tmp_path / "nope.txt", tmp_path / "out2.npy", progress=False)
    assert not (tmp_path / "out2.npy").exists() and not (tmp_path / "out2.bin").exists()


def test_a_folder_without_special_tokens_json_follows_gpt2s_convention_and_says_so(tmp_path, english):
    """GPT-2's own files hold <|endoftext|> in vocab.json and have no special_tokens.json: it must stay
    one token (a corpus encoded byte by byte would lose its document separators), and loudly."""
    english.save(tmp_path)
    (tmp_path / "special_tokens.json").unlink()
    with pytest.warns(UserWarning, match=r"no special_tokens.json; treating <\|endoftext\|> of vocab.json"):
        loaded = Tokenizer.from_dir(tmp_path)
    assert loaded.special_tokens == [EOT]
    assert loaded.encode(f"the{EOT}the") == english.encode(f"the{EOT}the")
    plain = make_tokenizer(ENGLISH_MERGES, [])
    plain.save(tmp_path / "plain")
    (tmp_path / "plain/special_tokens.json").unlink()
    assert Tokenizer.from_dir(tmp_path / "plain").special_tokens == []  # nothing shaped <|...|>: no warning


def test_bytes_instead_of_text_is_a_clear_type_error(tmp_path, english):
    (tmp_path / "a.txt").write_text("the cat\n")
    with open(tmp_path / "a.txt", "rb") as binary, pytest.raises(TypeError, match="opened in binary mode"):
        list(english.encode_iterable(binary))
    with pytest.raises(TypeError, match=r"Tokenizer.encode takes text \(str\), got int"):
        english.encode(5)
