"""Pre-tokenization: the GPT-2 regex, special-token splitting, and chunk boundaries that change nothing."""

from __future__ import annotations

import doctest
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmproject.errors import UserError
from lmproject.tokenizer import pretokenize
from lmproject.tokenizer.pretokenize import (
    PRETOKEN_RE,
    find_chunk_boundaries,
    find_pretokens,
    special_token_re,
    split_on_special_tokens,
    validate_special_tokens,
)

EOT = "<|endoftext|>"


def pretokens(text: str, special_tokens: list[str]) -> list[str]:
    pieces = split_on_special_tokens(text, special_tokens)
    return [tok for piece in pieces for tok in PRETOKEN_RE.findall(piece)]


def test_docstring_examples_hold():
    assert doctest.testmod(pretokenize).failed == 0


def test_gpt2_regex_splits_words_numbers_punctuation_and_whitespace():
    assert PRETOKEN_RE.findall("I'll pay 12 €   now!\n\n") == [
        "I",
        "'ll",
        " pay",
        " 12",
        " €",
        "  ",
        " now",
        "!",
        "\n\n",
    ]


ASCII = "".join(map(chr, range(128)))


def test_ascii_fast_path_agrees_on_every_pair_of_ascii_characters():
    for a in ASCII:
        for b in ASCII:
            for text in (a + b, f"{a} {b}", f"{a}  {b}\n"):
                assert find_pretokens(text) == PRETOKEN_RE.findall(text), repr(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(ASCII + "é€\u00a0"), max_size=40))
def test_fast_path_finds_the_gpt2_pretokens(text):
    assert find_pretokens(text) == PRETOKEN_RE.findall(text)


def test_special_tokens_match_longest_first():
    pattern = special_token_re([EOT, EOT + EOT])
    assert pattern.findall(f"a{EOT}{EOT}b{EOT}") == [EOT + EOT, EOT]
    assert special_token_re([]) is None
    assert special_token_re(None) is None


def test_split_drops_special_tokens_and_empty_pieces():
    assert split_on_special_tokens(f"{EOT}one{EOT}{EOT}two", [EOT]) == ["one", "two"]
    assert split_on_special_tokens(f"a{EOT}b", []) == [f"a{EOT}b"]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [(["a", ""], "must not be empty"), ([EOT, EOT], "given twice"), ([b"x"], "must be a string")],
)
def test_bad_special_tokens_are_user_errors(tokens, message):
    with pytest.raises(UserError, match=message):
        validate_special_tokens(tokens)


def test_boundaries_fall_at_special_token_starts():
    data = f"hello,world{EOT}second,doc{EOT}third".encode()
    bounds = find_chunk_boundaries(io.BytesIO(data), 5, [EOT])
    assert bounds == [0, data.index(EOT.encode()), data.rindex(EOT.encode()), len(data)]


def test_boundary_is_never_inside_a_longer_special_token():
    data = f"ab{EOT}{EOT}cd{EOT}ef".encode()
    bounds = find_chunk_boundaries(io.BytesIO(data), 1, [EOT, EOT + EOT])
    assert bounds == [0, 2, 2 + 2 * len(EOT) + 2, len(data)]


def test_file_path_and_small_files():
    assert find_chunk_boundaries(io.BytesIO(b""), 10) == [0, 0]
    assert find_chunk_boundaries(io.BytesIO(b"no-break-here"), 2) == [0, 13]
    assert find_chunk_boundaries(io.BytesIO(b"a break  here"), 1) == [0, 1, 13]  # not in a space run


PIECES = ["a", "Zed", " ", "  ", "\n", "\n\n", "\t", "'s", "7", "!", "é", "語", "\u00a0", "\u3000"]
PIECES += [EOT, "<|x|>", "<|a b|>", "x y"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.integers(1, 12), st.booleans())
def test_chunks_pretokenize_like_the_whole_text(parts, chunk_bytes, with_specials):
    specials = [EOT, EOT + EOT, "<|x|>", "<|a b|>"] if with_specials else []
    text = "".join(parts)
    data = text.encode()
    bounds = find_chunk_boundaries(io.BytesIO(data), chunk_bytes, specials)
    assert bounds[0] == 0 and bounds[-1] == len(data)
    assert all(a < b for a, b in zip(bounds[1:-1], bounds[2:], strict=False))
    chunks = [data[a:b].decode() for a, b in zip(bounds, bounds[1:], strict=False)]
    assert [tok for chunk in chunks for tok in pretokens(chunk, specials)] == pretokens(text, specials)


def test_large_file_gets_bounded_chunks(tmp_path):
    doc = ("Once upon a time there was a cat.\n" * 30 + EOT).encode()
    path = tmp_path / "corpus.txt"
    path.write_bytes(doc * 200)
    bounds = find_chunk_boundaries(path, 4096, [EOT])
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    assert len(bounds) > 40
    assert max(sizes) < 4096 + 64  # the next safe line break is never far away


@pytest.mark.parametrize("separator", [" ", "\n\n"])  # one long line; paragraphs as in OpenWebText
def test_text_without_single_line_breaks_gets_bounded_chunks(tmp_path, separator):
    paragraph = " ".join(["Once upon a time there was a cat, and it sat."] * 20)
    path = tmp_path / "corpus.txt"
    path.write_text(separator.join([paragraph] * 100))
    bounds = find_chunk_boundaries(path, 4096)
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    assert len(bounds) > 20
    assert max(sizes) < 4096 + 64
    chunks = [path.read_bytes()[a:b].decode() for a, b in zip(bounds, bounds[1:], strict=False)]
    assert [tok for chunk in chunks for tok in pretokens(chunk, [])] == pretokens(path.read_text(), [])
