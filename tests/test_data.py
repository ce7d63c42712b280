"""Token files, get_batch, the training-window stream and the fixed validation windows."""

import os
from itertools import islice

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmproject.errors import UserError
from lmproject.lit.datamodule import TokenDataModule
from lmproject.training import data
from lmproject.training.data import FixedWindows, RandomWindows, check_tokens, get_batch, open_tokens


def test_get_batch_targets_are_inputs_shifted_by_one_and_offsets_cover_the_whole_file():
    tokens = np.arange(20, dtype=np.uint16)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = get_batch(tokens, batch_size=4, context_length=5, device="cpu", rng=rng)
        assert x.shape == y.shape == (4, 5) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)  # consecutive ids: the target is the next token
        seen.update(x[:, 0].tolist())
    assert seen == set(range(20 - 5))  # every valid start, including the last (ends at the final token)


def test_npy_and_raw_bin_files_open_memory_mapped(tmp_path):
    ids = np.arange(1000, dtype=np.uint32)
    np.save(tmp_path / "a.npy", ids.astype(np.uint16))
    ids.tofile(tmp_path / "b.bin")
    npy, raw = open_tokens(tmp_path / "a.npy"), open_tokens(tmp_path / "b.bin", "uint32")
    assert isinstance(npy, np.memmap) and isinstance(raw, np.memmap)
    assert np.array_equal(npy, raw)


@pytest.mark.parametrize(
    ("name", "make", "dtype", "message"),
    [
        ("missing.npy", None, None, "token file not found"),
        ("wide.npy", lambda p: np.save(p, np.arange(100, dtype=np.int64)), None, "must be uint16 or uint32"),
        ("grid.npy", lambda p: np.save(p, np.zeros((4, 4), np.uint16)), None, "1-D array"),
        ("text.npy", lambda p: p.write_text("hello"), None, "not a readable .npy"),
        ("raw.bin", lambda p: np.zeros(10, np.uint16).tofile(p), None, "need a declared dtype"),
        ("raw2.bin", lambda p: np.zeros(10, np.uint16).tofile(p), "int8", "dtype must be one of"),
        ("empty.bin", lambda p: p.write_bytes(b""), "uint16", "empty"),
        (
            "saved.bin",
            lambda p: (
                np.save(p.with_suffix(".npy"), np.zeros(10, np.uint16)) or p.with_suffix(".npy").rename(p)
            ),
            "uint16",
            "name it saved.npy",
        ),
        ("odd.bin", lambda p: p.write_bytes(b"\0" * 7), "uint16", "7 bytes is not a whole number of uint16"),
        ("folder.npy", lambda p: p.mkdir(), None, "is a directory"),
        ("u16.npy", lambda p: np.save(p, np.zeros(10, np.uint16)), "uint32", "config declares dtype uint32"),
    ],
)
def test_bad_token_files_are_refused_with_the_file_named(tmp_path, name, make, dtype, message):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(UserError, match=message) as err:
        open_tokens(path, dtype)
    assert str(path) in str(err.value)


def test_a_fifo_token_file_is_named_as_one_not_as_missing(tmp_path):
    os.mkfifo(tmp_path / "t.npy")
    with pytest.raises(UserError, match=r"t.npy: is a FIFO \(named pipe\); the token file must be a regular"):
        open_tokens(tmp_path / "t.npy")


def test_check_tokens_refuses_short_files_and_ids_outside_the_vocabulary():
    check_tokens(np.zeros(18, np.uint16), "ok.npy", context_length=16, vocab_size=10)
    with pytest.raises(UserError, match="too short for context_length=16"):
        check_tokens(np.zeros(17, np.uint16), "short.npy", context_length=16, vocab_size=10)
    tokens = np.zeros(500_000, np.uint16)
    tokens[-3] = 10
    with pytest.raises(
        UserError, match=r"token id 10 at position 499997 is not below the vocab_size=10 \(was the file"
    ):
        check_tokens(tokens, "big.npy", context_length=16, vocab_size=10)


