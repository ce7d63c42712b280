"""Byte-level BPE encoding and decoding with a trained (or GPT-2's) vocab and merge list.

Encoding cuts the text at special tokens (longest first), cuts each piece into pre-tokens with the GPT-2
regex, and turns each pre-token into ids by applying the merges in rank order to its UTF-8 bytes. Natural
text repeats its pre-tokens, so the ids of each distinct pre-token are cached: most of the text costs one
regex match and one dict lookup per pre-token, and the merge loop only runs for new ones
(`pretokenize.find_pretokens` takes a faster path for pure-ASCII text). The merge loop is `_bpe` below;
_merge.c is the same loop compiled, used when the install could build it (it needs a C compiler).
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from pathlib import Path

import regex

from lmproject.atomic import atomic_write, temp_folder
from lmproject.errors import UserError
from lmproject.tokenizer.files import (
    load_merges,
    load_vocab,
    read_text,
    save_merges,
    save_vocab,
)
from lmproject.tokenizer.hf_json import TOKENIZER_JSON, load_tokenizer_json
from lmproject.tokenizer.pretokenize import (
    PRETOKEN_RE,
    find_pretokens,
    special_token_re,
    validate_special_tokens,
)

try:
    from lmproject.tokenizer._merge import MergeTable
except ImportError:  # installed without a C compiler: Tokenizer._bpe does the same work in Python
    MergeTable = None

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
SPECIAL_TOKENS_FILE = "special_tokens.json"
EOS_TOKEN = "<|endoftext|>"  # the end-of-document token of GPT-2 and the CS336 data: sampling stops at it
_MAX_ID = 2**32 - 2  # ids are stored in 32 bits (uint32 .npy files, _merge.c), one value kept as a marker
_NOT_A_MERGE = 1 << 62  # above every rank; an int, since min() over ints alone is faster than with inf
_STREAM_BLOCK = 1 << 16  # characters that encode_iterable gathers before encoding


SPECIAL_SHAPE = regex.compile(r"<\|[^\s|]+\|>")


def implied_special_tokens(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]) -> list[str]:
    """The vocab entries shaped like `<|endoftext|>` that no merge produces, in id order."""
    merged = {left + right for left, right in merges}
    found = []
    for _, token in sorted(vocab.items()):
        text = token.decode("utf-8", errors="replace")
        if token not in merged and SPECIAL_SHAPE.fullmatch(text):
            found.append(text)
    return found


class Tokenizer:
    """A byte-level BPE tokenizer: `encode(text) -> ids`, `decode(ids) -> text`.

    `vocab` maps ids to token bytes and must contain the 256 single bytes and every merge result; `merges`
    lists the (left, right) pairs in the order they were learned. Special tokens are kept whole, matched
    longest first; one missing from the vocab gets the next free id. Text that merely looks like a special
    token (say `<|endoftext|>` when no special tokens are configured) is encoded as ordinary text.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
        *,
        cache_entries: int = 1 << 17,
    ) -> None:
        self.special_tokens = validate_special_tokens(special_tokens)
        self.vocab = dict(vocab)
        self.merges = list(merges)
        id_of = {token: token_id for token_id, token in self.vocab.items()}
        if len(id_of) != len(self.vocab):
            raise ValueError("the vocab maps two ids to the same bytes")
        out_of_range = [token_id for token_id in self.vocab if not 0 <= token_id <= _MAX_ID]
        if out_of_range:
            raise ValueError(f"token id {out_of_range[0]} is outside 0..{_MAX_ID}")
        for token in self.special_tokens:
            if token.encode("utf-8") not in id_of:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = token.encode("utf-8")
                id_of[self.vocab[new_id]] = new_id
        self._special_ids = {token: id_of[token.encode("utf-8")] for token in self.special_tokens}
        self._special_re = special_token_re(self.special_tokens)
        missing = [byte for byte in range(256) if bytes([byte]) not in id_of]
        if missing:
            raise ValueError(f"the vocab lacks single-byte tokens, first {bytes([missing[0]])!r}")
        self._byte_ids = [id_of[bytes([byte])] for byte in range(256)]
        self._merge_ranks: dict[tuple[int, int], int] = {}  # (left id, right id) -> rank
        self._merge_results: list[int] = []  # rank -> merged id
        for rank, (left, right) in enumerate(self.merges):
            ids = [id_of.get(token) for token in (left, right, left + right)]
            if None in ids:
                raise ValueError(f"merge {rank + 1} ({left!r}, {right!r}) involves a token not in the vocab")
            self._merge_ranks.setdefault((ids[0], ids[1]), rank)
            self._merge_results.append(ids[2])
        self._cache = _PretokenCache(self._bpe, cache_entries)
        self._compiled = (
            None if MergeTable is None else MergeTable(self._byte_ids, self._merge_ranks, self._merge_results)
        )
        self.compiled = self._compiled is not None  # whether encoding runs _merge.c's loops

    @classmethod
    def from_files(
        cls,
        vocab_path: str | os.PathLike[str],
        merges_path: str | os.PathLike[str],
        special_tokens: list[str] | None = None,
    ) -> Tokenizer:
        """Load GPT-2-format vocab.json and merges.txt (GPT-2's own files included)."""
        vocab, merges = load_vocab(vocab_path), load_merges(merges_path)
        return cls._from_parts(vocab, merges, special_tokens, f"{vocab_path} and {merges_path}")

    @classmethod
    def _from_parts(cls, vocab: dict, merges: list, specials: list[str] | None, files: str) -> Tokenizer:
        try:
            return cls(vocab, merges, specials)
        except ValueError as err:
            raise UserError(f"{files} do not fit together: {err}") from None

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer directory written by `save` (vocab.json, merges.txt, special_tokens.json), or one
        that holds only a Hugging Face tokenizer.json.

        Without special_tokens.json (GPT-2's own files have none, and hold `<|endoftext|>` in vocab.json),
        the vocab entries shaped `<|...|>` that no merge produces are the special tokens, with a warning
        that says so: encoding them as plain text would drop every document separator of a corpus.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"{directory}: not a directory (expected {VOCAB_FILE} and {MERGES_FILE} in it)")
        if not (directory / VOCAB_FILE).exists() and (directory / TOKENIZER_JSON).is_file():
            try:
                return cls(*load_tokenizer_json(directory / TOKENIZER_JSON))
            except ValueError as err:
                raise UserError(f"{directory / TOKENIZER_JSON}: {err}") from None
        specials_path = directory / SPECIAL_TOKENS_FILE
        if specials_path.exists():
            try:
                special_tokens = json.loads(read_text(specials_path))
            except json.JSONDecodeError as err:
                raise UserError(f"{specials_path}: line {err.lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(special_tokens, list):
                raise UserError(f"{specials_path}: expected a JSON list of strings")
            special_tokens = validate_special_tokens(special_tokens, f"{specials_path}: special token")
            return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE, special_tokens)
        vocab_path, merges_path = directory / VOCAB_FILE, directory / MERGES_FILE
        vocab, merges = load_vocab(vocab_path), load_merges(merges_path)
        special_tokens = implied_special_tokens(vocab, merges)
        if special_tokens:
            warnings.warn(
                f"{directory}: no {SPECIAL_TOKENS_FILE}; treating {', '.join(special_tokens)} of "
                f"{VOCAB_FILE} as special tokens (GPT-2's convention; write the file to choose otherwise)",
                stacklevel=2,
            )
        return cls._from_parts(vocab, merges, special_tokens, f"{vocab_path} and {merges_path}")

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write vocab.json, merges.txt and special_tokens.json into `directory` (created if missing).

        All three are written to a temp folder inside `directory` first and only then renamed into place,
        so a failure while writing leaves the previous set whole rather than a mix of old and new files, and
        no folder that it made for them.
        """
        directory = Path(directory)
        made = next(
            (folder for folder in reversed((directory, *directory.parents)) if not folder.exists()), None
        )
        directory.mkdir(parents=True, exist_ok=True)
        try:
            staging = temp_folder(directory / VOCAB_FILE)
            try:
                save_vocab(self.vocab, staging / VOCAB_FILE)
                save_merges(self.merges, staging / MERGES_FILE)
                with atomic_write(staging / SPECIAL_TOKENS_FILE) as file:
                    json.dump(self.special_tokens, file, ensure_ascii=False)
                    file.write("\n")
                for name in (VOCAB_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE):
                    os.replace(staging / name, directory / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            if made is not None:  # the folders it made for the failed set (e.g. a full disk) go too
                shutil.rmtree(made, ignore_errors=True)
            raise

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the size of an embedding table that holds every id."""
        return max(self.vocab) + 1

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`."""
        if not isinstance(text, str):
            raise TypeError(_not_text(text, "encode"))
        ids: list[int] = []
        if self._special_re is None:
            self._encode_ordinary(text, ids)
            return ids
        start = 0
        for match in self._special_re.finditer(text):
            self._encode_ordinary(text[start : match.start()], ids)
            ids.append(self._special_ids[match.group()])
            start = match.end()
        self._encode_ordinary(text[start:], ids)
        return ids

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Yield the ids of the concatenated texts (a file's lines, say) without holding them all.

        Texts are gathered into blocks of about 64K characters; each block is encoded except for the
        tail that more text could still change (a possible start of a special token, and the pre-tokens
        near the end), which is carried over to the next.
        """
        pending: list[str] = []
        pending_length = 0
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(_not_text(text, "encode_iterable"))
            pending.append(text)
            pending_length += len(text)
            if pending_length < _STREAM_BLOCK:
                continue  # gather short texts (lines, say) to encode them in bulk
            joined = "".join(pending)
            done = self._stable_prefix_length(joined)
            yield from self.encode(joined[:done])
            pending, pending_length = [joined[done:]], len(joined) - done
        yield from self.encode("".join(pending))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD.

        An id that is not an integer (a float, a bool) or not in the vocab is a ValueError naming it.
        """
        ids = list(ids)
        try:
            if bool in map(type, ids):
                raise TypeError  # bools are ints to Python, but not token ids
            data = b"".join(map(self.vocab.__getitem__, map(operator.index, ids)))
        except (KeyError, TypeError):
            raise ValueError(self._bad_id_message(ids)) from None
        return data.decode("utf-8", errors="replace")

    def _bad_id_message(self, ids: list) -> str:
        """Why decoding `ids` failed, naming the first bad id."""
        for token_id in ids:
            try:
                if isinstance(token_id, bool):
                    raise TypeError
                if operator.index(token_id) not in self.vocab:
                    return f"token id {token_id} is not in the vocab (0..{self.vocab_size - 1})"
            except TypeError:
                return f"token id {token_id!r} is not an integer ({type(token_id).__name__})"
        raise AssertionError("decode failed on valid ids")

    def __reduce__(self):
        """Pickle (for worker processes) as the definition only, not the cache."""
        return (type(self), (self.vocab, self.merges, self.special_tokens))

    def _encode_ordinary(self, text: str, ids: list[int]) -> None:
        """Append the ids of text that holds no special token: each pre-token's from the cache, or from
        the merge loop on a miss. _merge.c's `extend` does exactly this loop, compiled."""
        if self._compiled is not None:
            self._compiled.extend(ids, find_pretokens(text), self._cache, self._cache.max_entries)
        else:
            ids.extend(chain.from_iterable(map(self._cache.__getitem__, find_pretokens(text))))

    def _bpe(self, pretoken: str) -> tuple[int, ...]:
        """Merge a pre-token's bytes: repeatedly join the adjacent pair whose merge was learned first.

        Equal pairs are joined leftmost first, which gives the same result as joining them all at once:
        a merge that uses the new token has a higher rank, so it cannot come in between.
        Each join rescans the pre-token, so the cost grows with the square of its length: nothing for
        the words of natural text, but seconds for a run of tens of thousands of identical letters. _merge.c
        scans too up to 64 bytes, and above that finds the same joins with a priority queue (milliseconds
        for such runs; bench/RESULTS.md).
        """
        ids = list(map(self._byte_ids.__getitem__, pretoken.encode("utf-8")))
        if len(ids) < 2:
            return tuple(ids)
        rank_of, merged_id = self._merge_ranks.get, self._merge_results
        # ranks[i] is the rank of the pair ids[i], ids[i + 1].
        ranks = list(map(rank_of, zip(ids, ids[1:], strict=False), repeat(_NOT_A_MERGE)))
        rank = min(ranks)
        while rank != _NOT_A_MERGE:
            at = ranks.index(rank)
            new = ids[at] = merged_id[rank]
            del ids[at + 1], ranks[at]
            # Only the pairs on either side of the new token changed.
            if at:
                ranks[at - 1] = rank_of((ids[at - 1], new), _NOT_A_MERGE)
            if at < len(ranks):
                ranks[at] = rank_of((new, ids[at + 1]), _NOT_A_MERGE)
            elif not ranks:
                break
            rank = min(ranks)
        return tuple(ids)

    def _stable_prefix_length(self, text: str) -> int:
        """How much of `text` encodes the same whatever text follows it."""
        end, segment_start = len(text), 0
        if self._special_re is not None:
            # From the first suffix that more text could complete into a special token, nothing is final.
            longest = max(map(len, self.special_tokens))
            for start in range(max(0, end - longest + 1), end):
                suffix = text[start:]
                if any(
                    len(token) > len(suffix) and token.startswith(suffix) for token in self.special_tokens
                ):
                    end = start
                    break
            # Special tokens that start before that are final, even one that reaches past it.
            for match in self._special_re.finditer(text):
                if match.start() >= end:
                    break
                segment_start = match.end()
            if segment_start >= end:
                return segment_start
        return _last_safe_cut(text, segment_start, end)


def _not_text(value: object, method: str) -> str:
    binary = isinstance(value, bytes)
    hint = " (a file opened in binary mode? open it with encoding='utf-8')" if binary else ""
    return f"Tokenizer.{method} takes text (str), got {type(value).__name__}{hint}"


def _last_safe_cut(text: str, start: int, end: int) -> int:
    """The last offset in text[start:end] where the text can be cut without changing its pre-tokens (nor
    depending on what comes after `end`), or `start` if there is none.

    A cut must fall between pre-tokens, and not inside a whitespace run: a run splits differently when it
    ends the text (`\\s+(?!\\S)`). Two cheap tests usually find a cut in the last few characters:
    - between two ASCII graphic characters of different kinds (letter, digit, other) there is always a
      pre-token boundary, unless the first is an apostrophe ("'s");
    - right before a lone whitespace character between two non-whitespace ones ("a b", "a\\nb"): no
      pre-token holds a non-space followed by a space, and the lone one starts the next pre-token (" b")
      or is one on its own ("\\n"), whether or not the text goes on after it.
    Otherwise, the pre-tokens tell.
    """
    for cut in range(end - 1, max(start, end - 4096), -1):
        before, after = _ASCII_KIND.get(text[cut - 1]), _ASCII_KIND.get(text[cut])
        if before and after and before != after and text[cut - 1] != "'":
            return cut
        if after is None and _LONE_WHITESPACE.match(text, cut, end):
            return cut
    safe = start
    for match in PRETOKEN_RE.finditer(text, start, end):
        cut = match.start()
        if cut > start and not (_WHITESPACE.match(text, cut - 1) or _WHITESPACE.match(text, cut)):
            safe = cut
    return safe


_WHITESPACE = regex.compile(r"\s")
_LONE_WHITESPACE = regex.compile(r"(?<=\S)\s(?=\S)")
_ASCII_KIND = {chr(c): 1 if chr(c).isalpha() else 2 if chr(c).isdigit() else 3 for c in range(0x21, 0x7F)}


class _PretokenCache(dict):
    """Pre-token string -> ids, filled by BPE on a miss and emptied when full, so memory stays bounded."""

    def __init__(self, bpe, max_entries: int) -> None:
        super().__init__()
        self._bpe = bpe
        self.max_entries = max_entries

    def __missing__(self, pretoken: str) -> tuple[int, ...]:
        if len(self) >= self.max_entries:
            self.clear()
        ids = self[pretoken] = self._bpe(pretoken)
        return ids
