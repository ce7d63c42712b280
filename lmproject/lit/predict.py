"""`lmproject predict`: the sampling options, the prompt requests, and printing/JSONL-writing the completions.

Each prompt becomes one request: `num_samples` copies of the prompt sampled together by the model's
`predict_step` (lmproject.sampling.generate), seeded with `seed + prompt index`, so a rerun of the same
command gives the same text. Completions print to stdout as each request finishes; with one prompt and one
sample on a terminal they stream token by token instead. `--output` gets one JSON line per completion as soon
as its request finishes (under DDP: at the end, gathered from every rank), each line one write, so Ctrl-C (or
a kill) keeps every finished completion and never half a line; the file is checked for writing before any
sampling.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser

from lmproject.atomic import check_writable, naming_output
from lmproject.errors import UserError, check_regular_file, utf8_argument
from lmproject.nn import TransformerLM
from lmproject.sampling.config import SamplingConfig, SamplingError, memory_shortfall
from lmproject.settings import MAX_SEED
from lmproject.tokenizer import EOS_TOKEN, Tokenizer

PER_REQUEST = ("seed", "eos_id")  # the SamplingConfig settings predict sets itself: no flags of their own
DEFAULTS = {"dtype": "float32"}  # predict's defaults that differ from SamplingConfig's
UNKNOWN = "\ufffd".encode()  # a model's vocab may be larger than its tokenizer's: such ids print as �


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    return tokenizer.vocab.get(token, UNKNOWN)


def decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Text of sampled ids, tolerating ids the tokenizer does not have (a model vocab padded beyond it)."""
    return b"".join(token_bytes(tokenizer, token) for token in ids).decode("utf-8", errors="replace")


@dataclass
class PredictOptions:
    """The options of `lmproject predict` beyond the sampling settings.

    They are top-level flags (--prompt, ...), as are the sampling settings (--temperature, ...), which make
    the SamplingConfig `sampling` (add_predict_arguments).

    Args:
        prompt: one prompt text.
        prompts_file: a UTF-8 text file with one prompt per line (blank lines skipped).
        num_samples: completions per prompt.
        seed: sampling seed; prompt i is sampled with seed + i.
        output: JSONL file for the completions (prompt, completion, token counts, settings, seed).
        stream: print tokens as they are sampled (default: when one completion goes to a terminal).
        compiled_step: on the CPU, compile the decode step once (torch.compile,
            lmproject/sampling/compiled_step.py): faster per token after about 30 s of compiling, worth it
            for long or many completions; needs a C++ compiler. On a GPU each step replays a CUDA graph.
        sampling: the sampling settings every prompt shares (seed and eos_id are set per request).
    """

    prompt: str | None = None
    prompts_file: str | None = None
    num_samples: int = 1
    seed: int = 0
    output: str | None = None
    stream: bool | None = None
    compiled_step: bool = False
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(**DEFAULTS))

    @classmethod
    def from_config(cls, config: Any) -> PredictOptions:
        """The options from a parsed `lmproject predict` config, checked. A bad sampling setting is an
        error that names its flag, e.g. `predict: --top_p must be in (0, 1], got 0.0`."""
        shared = {f.name: config[f.name] for f in fields(SamplingConfig) if f.name not in PER_REQUEST}
        with _naming_flags():
            sampling = SamplingConfig(**shared)
        options = cls(
            **{f.name: config[f.name] for f in fields(cls) if f.name != "sampling"}, sampling=sampling
        )
        options.check()
        return options

    def check(self) -> None:
        """Refuse bad options before any model or checkpoint is loaded (the sampling settings are checked
        as the SamplingConfig is made)."""
        if (self.prompt is None) == (self.prompts_file is None):
            raise UserError("predict: give exactly one of --prompt or --prompts_file")
        if self.prompt is not None:
            utf8_argument(self.prompt, "predict: --prompt")
        if self.prompt is not None and not self.prompt.strip():
            shown = "empty" if not self.prompt else f"only whitespace ({self.prompt!r})"
            raise UserError(f"predict: --prompt is {shown}: give some text to continue")
        if self.prompts_file is not None and Path(self.prompts_file).is_dir():
            raise UserError(f"{self.prompts_file}: is a directory, expected a prompts file (one per line)")
        if self.prompts_file is not None:
            check_regular_file(self.prompts_file, "prompts file")
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise UserError(f"{self.prompts_file}: prompts file not found")
        if self.num_samples < 1:
            raise UserError(f"predict: --num_samples must be >= 1, got {self.num_samples}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"predict: --seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        if self.output is not None:
            check_writable(Path(self.output))
        self.prompts()  # an unreadable or empty prompts file fails here, before a model is loaded

    def check_model(self, model: TransformerLM, device: torch.device) -> None:
        """Refuse sampling settings this model cannot sample with (e.g. a window_slide beyond its context),
        and a request too large for the memory of `device` (where the model will sample), before any."""
        with _naming_flags():
            self.sampling.check(model)
        # a prompt longer than the context is mostly cropped: its length is not known before tokenizing
        positions = model.config.context_length + self.sampling.max_new_tokens
        dtype = self.sampling.torch_dtype or model.lm_head.weight.dtype
        shortfall = memory_shortfall(model.config, self.num_samples, positions, dtype, device)
        if shortfall:
            raise UserError(
                f"predict: --num_samples {self.num_samples} with --max_new_tokens "
                f"{self.sampling.max_new_tokens} {shortfall}: ask for fewer"
            )

    def prompts(self) -> list[str]:
        if self.prompt is not None:
            return [self.prompt]
        data = Path(self.prompts_file).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(
                f"{self.prompts_file}: not UTF-8 text (byte offset {err.start}: {err.reason})"
            ) from None
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"{self.prompts_file}: no prompts in the file (one prompt per line)")
        return prompts


