"""`lmproject export` and `lmproject import`: the command lines over lmproject.interop (hf_llama, gguf).
Export reads the run's config as plain YAML and its checkpoint as `fit` finds it (lmproject.lit.plain_config,
lmproject.lit.run_config); import saves the default training settings beside the imported architecture, so
the run directory it writes loads like any other. Neither imports Lightning: they start in about the time
torch takes to import."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors import SafetensorError

from lmproject.atomic import check_new_folder, check_writable, naming_output
from lmproject.errors import ArgumentParser, UserError, run_cli
from lmproject.interop.gguf import GGUF_DTYPES, export_gguf
from lmproject.interop.hf_llama import check_llama_expressible, export_folder, import_folder
from lmproject.lit.plain_config import checkpoint_dir, data_section, read_run, tokenizer_dir
from lmproject.lit.run_config import add_run_arguments, checked_checkpoint
from lmproject.precision import DTYPES
from lmproject.tokenizer import Tokenizer
from lmproject.tokenizer.hf_json import TOKENIZER_JSON
from lmproject.training.settings import default_settings


def export_main(argv: list[str]) -> int:
    """`lmproject export ...` (argv without the command's name)."""
    return run_cli(lambda: _export(argv), "lmproject")


def import_main(argv: list[str]) -> int:
    """`lmproject import ...` (argv without the command's name)."""
    return run_cli(lambda: _import(argv), "lmproject")


def _export(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="lmproject export",
        allow_abbrev=False,
        description="Write a checkpoint as a Hugging Face Llama folder (transformers, vLLM) or, with "
        "--format gguf, as one GGUF file for llama.cpp. Other --model.*/--data.*/--trainer.* arguments "
        "override the config, as for fit.",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--format",
        choices=["hf", "gguf"],
        default="hf",
        help="a Hugging Face folder, or a llama.cpp GGUF file",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the folder (hf) or .gguf file (gguf) to write; must not exist",
    )
    parser.add_argument(
        "--dtype",
        choices=list(dict.fromkeys([*DTYPES, *GGUF_DTYPES])),
        default="float32",
        help=f"the weights' dtype: {', '.join(DTYPES)} for hf; {', '.join(GGUF_DTYPES)} for gguf",
    )
    args, rest = parser.parse_known_args(argv)
    if args.dtype not in (GGUF_DTYPES if args.format == "gguf" else DTYPES):
        raise UserError(f"--dtype {args.dtype} is not available for --format {args.format}")
    if args.format == "gguf":
        check_writable(args.out, "--out")
        if args.out.exists():
            raise UserError(f"{args.out}: already exists: choose another output file or remove it")
    else:
        check_new_folder(args.out)
    config, arch = read_run(args.config, rest)
    check_llama_expressible(arch)  # before the checkpoint: its error would only say the model differs
    path, checkpoint = checked_checkpoint(args.ckpt_path, arch, checkpoint_dir(config))
    weights = {name.removeprefix("model."): tensor for name, tensor in checkpoint["state_dict"].items()}
    tokenizer = Tokenizer.from_dir(tokenizer_dir(data_section(config)))
    write = export_gguf if args.format == "gguf" else export_folder
    with naming_output(args.out, also=(SafetensorError,)):
        write(arch, weights, tokenizer, args.out, args.dtype)
    print(f"wrote {args.out} from {path} ({args.dtype})")
    return 0


def _import(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="lmproject import",
        allow_abbrev=False,
        description="Turn a Hugging Face Llama folder (config.json, *.safetensors, tokenizer.json) into a "
        "run directory for validate/predict/evaluate/fit --config RUN_DIR/config.yaml --ckpt_path last.",
    )
    parser.add_argument("source", type=Path, help="the Hugging Face folder")
    parser.add_argument("--out", type=Path, required=True, help="the run directory to write (must not exist)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise UserError(f"{args.source}: not a directory")
    check_new_folder(args.out)
    with naming_output(args.out):
        arch = import_folder(args.source, args.out, default_settings())
    if not (args.out / "tokenizer").is_dir():
        print(f"lmproject: {args.source} has no {TOKENIZER_JSON}: the run has no tokenizer", file=sys.stderr)
    print(
        f"wrote {args.out}: config.yaml, checkpoints/last.ckpt, "
        f"{arch.num_layers} layers x d_model {arch.d_model}, vocab {arch.vocab_size}"
    )
    return 0
