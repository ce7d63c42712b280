"""Checkpoint files of a run: `last.ckpt` is always the newest step, damage is caught and named, and what a
killed run left behind is cleaned up. Real short fits of a tiny model."""

import pytest
import torch
from conftest import zero_middle
from tiny_fit import SigintAt, fails, write_config, write_tokens

from lmproject.atomic import remove_stale_temps
from lmproject.lit.commands import main
from lmproject.training.checkpoint import DIGEST_KEY
from lmproject.training.checkpoint_files import checkpoint_step, find_last

pytestmark = pytest.mark.usefixtures("one_thread")

DEAD_PID = 99_999_999  # above Linux's largest pid (4,194,304): no process has it


@pytest.fixture
def run(tmp_path):
    write_tokens(tmp_path)
    return tmp_path / "run"


def fit(run, *args, callbacks=()):
    main(["fit", "--config", str(write_config(run.parent, run, callbacks=callbacks)), *args])


def steps(run):
    return {p.name: checkpoint_step(p) for p in sorted((run / "checkpoints").glob("*.ckpt"))}


@pytest.mark.slow
def test_ctrl_c_before_the_first_periodic_checkpoint_then_resume_keeps_one_last_file(run):
    """The issue's run: Ctrl-C at step 46 of checkpoints every 50, resumed to step 300, left last.ckpt at 46
    and wrote steps 50 to 300 to last-v1.ckpt. Here: Ctrl-C at 2, checkpoints every 4, resumed to 8."""
    every = ["--checkpoint.every_n_train_steps", "4"]
    with pytest.raises(SystemExit) as exit_info:
        fit(run, "--trainer.max_steps", "8", *every, callbacks=[(SigintAt, {"step": 2})])
    assert exit_info.value.code == 130
    assert steps(run) == {"last.ckpt": 2}
    fit(run, "--trainer.max_steps", "8", *every, "--ckpt_path", "last")
    assert steps(run) == {"epoch=0-step=8.ckpt": 8, "last.ckpt": 8}


@pytest.mark.slow
def test_resuming_with_another_checkpoint_interval_keeps_last_at_the_newest_step(run):
    fit(run, "--trainer.max_steps", "4", "--checkpoint.every_n_train_steps", "2")
    fit(run, "--trainer.max_steps", "9", "--checkpoint.every_n_train_steps", "3", "--ckpt_path", "last")
    found = steps(run)
    assert [name for name in found if name.startswith("last")] == ["last.ckpt"]
    assert found["last.ckpt"] == max(found.values()) == 9
    assert find_last(run / "checkpoints") == run / "checkpoints/last.ckpt"


def test_last_of_an_older_run_is_the_highest_step_not_the_newest_file(tmp_path):
    """Runs of earlier versions could hold last.ckpt and last-v1.ckpt; modification times decided then."""
    for name, step in (("last-v1.ckpt", 7), ("last.ckpt", 5), ("last-v2.ckpt", 3)):
        torch.save({"global_step": step}, tmp_path / name)
    assert find_last(tmp_path) == tmp_path / "last-v1.ckpt"
    torch.save({"global_step": 7}, tmp_path / "last.ckpt")
    assert find_last(tmp_path) == tmp_path / "last.ckpt"  # a tie goes to last.ckpt


@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_naming_the_newest_intact_one(run, capsys):
    fit(run, "--trainer.max_steps", "5")  # periodic checkpoints at steps 2 and 4, last.ckpt at 5
    last = run / "checkpoints/last.ckpt"
    zero_middle(last)
    message = fails(["fit", "--config", str(run.parent / "run.yaml"), "--trainer.max_steps", "8",
                     "--ckpt_path", "last"], capsys)  # fmt: skip
    good = run / "checkpoints/epoch=0-step=4.ckpt"
    assert message == (
        f"lmproject: error: {last}: damaged checkpoint (its bytes differ from the SHA-256 digest saved "
        f"with it); the newest intact one is {good} (step 4): --ckpt_path {good}"
    )
    fit(run, "--trainer.max_steps", "8", "--ckpt_path", str(good))  # the advice works
    assert checkpoint_step(last) == 8


@pytest.mark.slow
def test_checkpoints_without_a_digest_still_resume(run):
    fit(run, "--trainer.max_steps", "2")
    last = run / "checkpoints/last.ckpt"
    earlier = torch.load(last, weights_only=True)
    del earlier[DIGEST_KEY]
    torch.save(earlier, last)  # as versions before the digest wrote it
    fit(run, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert checkpoint_step(last) == 4


@pytest.mark.slow
def test_a_later_run_removes_what_a_killed_one_left_and_nothing_else(run, tmp_path):
    fit(run, "--trainer.max_steps", "2")
    checkpoints = run / "checkpoints"
    stale = [checkpoints / f".last.ckpt.{DEAD_PID}.abcd1234.tmp",
             checkpoints / f".epoch=0-step=4.ckpt.{DEAD_PID}.x_y_z_12.tmp"]  # fmt: skip
    kept = [checkpoints / ".last.ckpt.mine.tmp", checkpoints / f".last.ckpt.{DEAD_PID}.short.tmp",
            checkpoints / "notes.tmp"]  # fmt: skip
    for path in stale + kept:
        path.write_bytes(b"")
    fit(run, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_temps_of_a_running_process_are_left_alone(tmp_path):
    import os

    running = tmp_path / f".out.npy.{os.getpid()}.abcdefgh.parts"
    dead = tmp_path / f".out.npy.{DEAD_PID}.abcdefgh.parts"
    for folder in (running, dead):
        folder.mkdir()
        (folder / "000000.bin").write_bytes(b"\0\0")
    assert remove_stale_temps(tmp_path, "out.npy") == [dead]
    assert running.is_dir() and not dead.exists()
