"""`lmproject predict`: greedy output equals generate() on the checkpoint; JSONL, streaming, errors."""

import errno
import io
import json
import os
import re
import signal
import sys
from dataclasses import asdict

import lightning as L
import pytest
import torch
from tiny_run import make_run

from lmproject import precision
from lmproject.lit.commands import main
from lmproject.lit.module import LanguageModel
from lmproject.lit.predict import TokenPrinter, decode
from lmproject.precision import cpu_supports_bf16
from lmproject.sampling import compiled_step as compiled_step_module
from lmproject.sampling import generate as generate_module
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import generate
from lmproject.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny tokenizer trained on generated stories, token files it encoded, a config and a checkpoint."""
    root = tmp_path_factory.mktemp("predict")
    make_run(root, steps=3, num_layers=1, rope_theta=10000.0)
    (root / "prompts.txt").write_text("Once upon a time\n\nTom and his dog\n")
    return root


def test_ids_beyond_the_tokenizer_decode_as_replacement_characters(run):
    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    ids = tokenizer.encode("Tom and his dog")
    assert decode(tokenizer, ids) == tokenizer.decode(ids) == "Tom and his dog"
    assert decode(tokenizer, [*ids, tokenizer.vocab_size + 5]) == "Tom and his dog\ufffd"


def predict(run, *args):
    checkpoint = run / "run/checkpoints/last.ckpt"
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint), *args])


@pytest.mark.slow
def test_greedy_completions_equal_generate_on_the_checkpoint_and_go_to_jsonl(run, capsys):
    out = run / "greedy.jsonl"
    predict(run, "--prompts_file", str(run / "prompts.txt"), "--num_samples", "2", "--temperature", "0",
            "--max_new_tokens", "12", "--output", str(out))  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [
        ("Once upon a time", 0), ("Once upon a time", 1), ("Tom and his dog", 0), ("Tom and his dog", 1)
    ]  # fmt: skip

    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    model = LanguageModel.load_from_checkpoint(
        run / "run/checkpoints/last.ckpt", map_location="cpu"
    ).model.eval()
    eos = tokenizer.encode(EOS)[0]
    printed = capsys.readouterr().out
    for record in records:
        prompt_ids = tokenizer.encode(record["prompt"])
        [expected] = generate(
            model, [prompt_ids], SamplingConfig(max_new_tokens=12, temperature=0, eos_id=eos)
        )
        ended = expected[-1:] == [eos]
        assert record["completion"] == decode(tokenizer, expected[:-1] if ended else expected)
        assert (record["prompt_tokens"], record["completion_tokens"]) == (len(prompt_ids), len(expected))
        assert record["stopped_at_eos"] == ended
        assert record["settings"] == {
            "max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "top_k": None, "window_slide": None,
            "dtype": "float32",
        }  # fmt: skip
        assert record["prompt"] + record["completion"] in printed
    assert [r["seed"] for r in records] == [0, 0, 1, 1]


@pytest.mark.slow
def test_sampling_is_reproducible_from_the_seed(run):
    outputs = []
    for name, seed in [("a", "7"), ("b", "7"), ("c", "8")]:
        out = run / f"{name}.jsonl"
        predict(run, "--prompt", "Once upon a time", "--num_samples", "3", "--top_p", "0.9",
                "--max_new_tokens", "16", "--seed", seed, "--output", str(out))  # fmt: skip
        outputs.append([json.loads(line)["completion"] for line in out.read_text().splitlines()])
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    assert len(set(outputs[0])) > 1  # samples of one prompt differ from each other


class Terminal(io.StringIO):
    """A stdout that says it is a terminal and remembers each write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def isatty(self):
        return True

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_a_single_prompt_streams_token_by_token_to_a_terminal(run, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    out = run / "stream.jsonl"
    predict(
        run,
        "--prompt",
        "Once upon a time",
        "--temperature",
        "0",
        "--max_new_tokens",
        "10",
        "--output",
        str(out),
    )
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert terminal.getvalue() == "Once upon a time" + record["completion"] + "\n"
    # The prompt, then exactly one write per sampled token except a final <|endoftext|>, then a newline.
    prompt, *token_writes, newline = terminal.writes
    assert (prompt, newline) == ("Once upon a time", "\n")
    assert len(token_writes) == record["completion_tokens"] - record["stopped_at_eos"]


def test_a_stream_that_ends_inside_a_character_prints_it_as_the_jsonl_does(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    printer = TokenPrinter(tokenizer, "Caf")
    for token in "é".encode()[:1]:  # the completion stops after the first byte of a two-byte character
        printer(token)
    printer.finish()
    assert terminal.getvalue() == "Caf" + decode(tokenizer, list("é".encode()[:1])) + "\n" == "Caf\ufffd\n"


def test_the_sampling_settings_are_top_level_flags_but_seed_and_eos_id_are_predicts_own(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    flags = set(re.findall(r"^  (--\w+)", capsys.readouterr().out, re.MULTILINE))
    sampling = {"--max_new_tokens", "--temperature", "--top_p", "--top_k", "--window_slide", "--dtype"}
    assert (
        sampling | {"--prompt", "--prompts_file", "--num_samples", "--seed", "--output", "--stream"} <= flags
    )
    assert "--eos_id" not in flags  # the tokenizer's <|endoftext|>


def test_a_stream_of_no_tokens_prints_the_prompt_alone(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    printer = TokenPrinter(Tokenizer({i: bytes([i]) for i in range(256)}, []), "Caf")
    printer.finish()  # --max_new_tokens 0
    assert terminal.getvalue() == "Caf\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "Hi", "--temperature", "-1"], "--temperature must be >= 0"),
        (["--prompt", "Hi", "--top_p", "0"], "--top_p must be in (0, 1]"),
        (["--prompt", "Hi", "--top_p", "1.5"], "--top_p must be in (0, 1]"),
        (["--prompt", "Hi", "--top_k", "0"], "--top_k must be >= 1"),
        (["--prompt", "Hi", "--num_samples", "0"], "--num_samples must be >= 1"),
        (["--prompt", "Hi", "--window_slide", "0"], "--window_slide must be >= 1"),
        (
            ["--prompt", "Hi", "--window_slide", "100000"],
            "predict: --window_slide must be in 1..32 (the context",
        ),
        (["--prompt", "Hi", "--max_new_tokens", "-1"], "predict: --max_new_tokens must be >= 0, got -1"),
        (["--prompt", "Hi", "--dtype", "float16"], "--dtype must be one of float32, bfloat16, got 'float16'"),
        (["--prompt", " "], "--prompt is only whitespace (' '): give some text to continue"),
        (["--prompt", ""], "--prompt is empty: give some text to continue"),
        ([], "exactly one of --prompt or --prompts_file"),
        (["--prompt", "Hi", "--prompts_file", "p.txt"], "exactly one of --prompt or --prompts_file"),
        (["--prompts_file", "missing.txt"], "missing.txt: prompts file not found"),
        (["--prompts_file", "/"], "/: is a directory, expected a prompts file (one per line)"),
        (["--prompt", "Hi", "--num_samples", "2", "--stream", "true"], "--stream needs one prompt"),
        (
            ["--prompt", "Hi", "--seed", str(2**70)],
            f"--seed must be an integer in [0, 4294967295], got {2**70}",
        ),  # noqa: E501
        (["--prompt", os.fsdecode(b"Hi\xff")], "--prompt is not valid UTF-8 (byte 0xff at character 2)"),
        (["--prompt", "Hi", "--max_new_tokens", "1000000000000000"], "GiB while sampling"),
        (["--prompt", "Hi", "--num_samples", "1000000000000"], "--num_samples 1000000000000 with"),
    ],
)
@pytest.mark.slow
def test_bad_sampling_arguments_are_one_line_errors_and_write_nothing(run, capsys, args, message):
    out = run / "bad.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        predict(run, *args, "--output", str(out))
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("lmproject: error: ") and message in last
    assert not out.exists()


@pytest.mark.slow
def test_bfloat16_sampling_equals_generate_in_bfloat16_or_is_refused_without_native_bf16(
    run, capsys, monkeypatch
):
    out = run / "bf16.jsonl"
    if cpu_supports_bf16():
        predict(run, "--prompt", "Tom and his dog", "--temperature", "0", "--max_new_tokens", "12",
                "--dtype", "bfloat16", "--output", str(out))  # fmt: skip
        [record] = [json.loads(line) for line in out.read_text().splitlines()]
        model = LanguageModel.load_from_checkpoint(
            run / "run/checkpoints/last.ckpt", map_location="cpu"
        ).model
        tokenizer = Tokenizer.from_dir(run / "tokenizer")
        ids = tokenizer.encode("Tom and his dog")
        [expected] = generate(
            model.to(torch.bfloat16),
            [ids],
            SamplingConfig(max_new_tokens=12, temperature=0, eos_id=tokenizer.encode(EOS)[0]),
        )
        assert record["completion_tokens"] == len(expected) and record["settings"]["dtype"] == "bfloat16"
        out.unlink()
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        predict(run, "--prompt", "Hi", "--dtype", "bfloat16", "--output", str(out))
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last == "lmproject: error: predict: --dtype bfloat16: this CPU has no native bf16 (avx512_bf16, "
        "AMX or Arm BF16); use float32"
    )
    assert not out.exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_predict_samples_in_its_dtype_even_under_a_mixed_precision_autocast(run, monkeypatch, dtype):
    if dtype == torch.bfloat16 and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    module = LanguageModel.load_from_checkpoint(run / "run/checkpoints/last.ckpt", map_location="cpu")
    seen = []
    sample = generate_module.sample_next_token
    monkeypatch.setattr(
        generate_module,
        "sample_next_token",
        lambda logits, *a: seen.append(logits.dtype) or sample(logits, *a),
    )
    sampling = SamplingConfig(max_new_tokens=4, temperature=0, dtype=str(dtype).removeprefix("torch."))
    request = {"prompt_ids": [5, 6, 7], "num_samples": 2, "sampling": asdict(sampling)}
    module.on_predict_start()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Lightning opens for precision bf16-mixed
        module.predict_step(request, 0)
    assert seen == [dtype] * 4


def test_a_fifo_prompts_file_is_named_as_one_not_as_missing(run, capsys, tmp_path):
    os.mkfifo(tmp_path / "prompts")
    with pytest.raises(SystemExit) as exit_info:
        predict(run, "--prompts_file", str(tmp_path / "prompts"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lmproject: error: {tmp_path / 'prompts'}: is a FIFO (named pipe); the prompts file must be a "
        "regular file (it is read more than once)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Once upon a time\nTom \xff\xfe and\n", "not UTF-8 text (byte offset 21"),
        (b"", "no prompts in the file"),
        (b"\n  \n\n", "no prompts in the file"),
    ],
)
def test_an_unreadable_or_empty_prompts_file_is_a_one_line_error(run, capsys, content, message):
    prompts = run / "bad_prompts.txt"
    prompts.write_bytes(content)
    out = run / "bad.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        predict(run, "--prompts_file", str(prompts), "--output", str(out))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"lmproject: error: {prompts}: {message}")
    assert not out.exists()


