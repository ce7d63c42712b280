"""save_checkpoint / load_checkpoint: exact round-trip, atomic writes, clear errors for bad files."""

import io

import pytest
import torch
from conftest import zero_middle

from lmproject.errors import UserError
from lmproject.nn import TransformerLM, cross_entropy
from lmproject.training.checkpoint import load_checkpoint, save_checkpoint
from lmproject.training.digest import digest_status
from lmproject.training.optim import AdamW

SMALL = dict(vocab_size=32, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=24)


def trained_pair(seed=0):
    torch.manual_seed(seed)
    model = TransformerLM(**SMALL)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(0, 32, (2, 9))
    cross_entropy(model(batch[:, :-1]), batch[:, 1:]).backward()
    optimizer.step()
    return model, optimizer


def assert_same_state(model, optimizer, other_model, other_optimizer):
    for (name, a), b in zip(model.state_dict().items(), other_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), other_model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[p][key], other_optimizer.state[q][key])


def test_round_trip_through_a_path(tmp_path):
    model, optimizer = trained_pair(0)
    save_checkpoint(model, optimizer, 123, tmp_path / "ckpt.pt")
    restored, restored_optimizer = trained_pair(1)
    assert load_checkpoint(tmp_path / "ckpt.pt", restored, restored_optimizer) == 123
    assert_same_state(model, optimizer, restored, restored_optimizer)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_round_trip_through_a_file_object():
    model, optimizer = trained_pair(0)
    buffer = io.BytesIO()
    save_checkpoint(model, optimizer, 7, buffer)
    buffer.seek(0)
    restored, restored_optimizer = trained_pair(1)
    assert load_checkpoint(buffer, restored, restored_optimizer) == 7
    assert_same_state(model, optimizer, restored, restored_optimizer)


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, optimizer = trained_pair(0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, optimizer, 2, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_corrupt_checkpoint_is_a_user_error_naming_the_file(tmp_path):
    model, optimizer = trained_pair(0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"ckpt.pt: not a torch checkpoint \(or cut short\)"):
        load_checkpoint(path, model, optimizer)
    with pytest.raises(UserError, match="missing.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt", model, optimizer)


def test_mismatched_model_is_a_user_error_naming_the_file(tmp_path):
    model, optimizer = trained_pair(0)
    save_checkpoint(model, optimizer, 1, tmp_path / "ckpt.pt")
    wider = TransformerLM(**{**SMALL, "d_model": 32})
    with pytest.raises(UserError, match=r"ckpt.pt: does not match the model.*size mismatch"):
        load_checkpoint(tmp_path / "ckpt.pt", wider, AdamW(wider.parameters()))


def test_other_torch_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    model, optimizer = trained_pair(0)
    with pytest.raises(UserError, match="other.pt: not a save_checkpoint file"):
        load_checkpoint(tmp_path / "other.pt", model, optimizer)


def test_a_checkpoint_with_a_zeroed_block_is_refused_as_damaged(tmp_path):
    model, optimizer = trained_pair(0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    assert digest_status(path) == "intact"
    zero_middle(path)
    assert digest_status(path) == "damaged"
    with pytest.raises(UserError, match="ckpt.pt: damaged"):
        load_checkpoint(path, model, optimizer)


def test_a_checkpoint_without_a_digest_still_loads(tmp_path):
    model, optimizer = trained_pair(0)
    path = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 7}, path)
    assert digest_status(path) == "no digest"
    assert load_checkpoint(path, model, optimizer) == 7


def test_random_bytes_are_a_one_line_error(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 40)
    model, optimizer = trained_pair(0)
    with pytest.raises(UserError) as error:
        load_checkpoint(path, model, optimizer)
    assert str(error.value) == f"checkpoint {path}: not a torch checkpoint (or cut short)"
