"""`lmproject-bpe` (also `python -m lmproject.tokenizer`): train a BPE tokenizer, encode files, inspect one.

Usage:
  lmproject-bpe train INPUT --vocab-size N [--special-token TOK ...] --out DIR [--workers N]
  lmproject-bpe encode --tokenizer DIR INPUT OUTPUT.npy [--workers N]
  lmproject-bpe inspect --tokenizer DIR [--text FILE] [--top K]
  lmproject-bpe export --tokenizer DIR --out FILE.json

train and encode take --replace-invalid-utf8 to replace bad bytes with U+FFFD instead of stopping.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from lmproject.atomic import naming_output
from lmproject.errors import ArgumentParser, UserError, run_cli, utf8_argument
from lmproject.tokenizer.encode_file import encode_file, token_dtype
from lmproject.tokenizer.files import iter_text_blocks
from lmproject.tokenizer.hf_json import save_tokenizer_json
from lmproject.tokenizer.tokenizer import Tokenizer
from lmproject.tokenizer.train import train_bpe

PROG = "lmproject-bpe"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lmproject-bpe`: bad input exits with status 2 and a one-line error."""
    return run_cli(lambda: _run(argv), PROG)


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    return args.command(args)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Byte-level BPE: train, encode, inspect, export.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a tokenizer on a UTF-8 text file")
    train.add_argument("input", type=Path, help="training text (UTF-8)")
    train.add_argument(
        "--vocab-size", type=int, required=True, help="total vocab: 256 bytes + specials + merges"
    )
    train.add_argument(
        "--special-token", action="append", default=[], metavar="TOK", help="a special token (repeatable)"
    )
    train.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    _add_common(train)
    train.set_defaults(command=_train)

    encode = commands.add_parser("encode", help="encode a text file into a .npy array of token ids")
    encode.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory")
    encode.add_argument("input", type=Path, help="text to encode (UTF-8)")
    encode.add_argument("output", type=Path, help="output .npy file (uint16, or uint32 above 65,536 tokens)")
    _add_common(encode)
    encode.set_defaults(command=_encode)

    inspect = commands.add_parser("inspect", help="show a tokenizer's vocab, merges and compression")
    inspect.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory")
    inspect.add_argument("--text", type=Path, help="a text file to measure compression (bytes per token) on")
    inspect.add_argument("--top", type=_positive_int, default=10, help="how many tokens and merges to list")
    inspect.set_defaults(command=_inspect)

    export = commands.add_parser("export", help="write a tokenizer as one Hugging Face tokenizer.json file")
    export.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory")
    export.add_argument("--out", type=Path, required=True, help="the tokenizer.json file to write")
    export.set_defaults(command=_export)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    parser.add_argument(
        "--replace-invalid-utf8",
        action="store_true",
        help="replace bad UTF-8 with U+FFFD instead of failing",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _check_output_folder(out: Path) -> None:
    """Refuse an --out folder that could not be written (under a file, read-only) before any work, by
    creating and removing a temporary file in it or in the nearest folder that exists above it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    existing = next(folder for folder in (out, *out.resolve().parents) if folder.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a directory")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise UserError(f"--out {out}: cannot write in {existing} ({err.strerror or err})") from None


def _train(args: argparse.Namespace) -> int:
    for token in args.special_token:
        utf8_argument(token, "--special-token")
    _check_output_folder(args.out)
    started = time.perf_counter()
    errors = "replace" if args.replace_invalid_utf8 else "strict"
    vocab, merges = train_bpe(
        args.input, args.vocab_size, args.special_token, num_workers=args.workers, errors=errors
    )
    with naming_output(args.out):
        Tokenizer(vocab, merges, args.special_token).save(args.out)
    seconds = time.perf_counter() - started
    print(f"wrote {args.out}: {len(vocab):,} tokens, {len(merges):,} merges in {seconds:.1f} s")
    return 0


def _encode(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_dir(args.tokenizer)
    started = time.perf_counter()
    errors = "replace" if args.replace_invalid_utf8 else "strict"
    count = encode_file(tokenizer, args.input, args.output, num_workers=args.workers, errors=errors)
    seconds = time.perf_counter() - started
    size = os.path.getsize(args.input)
    print(
        f"wrote {args.output}: {count:,} tokens ({token_dtype(tokenizer).name}), "
        f"{_bytes_per_token(size, count)}, {size / 1e6 / max(seconds, 1e-9):.1f} MB/s"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_dir(args.tokenizer)
    if args.text is not None:  # encoded first: a file that is not UTF-8 stops before any of the report
        size = _text_size(args.text)
        count = sum(1 for _ in tokenizer.encode_iterable(_blocks_with_progress(args.text, size)))
    merges, top = tokenizer.merges, args.top
    print(f"tokenizer: {args.tokenizer}")
    print(f"vocab size: {len(tokenizer.vocab):,} (largest id {tokenizer.vocab_size - 1})")
    print(f"merges: {len(merges):,}")
    print(f"special tokens: {', '.join(map(repr, tokenizer.special_tokens)) or 'none'}")
    loop = "compiled (_merge.c)" if tokenizer.compiled else "Python (the C extension is not built: slower)"
    print(f"encoder merge loop: {loop}")
    specials = {token.encode("utf-8") for token in tokenizer.special_tokens}
    longest = sorted((t for t in tokenizer.vocab.values() if t not in specials), key=len, reverse=True)[:top]
    print(f"longest tokens: {', '.join(_show(token) for token in longest)}")
    print(f"first merges: {', '.join(f'{_show(a)}+{_show(b)}' for a, b in merges[:top])}")
    print(f"last merges: {', '.join(f'{_show(a)}+{_show(b)}' for a, b in merges[-top:])}")
    if args.text is not None:
        ratio = _bytes_per_token(size, count)
        print(f"compression on {args.text}: {size:,} bytes, {count:,} tokens, {ratio}")
    return 0


def _export(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_dir(args.tokenizer)
    with naming_output(args.out):
        save_tokenizer_json(args.out, tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
    print(f"wrote {args.out}: {len(tokenizer.vocab):,} tokens, {len(tokenizer.merges):,} merges")
    return 0


def _text_size(path: Path) -> int:
    """The size of a text file to read, with the same errors as `train` and `encode` give."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    try:
        return path.stat().st_size
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None


def _blocks_with_progress(path: Path, size: int) -> Iterator[str]:
    """The file's text in blocks, with a progress bar for files large enough to take a while."""
    with tqdm(
        total=size, unit="B", unit_scale=True, desc=f"encode {path.name}", disable=size < 1 << 24
    ) as bar:
        for block in iter_text_blocks(path):
            bar.update(len(block.encode("utf-8")))
            yield block


def _bytes_per_token(size: int, count: int) -> str:
    return f"{size / count:.2f} bytes/token" if count else "no tokens (empty text)"


def _show(token: bytes) -> str:
    """A token as a readable quoted string (bytes that are not UTF-8 shown as \\x escapes)."""
    return repr(token.decode("utf-8", errors="backslashreplace"))