@pytest.mark.parametrize("chunk_tokens", [None, 7_000])
def test_every_token_id_is_checked_not_a_sample(monkeypatch, chunk_tokens):
    """The check read 16 chunks of 64K tokens: 50,000 bad ids between them passed it, then failed mid-run.
    (A small chunk size puts the bad ids across chunk boundaries.)"""
    if chunk_tokens is not None:
        monkeypatch.setattr(data, "ID_CHECK_CHUNK_TOKENS", chunk_tokens)
    tokens = np.zeros(2_000_000, np.uint16)
    tokens[70_000:120_000] = 400
    tokens[1_999_999] = 401
    message = (
        r"id 400 at position 70000 is not below the vocab_size=400, nor are 50,000 more, up to token id 401"
    )
    with pytest.raises(UserError, match=message):
        check_tokens(tokens, "t.npy", context_length=16, vocab_size=400)
    check_tokens(tokens, "t.npy", context_length=16, vocab_size=402)


def test_stream_is_seeded_per_rank_and_resumes_at_any_batch(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(5000, dtype=np.uint16))

    def first(n, rank=0, start=0, seed=0):
        stream = iter(RandomWindows(path, None, 4, 8, seed=seed, rank=rank, start=start))
        return [next(stream)[0] for _ in range(n)]

    full = first(6)
    assert all(torch.equal(a, b) for a, b in zip(full, first(6), strict=True))  # reproducible
    assert all(torch.equal(a, b) for a, b in zip(full[3:], first(3, start=3), strict=True))  # resumable
    assert not any(torch.equal(a, b) for a, b in zip(full, first(6, rank=1), strict=True))  # ranks differ
    assert not any(torch.equal(a, b) for a, b in zip(full, first(6, seed=1), strict=True))


def test_worker_processes_split_the_stream_without_repeating_it(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(5000, dtype=np.uint16))
    stream = RandomWindows(path, None, 4, 8, seed=0, rank=0, start=0)
    single = [batch[0] for batch in islice(DataLoader(stream, batch_size=None), 6)]
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    workers = [batch[0] for batch in islice(loader, 6)]
    assert all(torch.equal(a, b) for a, b in zip(single, workers, strict=True))
    assert len({tuple(x[:, 0].tolist()) for x in workers}) == 6


def test_validation_windows_are_fixed_and_span_the_file(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.arange(1000, dtype=np.uint16))
    a, b = FixedWindows(path, None, 16, count=10), FixedWindows(path, None, 16, count=10)
    assert len(a) == 10
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(10))
    assert a[0][0][0] == 0 and a[9][1][-1] == 999  # first window starts the file, last one ends it


def test_validation_windows_pad_to_a_multiple_of_the_ranks_with_zero_weight_copies(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.arange(1000, dtype=np.uint16))
    for ranks, length in [(1, 7), (2, 8), (3, 9), (4, 8)]:
        fixed = FixedWindows(path, None, 16, count=7, ranks=ranks)
        assert len(fixed) == length
        assert [fixed[i][2].item() for i in range(length)] == [1.0] * 7 + [0.0] * (length - 7)
        assert {fixed[i][0][0].item() for i in range(length)} == {fixed[i][0][0].item() for i in range(7)}


def test_data_module_checks_files_against_the_model_before_training(tmp_path):
    np.save(tmp_path / "train.npy", np.full(100, 70, np.uint16))
    np.save(tmp_path / "valid.npy", np.zeros(100, np.uint16))
    data = TokenDataModule(
        str(tmp_path / "train.npy"), str(tmp_path / "valid.npy"), 2, vocab_size=64, context_length=8
    )
    data.setup("validate")  # only the validation file is needed there
    with pytest.raises(UserError, match="train.npy: token id 70 .* vocab_size=64"):
        data.setup("fit")


def test_val_batch_size_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="data.val_batch_size=0: must be null or an integer >= 1"):
        TokenDataModule("train.npy", "valid.npy", 2, vocab_size=64, context_length=8, val_batch_size=0)


def test_get_batch_refuses_a_file_shorter_than_a_window_and_empty_shapes():
    with pytest.raises(ValueError, match="10 tokens are too few for context_length=16"):
        get_batch(np.arange(10), 2, 16, "cpu")
    with pytest.raises(ValueError, match="must be >= 1, got 2 and 0"):
        get_batch(np.arange(100), 2, 0, "cpu")
