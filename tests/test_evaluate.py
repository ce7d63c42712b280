"""`lmproject evaluate`: every token scored once, equal to a plain loop over windows, text equal to its
tokens, and one-line errors for bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fresh_run import run_fresh
from hypothesis import given
from hypothesis import strategies as st
from tiny_fit import fails
from tiny_run import load_ours, make_run

from lmproject.evaluate import window_plan
from lmproject.lit.commands import main
from lmproject.nn import cross_entropy
from lmproject.precision import cpu_supports_bf16
from lmproject.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("evaluate")).parent


def evaluate(run, tmp_path, *args) -> dict:
    output = tmp_path / "results.json"
    config = ["--config", str(run / "config.yaml"), "--ckpt_path", "last"]
    assert main(["evaluate", *config, *args, "--output", str(output)]) == 0
    return json.loads(output.read_text())


@given(st.integers(2, 300), st.integers(1, 40), st.data())
def test_every_token_is_scored_once_with_at_least_context_minus_stride_before_it(num_tokens, context, data):
    stride = data.draw(st.integers(1, context))
    starts, first_scored, length = window_plan(num_tokens, context, stride)
    scored = [
        start + 1 + p for start, first in zip(starts, first_scored, strict=True) for p in range(first, length)
    ]
    assert scored == list(range(1, num_tokens))  # each target once, in order
    assert length == min(context, num_tokens - 1) and first_scored[0] == 0
    assert all(length - first >= min(stride, length) for first in first_scored[1:-1])  # each window is a step
    contexts = [p + 1 for first in first_scored[1:] for p in range(first, length)]
    assert min(contexts, default=length) >= length - stride + 1


def test_stride_equal_to_context_is_a_plain_loop_over_non_overlapping_windows(run, tmp_path):
    model = load_ours(run / "run/checkpoints/last.ckpt")
    tokens = np.load(run / "valid.npy")[: 32 * 37 + 1]  # 37 whole windows of 32 targets
    np.save(tmp_path / "part.npy", tokens)
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, 32):
            window = torch.from_numpy(tokens[start : start + 33].astype(np.int64))
            nats += float(cross_entropy(model(window[None, :-1]), window[None, 1:])) * 32
    result = evaluate(
        run, tmp_path, "--tokens", str(tmp_path / "part.npy"), "--stride", "32", "--batch_size", "5"
    )
    assert result["tokens"] == 32 * 37 and result["stride"] == 32
    assert result["loss"] == pytest.approx(nats / (32 * 37), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-9)
    assert result["checkpoint"].endswith("last.ckpt")


def test_overlapping_windows_score_each_token_in_the_first_window_that_reaches_it(run, tmp_path):
    """The reference: every window's per-token losses (torch's cross-entropy), each target kept from the
    first window that contains it; windows every 8 tokens, the last one ending with the file."""
    model = load_ours(run / "run/checkpoints/last.ckpt")
    tokens = np.load(run / "valid.npy")[:301]
    starts = [*range(0, len(tokens) - 33, 8), len(tokens) - 33]
    losses = {}
    with torch.no_grad():
        for start in starts:
            window = torch.from_numpy(tokens[start : start + 33].astype(np.int64))
            per_token = F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="none")
            for offset, loss in enumerate(per_token.tolist()):
                losses.setdefault(start + 1 + offset, loss)
    assert sorted(losses) == list(range(1, len(tokens)))
    np.save(tmp_path / "part.npy", tokens)
    result = evaluate(
        run, tmp_path, "--tokens", str(tmp_path / "part.npy"), "--stride", "8", "--batch_size", "3"
    )
    assert result["tokens"] == 300
    assert result["loss"] == pytest.approx(sum(losses.values()) / 300, rel=1e-6)


def test_text_equals_its_encoded_tokens(run, tmp_path):
    text = (run / "stories.txt").read_text()[:5000] + " Ünïcödé 🙂<|endoftext|>"
    (tmp_path / "part.txt").write_text(text, encoding="utf-8")
    np.save(
        tmp_path / "part.npy", np.array(Tokenizer.from_dir(run / "tokenizer").encode(text), dtype=np.uint16)
    )
    from_text = evaluate(run, tmp_path, "--text", str(tmp_path / "part.txt"))
    from_tokens = evaluate(run, tmp_path, "--tokens", str(tmp_path / "part.npy"))
    assert from_text == from_tokens
    assert from_text["bytes"] == len(text.encode("utf-8")) and from_text["stride"] == 16  # context / 2
    nats = from_text["loss"] * from_text["tokens"]
    assert from_text["bits_per_byte"] == pytest.approx(nats / math.log(2) / from_text["bytes"])


def test_bad_input_gets_a_one_line_error(run, tmp_path, capsys):
    config = ["evaluate", "--config", str(run / "config.yaml"), "--ckpt_path", "last"]
    (tmp_path / "latin1.txt").write_bytes("Once upon a time, café".encode("latin-1"))
    assert "invalid UTF-8 at byte offset 21" in fails(
        [*config, "--text", str(tmp_path / "latin1.txt")], capsys
    )
    (tmp_path / "short.txt").write_text("a")
    assert "too short" in fails([*config, "--text", str(tmp_path / "short.txt")], capsys)
    np.save(tmp_path / "other.npy", np.array([1, 2, 310, 4], dtype=np.uint16))  # 310: beyond the tokenizer
    assert "token id 310 at position 2 is not in the tokenizer" in fails(
        [*config, "--tokens", str(tmp_path / "other.npy")], capsys
    )
    big = Tokenizer({i: bytes([i]) for i in range(256)}, [], [f"<|{i}|>" for i in range(100)])
    big.save(tmp_path / "big")  # 356 ids for a 320-token model
    assert "not the tokenizer this model was trained with" in fails(
        [*config, "--text", str(tmp_path / "short.txt"), "--data.tokenizer_dir", str(tmp_path / "big")],
        capsys,
    )
    assert f"{tmp_path}: not a file" in fails([*config, "--text", str(tmp_path)], capsys)  # "no such file"
    assert "--stride must be between 1 and context_length=32" in fails(
        [*config, "--text", str(tmp_path / "short.txt"), "--stride", "33"], capsys
    )
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage block came first
        main([*config, "--text", "a.txt", "--tokens", "b.npy"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "not allowed with argument --text" in err


def test_an_output_that_cannot_be_written_is_refused_before_scoring(run, tmp_path, capsys, monkeypatch):
    """--output naming a directory failed after the whole scoring, with the temp file's errno message."""
    monkeypatch.setattr("lmproject.lit.evaluate_cli.score", lambda *args, **kwargs: pytest.fail("scored"))
    argv = ["evaluate", "--config", str(run / "config.yaml"), "--ckpt_path", "last"]
    message = fails([*argv, "--tokens", str(run / "valid.npy"), "--output", str(tmp_path)], capsys)
    assert f"--output {tmp_path}: is a directory" in message


