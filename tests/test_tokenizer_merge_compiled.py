"""The compiled merge loop (tokenizer/_merge.c) gives exactly the ids of the Python loop (Tokenizer._bpe)."""

from __future__ import annotations

import os
from unittest import mock

import pytest
from conftest import shared
from hypothesis import example, given, settings
from hypothesis import strategies as st
from small_tokenizer import ENGLISH_MERGES, EOT, make_tokenizer

from lmproject.tokenizer import Tokenizer
from lmproject.tokenizer import tokenizer as tokenizer_module

# Characters the English merges join, multi-byte ones, and any other character but lone surrogates.
CHARACTERS = st.sampled_from("the an in ing and ou s'\n  <|>éü→") | st.characters(exclude_categories=["Cs"])
needs_compiled = pytest.mark.skipif(
    tokenizer_module.MergeTable is None, reason="the C merge loop was not built (no C compiler at install)"
)


def python_loop(build):
    """The tokenizer `build()` returns, made to run the Python merge loop."""
    with mock.patch.object(tokenizer_module, "MergeTable", None):
        tokenizer = build()
    assert not tokenizer.compiled
    return tokenizer


@pytest.mark.skipif(not os.environ.get("LMPROJECT_REQUIRE_COMPILED"), reason="build not required here")
def test_the_install_built_the_compiled_loop():
    """CI sets LMPROJECT_REQUIRE_COMPILED: there a failed build is an error, not a silent slowdown."""
    assert tokenizer_module.MergeTable is not None
    assert make_tokenizer(ENGLISH_MERGES).compiled


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=CHARACTERS, max_size=300))
@example("a" * 200)  # one pre-token longer than the loop's stack buffer: the heap path
@example(" " * 70 + "the" + "\n" * 3)
def test_compiled_and_python_loops_encode_alike(text):
    build = lambda: make_tokenizer(ENGLISH_MERGES + [(b"a", b"a"), (b"aa", b"aa")], [EOT])  # noqa: E731
    compiled, python = build(), python_loop(build)
    assert compiled.compiled
    assert compiled.encode(text) == python.encode(text)


@pytest.mark.slow
@needs_compiled
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("thea in\u00e9"), min_size=60, max_size=3000))
@example("a" * 5000)
@example(" " * 3000)
def test_long_pre_tokens_merge_alike(word):
    """Pre-tokens over 64 bytes take the compiled loop's priority-queue path: same merges, same order."""
    tokenizer = make_tokenizer(ENGLISH_MERGES + [(b"a", b"a"), (b"aa", b"aa"), (b"aaaa", b"aaaa")])
    assert tokenizer._compiled.merge(word) == tokenizer._bpe(word)


def test_a_very_long_run_of_one_letter():
    """400K identical letters in one pre-token (the scan per merge would take minutes; the queue, ms)."""
    tokenizer = make_tokenizer([(b"a", b"a"), (b"aa", b"aa"), (b"aaaa", b"aaaa")])
    if not tokenizer.compiled:
        pytest.skip("the Python loop scans once per merge: far too slow at this length")
    ids = tokenizer.encode("a" * 400_003)
    eight, three = tokenizer.encode("a" * 8)[0], tokenizer.encode("aaa")
    assert ids == [eight] * 50_000 + three


@needs_compiled
def test_sparse_large_ids_and_repeated_pairs():
    """Ids need not be contiguous or small, and a pair listed twice keeps its first (lower) rank."""
    vocab = {70_000 + i: bytes([i]) for i in range(256)} | {5: b"ab", 900_000: b"abc", 7: b"bc"}
    merges = [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"b")]
    text = "abc abcabc bcab"
    compiled = Tokenizer(vocab, merges)
    python = python_loop(lambda: Tokenizer(vocab, merges))
    assert compiled.encode(text) == python.encode(text)
    assert compiled.encode("abc") == [900_000]


@pytest.mark.slow
@needs_compiled
def test_gpt2_vocab_on_real_text():
    build = lambda: Tokenizer.from_files(shared("gpt2_vocab.json"), shared("gpt2_merges.txt"), [EOT])  # noqa: E731
    text = shared("corpus.en").read_text(encoding="utf-8")[:200_000]
    assert build().encode(text) == python_loop(build).encode(text)


@needs_compiled
def test_a_failed_rebuild_leaves_the_table_as_it_was():
    tokenizer = make_tokenizer(ENGLISH_MERGES)
    table = tokenizer._compiled
    before = table.merge(" the thing")
    with pytest.raises(ValueError, match="a rank has no entry in results"):
        table.__init__(list(range(256)), {(1, 2): 5}, [7])
    assert table.merge(" the thing") == before


@needs_compiled
def test_a_foreign_cache_entry_is_replaced_not_trusted():
    tokenizer = make_tokenizer(ENGLISH_MERGES)
    tokenizer._cache["xyz"] = [1, 2, 3]  # not a tuple: the compiled walk must not read it as one
    assert tokenizer.encode("xyz") == [ord("x"), ord("y"), ord("z")]


@needs_compiled
def test_unencodable_text_fails_the_same_way():
    """A lone surrogate has no UTF-8 form: both loops raise UnicodeEncodeError rather than guessing."""
    for tokenizer in (make_tokenizer(ENGLISH_MERGES), python_loop(lambda: make_tokenizer(ENGLISH_MERGES))):
        with pytest.raises(UnicodeEncodeError):
            tokenizer.encode("ab\ud800cd")
