"""Id-for-id agreement with tiktoken, an independent BPE implementation, built offline from the same files."""

from __future__ import annotations

import pytest
from conftest import shared
from hypothesis import given, settings
from hypothesis import strategies as st

from lmproject.tokenizer import Tokenizer, train_bpe
from lmproject.tokenizer.pretokenize import GPT2_PATTERN

tiktoken = pytest.importorskip("tiktoken")

EOT = "<|endoftext|>"
WHITESPACE_HEAVY = (
    "  lead\n\n\n   \t x  y \r\n\r\n    z   \n\t\t\tindented  \u00a0nbsp \u3000wide\n \n  end   "
)


def as_tiktoken(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """A tiktoken Encoding with our vocab: tiktoken merges by the rank (id) of the joined token."""
    specials = {token.encode("utf-8") for token in tokenizer.special_tokens}
    return tiktoken.Encoding(
        "under-test",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={token: i for i, token in tokenizer.vocab.items() if token not in specials},
        special_tokens={
            token.decode("utf-8"): i for i, token in tokenizer.vocab.items() if token in specials
        },
    )


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_files(shared("gpt2_vocab.json"), shared("gpt2_merges.txt"), [EOT])


@pytest.fixture(scope="module")
def gpt2_tiktoken(gpt2) -> tiktoken.Encoding:
    return as_tiktoken(gpt2)


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    vocab, merges = train_bpe(shared("corpus.en"), 1000, [EOT], num_workers=1, progress=False)
    return Tokenizer(vocab, merges, [EOT])


def texts() -> dict[str, str]:
    files = ["corpus.en", "german.txt", "address.txt", "tinystories_sample.txt"]
    return {name: shared(name).read_text(encoding="utf-8") for name in files} | {
        "whitespace": WHITESPACE_HEAVY,
        "specials": f"{EOT}Once{EOT}{EOT} upon a time<|endoftext|\n{EOT}",
    }


@pytest.mark.parametrize("which", ["gpt2", "trained"])
def test_same_ids_as_tiktoken(which, request):
    ours = request.getfixturevalue(which)
    reference = as_tiktoken(ours)
    for name, text in texts().items():
        ids = ours.encode(text)
        assert ids == reference.encode(text, allowed_special="all"), name
        assert ours.decode(ids) == text


def test_gpt2_vocab_size_and_known_ids(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(EOT) == [50256]


# Letters, digits and marks from several scripts, whitespace of several kinds, punctuation, emoji, and
# the pieces of the special token; drawn from long-assigned Unicode so both regex engines agree on classes.
ALPHABET = list("aZé ß\n\t\r .,'!?-0123456789日本語дом١٢٣́ͅ\u00a0\u3000🙂✓") + ["'s", "'ll", "<|", "|>", EOT]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=60).map("".join))
def test_same_ids_as_tiktoken_on_random_text(gpt2, gpt2_tiktoken, text):
    assert gpt2.encode(text) == gpt2_tiktoken.encode(text, allowed_special="all")