class SigintAtPredictBatch(L.Callback):
    """Presses Ctrl-C as request `batch` starts (the ones before it have finished)."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_completions_as_whole_lines_and_exits_130(run, capsys):
    prompts = run / "four_prompts.txt"
    prompts.write_text("Once upon a time\nTom and his dog\nThe sun\nA cat\n")
    out = run / "interrupted.jsonl"
    callback = {"class_path": f"{__name__}.SigintAtPredictBatch", "init_args": {"batch": 2}}
    with pytest.raises(SystemExit) as exit_info:
        predict(run, "--prompts_file", str(prompts), "--output", str(out), "--max_new_tokens", "4",
                "--trainer.callbacks", json.dumps([callback]))  # fmt: skip
    assert exit_info.value.code == 130
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Once upon a time", "Tom and his dog"]
    assert f"kept the finished 2 completions in {out}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (".", "is a directory, expected a file name"),
        ("prompts.txt/out.jsonl", "prompts.txt is not a directory"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_sampling(
    run, capsys, monkeypatch, output, message
):
    monkeypatch.chdir(run)
    monkeypatch.setattr(LanguageModel, "predict_step", lambda *a: pytest.fail("sampled"))
    with pytest.raises(SystemExit) as exit_info:
        predict(run, "--prompt", "Hi", "--output", output)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(compiled_step_module.cpp_compiler() is None, reason="no C++ compiler for torch.compile")
@pytest.mark.slow
def test_compiled_step_completions_equal_the_op_by_op_ones(run):
    outputs = {}
    for flag in ("false", "true"):
        outputs[flag] = run / f"compiled_{flag}.jsonl"
        args = ["--temperature", "0", "--max_new_tokens", "12", "--compiled_step", flag]
        predict(run, "--prompts_file", str(run / "prompts.txt"), *args, "--output", str(outputs[flag]))
    assert outputs["true"].read_text() == outputs["false"].read_text()


@pytest.mark.slow
def test_stdout_holds_only_the_completions_when_piped(run):
    """The progress bars went to stdout among the completions, so `> out.txt` kept them."""
    import subprocess

    checkpoint = run / "run/checkpoints/last.ckpt"
    config = str(run / "config.yaml")
    command = [sys.executable, "-m", "lmproject.lit.commands", "predict", "--config", config,
               "--ckpt_path", str(checkpoint), "--prompt", "Once upon a time", "--temperature", "0",
               "--max_new_tokens", "6", "--trainer.enable_progress_bar", "true"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    model = LanguageModel.load_from_checkpoint(checkpoint, map_location="cpu").model
    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    prompt = tokenizer.encode("Once upon a time")
    (completion,) = generate(model, [prompt], SamplingConfig(max_new_tokens=6, temperature=0))
    text = "Once upon a time" + decode(tokenizer, completion)
    assert result.stdout == f"--- prompt 1, sample 1 ---\n{text}\n\n"
    assert "Predicting" in result.stderr  # the bar is there, on stderr


@pytest.mark.slow
@pytest.mark.parametrize("fails_at", [1, 2])
def test_a_full_disk_names_the_output_and_keeps_only_whole_lines(run, capsys, monkeypatch, fails_at):
    """(`[Errno 28] No space left on device` named no file and left an empty or cut-off s.jsonl.)"""
    from lmproject.lit import predict as predict_module

    real, calls = predict_module._write_all, []

    def fill_up(fd, data):
        calls.append(data)
        if len(calls) < fails_at:
            return real(fd, data)
        os.write(fd, data[:10])  # the disk took part of the line
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predict_module, "_write_all", fill_up)
    out = run / "full.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        predict(run, "--prompt", "Hi", "--num_samples", "2", "--max_new_tokens", "3", "--output", str(out))
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"lmproject: error: --output {out}: cannot write it: the disk is full"
    if fails_at == 1:
        assert not out.exists()
    else:
        assert [json.loads(line)["sample"] for line in out.read_text().splitlines()] == [0]
        out.unlink()