def add_predict_arguments(parser: LightningArgumentParser) -> None:
    """The top-level flags of `lmproject predict`: PredictOptions' own, and each SamplingConfig setting
    but those set per request (--max_new_tokens, --temperature, ...), with predict's defaults."""
    parser.add_class_arguments(PredictOptions, nested_key=None, as_group=True, skip={"sampling"})
    parser.add_class_arguments(SamplingConfig, nested_key=None, as_group=True, skip=set(PER_REQUEST))
    parser.set_defaults(DEFAULTS)


@contextmanager
def _naming_flags() -> Iterator[None]:
    """A bad sampling setting as predict's error, naming its flag: `predict: --top_p must be in (0, 1]`."""
    try:
        yield
    except SamplingError as err:
        raise UserError(f"predict: --{err}") from None


def eos_id(tokenizer: Tokenizer) -> int | None:
    """The id of <|endoftext|> when the tokenizer has it as a special token."""
    return tokenizer.encode(EOS_TOKEN)[0] if EOS_TOKEN in tokenizer.special_tokens else None


def requests(options: PredictOptions, tokenizer: Tokenizer) -> list[dict[str, Any]]:
    """One request per prompt: what `LanguageModel.predict_step` samples. The SamplingConfig travels as a
    dict: Lightning's batch transfer refuses a frozen dataclass."""
    eos = eos_id(tokenizer)
    return [
        {"index": i, "prompt": text, "prompt_ids": tokenizer.encode(text), "num_samples": options.num_samples,
         "sampling": asdict(replace(options.sampling, seed=options.seed + i, eos_id=eos)),
         "compiled_step": options.compiled_step}
        for i, text in enumerate(options.prompts())
    ]  # fmt: skip