def test_a_bf16_config_scores_under_bf16_autocast(run, tmp_path):
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bfloat16: a bf16 config falls back to float32")
    tokens = ["--tokens", str(run / "valid.npy")]
    float32 = evaluate(run, tmp_path, *tokens)
    bf16 = evaluate(run, tmp_path, *tokens, "--trainer.precision", "bf16-mixed")
    assert bf16["loss"] != float32["loss"]  # the matmuls did run in bfloat16
    assert bf16["loss"] == pytest.approx(float32["loss"], rel=2e-2)


def lm_eval_rolling_windows(
    tokens: list[int], prefix: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """lm-evaluation-harness's loglikelihood_rolling windows of one document: get_rolling_token_windows
    with context_len=1 (the first window predicts the first max_length tokens from the prefix token; each
    later one the next max_length tokens, or the rest, from the max_length tokens before each), then
    make_disjoint_window (the context keeps only what precedes the continuation). Its model then reads
    (context + continuation)[-(max_length + 1):][:-1] and scores the last len(continuation) positions."""
    first = min(max_length, len(tokens))
    pairs = [([prefix, *tokens[: first - 1]], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        count = min(len(tokens) - predicted, max_length)
        end = predicted + count
        pairs.append((tokens[end - max_length - 1 : end - 1], tokens[end - count : end]))
        predicted += count
    return [
        (context[: len(context) - len(continuation) + 1], continuation) for context, continuation in pairs
    ]


def test_documents_follow_lm_evals_rolling_loglikelihood_document_by_document(run, tmp_path):
    model = load_ours(run / "run/checkpoints/last.ckpt")
    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    stories = (run / "stories.txt").read_text().split("<|endoftext|>")
    documents = [stories[0] + stories[1] + stories[2], "Hi.", "", stories[3], " 🙂 Ünï\n"]  # 3 ctx, 1 token
    text = "<|endoftext|>".join(documents) + "<|endoftext|>"
    eos = tokenizer.encode("<|endoftext|>")[0]
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for document in filter(None, documents):
            ids = tokenizer.encode(document)
            tokens += len(ids)
            for context, continuation in lm_eval_rolling_windows(ids, eos, 32):
                sequence = torch.tensor((context + continuation)[-33:])
                logits = model(sequence[None, :-1])[0, -len(continuation) :]
                nats += F.cross_entropy(logits, torch.tensor(continuation), reduction="sum").item()
    assert len(tokenizer.encode(documents[0])) > 64  # more than two windows
    (tmp_path / "docs.txt").write_text(text, encoding="utf-8")
    np.save(tmp_path / "docs.npy", np.array(tokenizer.encode(text), dtype=np.uint16))
    result = evaluate(run, tmp_path, "--text", str(tmp_path / "docs.txt"), "--documents", "--batch_size", "3")
    assert result["documents"] == 4 and result["tokens"] == tokens and result["stride"] == 32
    assert result["bytes"] == sum(len(document.encode("utf-8")) for document in documents)
    assert result["loss"] == pytest.approx(nats / tokens, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / result["bytes"], rel=1e-6)
    from_tokens = evaluate(run, tmp_path, "--tokens", str(tmp_path / "docs.npy"), "--documents")
    assert from_tokens == result
    plain = evaluate(run, tmp_path, "--text", str(tmp_path / "docs.txt"), "--stride", "32")
    assert "documents" not in plain and plain["loss"] != pytest.approx(result["loss"], rel=1e-3)


def test_documents_need_an_endoftext_and_at_least_one_document(run, tmp_path, capsys):
    config = ["evaluate", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--documents"]
    (tmp_path / "empty.txt").write_text("<|endoftext|><|endoftext|>")
    assert "no documents between the <|endoftext|> separators" in fails(
        [*config, "--text", str(tmp_path / "empty.txt")], capsys
    )
    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(tmp_path / "bytes")
    assert "has no <|endoftext|> to split at" in fails(
        [*config, "--text", str(tmp_path / "empty.txt"), "--data.tokenizer_dir", str(tmp_path / "bytes")],
        capsys,
    )


@pytest.mark.slow
def test_evaluate_never_imports_lightning(run, tmp_path):
    config = ["--config", str(run / "config.yaml"), "--ckpt_path", "last"]
    argv = ["evaluate", *config, "--tokens", str(run / "valid.npy"), "--output", str(tmp_path / "r.json")]
    assert run_fresh(argv) == {"status": 0, "lightning": []}
    assert json.loads((tmp_path / "r.json").read_text())["checkpoint"].endswith("last.ckpt")
