"""`lmproject evaluate`: the command line over lmproject.evaluate's scoring. It reads the run's config as
plain YAML and its checkpoint as `fit` finds it (lmproject.lit.plain_config, lmproject.lit.run_config),
encodes the file with the run's tokenizer and scores the model (lmproject.nn) on the run's device, under
bf16 autocast when the run trains in bf16 on a device that has it: as one text with overlapping windows
(the default), or with --documents as lm-evaluation-harness's rolling loglikelihood of each document. It
does not import Lightning."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from lmproject.atomic import atomic_write, check_writable, naming_output
from lmproject.errors import ArgumentParser, UserError, run_cli
from lmproject.evaluate import encode_text_file, results, score, score_documents, split_documents, token_bytes
from lmproject.lit.plain_config import checkpoint_dir, data_section, read_run, tokenizer_dir
from lmproject.lit.run_config import add_run_arguments, checked_checkpoint, runs_on_cpu
from lmproject.nn import TransformerLM
from lmproject.precision import cpu_supports_bf16
from lmproject.tokenizer import EOS_TOKEN, Tokenizer
from lmproject.training.data import open_tokens
from lmproject.training.settings import DEFAULTS

AUTOCAST = {"bf16": torch.bfloat16, "16": torch.float16}  # Lightning precision's prefix -> autocast dtype


def main(argv: list[str]) -> int:
    """`lmproject evaluate ...` (argv without the command's name)."""
    return run_cli(lambda: _evaluate(argv), "lmproject")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="lmproject evaluate",
        allow_abbrev=False,
        description="Loss, perplexity and bits per byte on every token of a file. By default the file is one "
        "text, scored in windows every --stride tokens, each token once. With --documents it follows "
        "lm-evaluation-harness's rolling loglikelihood: documents split at <|endoftext|>, each scored alone "
        "with <|endoftext|> in front, in non-overlapping windows of the context length; only the documents' "
        "bytes count. Other --model.*/--data.*/--trainer.* arguments override the config, as for fit.",
    )
    add_run_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=Path, help="a UTF-8 text file, encoded with the run's tokenizer")
    source.add_argument("--tokens", type=Path, help="a token file (.npy) encoded with the run's tokenizer")
    windows = parser.add_mutually_exclusive_group()
    windows.add_argument(
        "--stride", type=int, help="tokens between window starts (default: context_length/2)"
    )
    windows.add_argument(
        "--documents",
        action="store_true",
        help="score each <|endoftext|>-separated document alone, as lm-eval's loglikelihood_rolling",
    )
    parser.add_argument("--batch_size", type=int, help="windows per forward (default: data.batch_size)")
    parser.add_argument("--output", type=Path, help="also write the results to this JSON file")
    return parser


def _evaluate(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    config, arch = read_run(args.config, rest)
    data, trainer = data_section(config), config.get("trainer") or {}
    context_length = arch.context_length
    if args.documents:
        stride = context_length
    else:
        stride = max(1, context_length // 2) if args.stride is None else args.stride
    batch_size = data.get("batch_size") if args.batch_size is None else args.batch_size
    if not 1 <= stride <= context_length:
        raise UserError(f"--stride must be between 1 and context_length={context_length}, got {stride}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch_size must be >= 1 (default: data.batch_size), got {batch_size}")
    if args.output is not None:
        check_writable(args.output)  # before the scoring, not after it
    path, checkpoint = checked_checkpoint(args.ckpt_path, arch, checkpoint_dir(config))
    tokenizer = Tokenizer.from_dir(tokenizer_dir(data))
    if tokenizer.vocab_size > arch.vocab_size:
        raise UserError(
            f"{tokenizer_dir(data)}: the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
            f"vocab_size={arch.vocab_size}: not the tokenizer this model was trained with"
        )
    if args.text is not None:
        tokens, size = encode_text_file(tokenizer, args.text), args.text.stat().st_size
    else:
        tokens = open_tokens(args.tokens, data.get("dtype"))
        size = token_bytes(tokens, tokenizer, args.tokens)
    source = args.text or args.tokens
    documents = None
    if args.documents:
        documents, eos_id, size = _split(tokens, size, tokenizer, tokenizer_dir(data), source)
    elif len(tokens) < 2:
        raise UserError(f"{source}: {len(tokens)} token(s): too short to score (at least 2 are needed)")

    model = TransformerLM(arch, attention=(config.get("model") or {}).get("attention", DEFAULTS.attention))
    model.load_state_dict({name.removeprefix("model."): t for name, t in checkpoint["state_dict"].items()})
    on_cpu = runs_on_cpu(trainer)
    if on_cpu:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise UserError(
            f"trainer.accelerator={trainer.get('accelerator')}: no GPU here (use --trainer.accelerator cpu)"
        )
    model = model.to(device).eval()
    autocast = AUTOCAST.get(str(trainer.get("precision")).split("-")[0])
    if autocast is torch.bfloat16 and on_cpu and not cpu_supports_bf16():
        autocast = None  # as fit: float32 on a CPU without native bfloat16
    if documents is None:
        nats = score(model, tokens, stride, batch_size, autocast, progress=True)
        report = results(nats, len(tokens) - 1, size, stride, str(path))
    else:
        nats = score_documents(model, documents, eos_id, batch_size, autocast, progress=True)
        scored = sum(len(document) for document in documents)
        report = results(nats, scored, size, stride, str(path), documents=len(documents))
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        with naming_output(f"--output {args.output}"), atomic_write(args.output) as file:
            file.write(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _split(
    tokens: np.ndarray, size: int, tokenizer: Tokenizer, tokenizer_dir: Path, source: Path
) -> tuple[list[np.ndarray], int, int]:
    """--documents: the documents between <|endoftext|> ids, that id, and the documents' bytes (`size` less
    the separators')."""
    if EOS_TOKEN not in tokenizer.special_tokens:
        raise UserError(f"--documents: the tokenizer in {tokenizer_dir} has no {EOS_TOKEN} to split at")
    eos_id = tokenizer.encode(EOS_TOKEN)[0]
    documents = split_documents(tokens, eos_id)
    if not documents:
        raise UserError(f"{source}: no documents between the {EOS_TOKEN} separators")
    separators = int(np.count_nonzero(np.asarray(tokens) == eos_id))
    return documents, eos_id, size - separators * len(EOS_TOKEN.encode("utf-8"))