class TokenPrinter:
    """Prints a completion token by token, decoding UTF-8 incrementally (a character may span tokens)."""

    def __init__(self, tokenizer: Tokenizer, prompt: str):
        self.tokenizer, self.prompt, self.eos = tokenizer, prompt, eos_id(tokenizer)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token: int) -> None:
        self._start()
        if token != self.eos:
            sys.stdout.write(self.decoder.decode(token_bytes(self.tokenizer, token)))
            sys.stdout.flush()

    def _start(self) -> None:
        """Print the prompt before the first token."""
        if self.prompt is not None:
            sys.stdout.write(self.prompt)
            self.prompt = None

    def finish(self) -> None:
        """End the stream: the bytes of a character the completion cut off print as U+FFFD, as the JSONL
        has them, then a newline (the prompt alone for a completion of no tokens: --max_new_tokens 0)."""
        self._start()
        sys.stdout.write(self.decoder.decode(b"", final=True) + "\n")
        sys.stdout.flush()


class CompletionWriter(BasePredictionWriter):
    """Decodes each request's completions, prints them (unless streamed), and appends them to the JSONL
    file as the request finishes. Under DDP each rank samples its share of the prompts (with fewer prompts
    than ranks, some sample a copy of the last one): the ranks' completions are gathered at the end and
    rank 0 prints and writes each prompt's once, in prompt order."""

    def __init__(self, tokenizer: Tokenizer, options: PredictOptions, checkpoint: str | None):
        super().__init__(write_interval="batch")
        self.tokenizer, self.options, self.checkpoint = tokenizer, options, checkpoint
        self.written = 0
        self._fd: int | None = None
        self._gathered: list[dict[str, Any]] = []  # this rank's records, under DDP

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        records = [self._record(batch, sample, ids) for sample, ids in enumerate(prediction)]
        if trainer.world_size > 1:
            self._gathered.extend(records)
            return
        for record in records:
            self._emit(record, printed=pl_module.token_callback is None)

    def _record(self, request: dict[str, Any], sample: int, ids: list[int]) -> dict[str, Any]:
        sampling = request["sampling"]
        ended = bool(ids) and ids[-1] == sampling["eos_id"]
        return {
            "prompt": request["prompt"],
            "completion": decode(self.tokenizer, ids[:-1] if ended else ids),
            "prompt_tokens": len(request["prompt_ids"]),
            "completion_tokens": len(ids),
            "stopped_at_eos": ended,
            "sample": sample,
            "seed": sampling["seed"],
            "settings": {k: v for k, v in sampling.items() if k not in PER_REQUEST},
            "checkpoint": self.checkpoint,
            "index": request["index"],  # removed before writing: the order of the lines says it
        }

    def _emit(self, record: dict[str, Any], printed: bool) -> None:
        """Print one completion and append it to the JSONL file."""
        index = record.pop("index")
        if self.options.output is not None:
            with naming_output(f"--output {self.options.output}"):
                self._append(record)
        if printed:
            header = f"--- prompt {index + 1}, sample {record['sample'] + 1} ---"
            print(f"{header}\n{record['prompt']}{record['completion']}\n", flush=True)

    def _append(self, record: dict[str, Any]) -> None:
        """One JSON line at the end of the file. A failed write (a full disk) leaves the whole lines before
        it, and no file at all when it was the first."""
        if self._fd is None:  # at the first completion: an earlier failure leaves any old file
            self._fd = os.open(self.options.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        try:
            _write_all(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode())
        except OSError:
            os.ftruncate(self._fd, end)
            if not self.written:
                os.close(self._fd)
                self._fd = None
                os.unlink(self.options.output)
            raise
        self.written += 1

    def _close(self, finished: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            done = "wrote" if finished else "kept the finished"
            print(f"{done} {self.written} completions in {self.options.output}", file=sys.stderr)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module.token_callback, TokenPrinter):
            pl_module.token_callback.finish()
        if trainer.world_size > 1:
            every_rank: list[list[dict[str, Any]] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(every_rank, self._gathered)
            unique = {(r["index"], r["sample"]): r for records in every_rank for r in records}
            if trainer.is_global_zero:
                for key in sorted(unique):
                    self._emit(unique[key], printed=True)
            trainer.strategy.barrier("completions written")  # the ranks leave together, as after fit
        self._close(finished=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException):
        self._close(finished=False)


def _write_all(fd: int, data: bytes) -> None:
    """One line in one write call: a regular file takes it whole (or, with the disk full, in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
