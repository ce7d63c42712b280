"""tokenizer.json, the Hugging Face `tokenizers` format, written and read without that library.

What our Tokenizer does, spelled in that format: a byte-level BPE model whose vocab and merges use GPT-2's
byte alphabet (lmproject.tokenizer.files), the GPT-2 regex as a Split pre-tokenizer followed by a ByteLevel
one that only maps bytes to that alphabet, a ByteLevel decoder, no normalizer and no post-processor (no BOS
is added), and our special tokens as added special tokens (matched in the raw text before anything else,
never merged). transformers' `AutoTokenizer` then gives our ids (tests/test_tokenizer_hf_json.py).

Reading accepts only files that mean the same thing, so that the ids never silently differ: anything else
(a normalizer, another regex, byte fallback, added tokens that strip spaces...) is a UserError naming the
field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lmproject.atomic import atomic_write
from lmproject.errors import UserError
from lmproject.tokenizer.files import CHAR_TO_BYTE, read_text, str_to_token, token_to_str
from lmproject.tokenizer.pretokenize import GPT2_PATTERN

TOKENIZER_JSON = "tokenizer.json"

# GPT-2's regex as our pretokenize.py writes it, and as GPT-2's own tokenizer.json files write it.
_GPT2_SPELLINGS = (
    GPT2_PATTERN,
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
)


Vocab = Mapping[int, bytes]
Merges = Sequence[tuple[bytes, bytes]]


def tokenizer_json(vocab: Vocab, merges: Merges, special_tokens: Sequence[str]) -> dict[str, Any]:
    """The tokenizer.json document of a byte-level BPE (a JSON-ready dict): its vocabulary (id -> bytes),
    merges in order, and special tokens."""
    specials = {token.encode("utf-8"): token for token in special_tokens}
    added = [
        {"id": token_id, "content": specials[token], "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for token_id, token in sorted(vocab.items())
        if token in specials
    ]  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": GPT2_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token_to_str(token): token_id for token_id, token in sorted(vocab.items())},
            "merges": [f"{token_to_str(left)} {token_to_str(right)}" for left, right in merges],
        },
    }


def save_tokenizer_json(
    path: str | os.PathLike[str], vocab: Vocab, merges: Merges, special_tokens: Sequence[str]
) -> None:
    """Write a byte-level BPE as a tokenizer.json file (atomically)."""
    with atomic_write(path) as file:
        json.dump(tokenizer_json(vocab, merges, special_tokens), file, ensure_ascii=False, indent=1)
        file.write("\n")


def load_tokenizer_json(
    path: str | os.PathLike[str],
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], list[str]]:
    """(vocab, merges, special tokens) of a byte-level BPE tokenizer.json, what `Tokenizer(...)` takes.

    Added tokens become special tokens at their own ids. A file whose tokens would differ from ours is a
    UserError naming the field."""
    try:
        document = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise UserError(f"{path}: not a tokenizer.json (no model)")
    problem = _malformed(document) or _unsupported(document)
    if problem:
        raise UserError(f"{path}: {problem}: only GPT-2-style byte-level BPE can be read")
    model = document["model"]
    vocab: dict[int, bytes] = {}
    special_tokens = []
    for entry in document.get("added_tokens") or []:
        content, token_id = entry.get("content"), entry.get("id")
        if any(entry.get(flag) for flag in ("lstrip", "rstrip", "single_word")):
            raise UserError(f"{path}: added_tokens: {content!r} strips spaces or matches whole words only")
        vocab[token_id] = content.encode("utf-8")
        special_tokens.append(content)
    seen: set[int] = set()
    for token, token_id in model.get("vocab", {}).items():
        if token_id in seen:
            raise UserError(f"{path}: model.vocab: id {token_id} is given to two tokens")
        seen.add(token_id)
        if token_id in vocab:
            continue  # an added token: its own text, whatever the vocab spells
        if not all(char in CHAR_TO_BYTE for char in token):
            raise UserError(f"{path}: model.vocab: token {token!r} is not in GPT-2's byte alphabet")
        vocab[token_id] = str_to_token(token)
    merges = [_merge(item, path) for item in model.get("merges", [])]
    return vocab, merges, special_tokens


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(document: dict[str, Any]) -> str | None:
    """The first field of a tokenizer.json with the wrong JSON type, as a phrase, or None (so that reading
    the rest cannot fail on a type)."""
    model = document["model"]
    vocab, merges = model.get("vocab", {}), model.get("merges", [])
    if not isinstance(vocab, dict) or not all(_is_id(token_id) for token_id in vocab.values()):
        return "model.vocab is not an object of token: integer id"
    if not isinstance(merges, list):
        return "model.merges is not a list"
    added = document.get("added_tokens") or []
    if not isinstance(added, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("content"), str) and _is_id(entry.get("id"))
        for entry in added
    ):
        return "added_tokens is not a list of objects with a string content and an integer id"
    for field in ("normalizer", "pre_tokenizer", "decoder"):
        if document.get(field) is not None and not isinstance(document[field], dict):
            return f"{field} is not an object"
    return None


def _unsupported(document: dict[str, Any]) -> str | None:
    """The first field of a tokenizer.json that our Tokenizer cannot reproduce, as a phrase, or None."""
    model = document["model"]
    if model.get("type") != "BPE":
        return f"model.type is {model.get('type')!r}"
    for field in (
        "byte_fallback",
        "ignore_merges",
        "dropout",
        "continuing_subword_prefix",
        "end_of_word_suffix",
    ):
        if model.get(field):
            return f"model.{field} is {model[field]!r}"
    if document.get("normalizer"):
        return f"normalizer {document['normalizer'].get('type')!r}"
    if not _is_gpt2_pretokenizer(document.get("pre_tokenizer")):
        return "pre_tokenizer is not GPT-2's regex + ByteLevel"
    decoder = document.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        return f"decoder is {decoder.get('type')!r}, not ByteLevel"
    return None


def _is_gpt2_pretokenizer(pre: dict[str, Any] | None) -> bool:
    """ByteLevel with its own (GPT-2) regex, or our Split(GPT-2 regex) + ByteLevel without one; no prefix
    space either way."""
    if not pre:
        return False
    if pre.get("type") == "ByteLevel":
        return pre.get("use_regex", True) and not pre.get("add_prefix_space")
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        return False
    if [step.get("type") for step in steps] != ["Split", "ByteLevel"]:
        return False
    split, byte_level = steps
    pattern = split.get("pattern")
    return (
        isinstance(pattern, dict)
        and pattern.get("Regex") in _GPT2_SPELLINGS
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and not byte_level.get("use_regex", True)
        and not byte_level.get("add_prefix_space")
    )


def _merge(item: str | list[str], path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """One merge, written "left right" (older files) or ["left", "right"] (newer ones)."""
    parts = item.split(" ") if isinstance(item, str) else item
    if (
        not isinstance(parts, list)
        or len(parts) != 2
        or not all(isinstance(part, str) and all(char in CHAR_TO_BYTE for char in part) for part in parts)
    ):
        raise UserError(f"{path}: model.merges: {item!r} is not two tokens in GPT-2's byte alphabet")
    return str_to_token(parts[0]), str_to_token(parts[1])
