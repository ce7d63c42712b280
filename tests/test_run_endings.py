"""Nothing unfinished looks finished: how `lmproject fit` ends (Ctrl-C from a terminal, SIGTERM, the time
limit, divergence, done), what it prints, what it leaves on disk, and what a resume may change."""

import csv
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny_fit import BATCH, TINY_ARCH, SigintAt, fails, write_config, write_tokens

from lmproject.errors import DIVERGED, INTERRUPTED, TERMINATED, TIME_LIMIT
from lmproject.lit.commands import main
from lmproject.run_lock import LOCK_FILE
from lmproject.training.checkpoint import write_checkpoint
from lmproject.training.checkpoint_files import find_last
from lmproject.training.digest import COMMENT_LENGTH

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_dir(tmp_path):
    write_tokens(tmp_path, n=20_000)
    return tmp_path


def start_fit(config: Path, *args: str) -> subprocess.Popen:
    """`lmproject fit` in its own process group, as a terminal runs it."""
    command = [sys.executable, "-m", "lmproject.lit.commands", "fit", "--config", str(config), *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def long_run(data_dir: Path, run: Path, **trainer) -> Path:
    config = write_config(data_dir, run)
    document = yaml.safe_load(config.read_text())
    document["trainer"].update(trainer)
    config.write_text(yaml.safe_dump(document))
    return config


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_from_a_terminal_with_dataloader_workers_saves_and_exits_130(data_dir):
    """A terminal's Ctrl-C reaches the whole process group, the DataLoader workers included: they used to
    die and take the run down with a traceback (exit 1)."""
    run = data_dir / "run"
    fit = start_fit(long_run(data_dir, run), "--trainer.max_steps", "100000", "--data.num_workers", "2")
    wait_for(run / "checkpoints" / "last.ckpt", fit)
    os.killpg(fit.pid, signal.SIGINT)
    out, err = fit.communicate(timeout=120)
    assert fit.returncode == INTERRUPTED, err
    assert "Traceback" not in err and "exited unexpectedly" not in err
    assert "interrupted by Ctrl-C at step" in out and "resume: lmproject fit" in out
    assert step_of(run / "checkpoints" / "last.ckpt") >= 2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_saves_the_step_reached_and_exits_143(data_dir):
    run = data_dir / "run"
    fit = start_fit(long_run(data_dir, run), "--trainer.max_steps", "100000")
    wait_for(run / "checkpoints" / "last.ckpt", fit)
    fit.terminate()
    out, err = fit.communicate(timeout=120)
    assert fit.returncode == TERMINATED, err
    assert "terminated by SIGTERM: saving last.ckpt after this step" in err
    reached = int(out.split("terminated by SIGTERM at step ")[1].split("/")[0])
    assert step_of(run / "checkpoints" / "last.ckpt") == reached


@pytest.mark.slow
def test_a_time_capped_run_says_so_exits_124_and_a_resume_gets_the_full_time_again(data_dir, capsys):
    run = data_dir / "run"
    config = str(long_run(data_dir, run, max_time="00:00:00:01", val_check_interval=1000))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--trainer.max_steps", "100000"])
    assert exit_info.value.code == TIME_LIMIT
    out = capsys.readouterr().out
    assert "stopped by the time limit (trainer.max_time 00:00:00:01)" in out
    assert "--trainer.max_time null removes it" in out
    first = step_of(run / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:  # Lightning's Timer counted the first run's second too
        main(["fit", "--config", config, "--trainer.max_steps", "100000", "--ckpt_path", "last"])
    assert exit_info.value.code == TIME_LIMIT
    assert step_of(run / "checkpoints" / "last.ckpt") > first


@pytest.mark.slow
def test_a_finished_fit_prints_its_summary_with_the_next_commands(data_dir, capsys):
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    main(["fit", "--config", config, "--trainer.max_steps", "8"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("lmproject fit: finished at step 8/8 (8 steps in this run, ")
    assert f"  tokens: {8 * BATCH * TINY_ARCH['context_length']:,} in this run" in lines[1]
    assert lines[2].startswith("  loss: train ") and "val " in lines[2]
    assert lines[3] == f"  checkpoint: {run / 'checkpoints' / 'last.ckpt'}"
    assert lines[4] == f"  next: lmproject validate --config {config} --trainer.max_steps 8 --ckpt_path last"
    assert "lmproject: model: " in captured.err and "GFLOPs per training token" in captured.err


@pytest.mark.slow
def test_the_row_a_stop_writes_holds_values_measured_for_it(data_dir):
    """The last row of an interrupted run repeated the previous row's throughput and elapsed time."""
    run = data_dir / "run"
    config = long_run(data_dir, run, log_every_n_steps=3, callbacks=[
        {"class_path": f"{SigintAt.__module__}.SigintAt", "init_args": {"step": 5}},
    ])  # fmt: skip
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--trainer.max_steps", "100"])
    with open(run / "logs" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["throughput/tokens_per_s"]]
    assert [int(row["step"]) for row in rows][-2:] == [2, 4]  # steps 3 and 5 (0-based 2 and 4)
    assert rows[-1]["time/elapsed_s"] != rows[-2]["time/elapsed_s"]
    assert rows[-1]["throughput/tokens_per_s"] != rows[-2]["throughput/tokens_per_s"]


@pytest.mark.slow
def test_a_resume_applies_a_changed_schedule_and_refuses_a_changed_optimizer(data_dir, capsys):
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    main(["fit", "--config", config, "--trainer.max_steps", "4"])
    capsys.readouterr()
    main(
        [
            "fit",
            "--config",
            config,
            "--trainer.max_steps",
            "6",
            "--ckpt_path",
            "last",
            "--model.lr_max",
            "0.5",
        ]
    )
    assert "lmproject: model.lr_max=0.5 (the checkpoint's run had 0.01)" in capsys.readouterr().err
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["hyper_parameters"]["lr_max"] == 0.5
    assert resumed["lr_schedulers"][0]["base_lrs"] == [0.5]
    assert yaml.safe_load((run / "logs" / "version_1" / "config.yaml").read_text())["model"]["lr_max"] == 0.5
    message = fails(
        [
            "fit",
            "--config",
            config,
            "--trainer.max_steps",
            "8",
            "--ckpt_path",
            "last",
            "--model.betas",
            "[0.8, 0.9]",
        ],
        capsys,
    )
    assert "--model.betas=[0.8, 0.9] differs from the checkpoint's [0.9, 0.95]" in message
    assert "cannot change on a resume" in message


@pytest.mark.slow
def test_a_diverged_run_writes_no_checkpoint_with_non_finite_weights(data_dir, capsys):
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    argv = ["fit", "--config", config, "--trainer.max_steps", "20", "--model.lr_max=1e30"]
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                *argv,
                "--model.lr_min",
                "0",
                "--model.max_grad_norm",
                "null",
                "--checkpoint.every_n_train_steps",
                "1",
            ]
        )
    assert exit_info.value.code == DIVERGED
    captured = capsys.readouterr()
    assert "lmproject fit: diverged at step" in captured.out
    for path in (run / "checkpoints").glob("*.ckpt"):
        weights = torch.load(path, weights_only=True)["state_dict"]
        assert all(bool(torch.isfinite(tensor).all()) for tensor in weights.values()), path


@pytest.mark.slow
def test_validate_refuses_a_checkpoint_with_non_finite_weights_by_name(data_dir, capsys):
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    main(["fit", "--config", config, "--trainer.max_steps", "2"])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"]["model.layers.1.ffn.w2.weight"][0, 0] = float("nan")
    write_checkpoint(checkpoint, data_dir / "nan.ckpt")
    message = fails(["validate", "--config", config, "--ckpt_path", str(data_dir / "nan.ckpt")], capsys)
    assert "model.layers.1.ffn.w2.weight holds NaN or infinite values" in message


@pytest.mark.slow
def test_a_second_fit_on_a_run_directory_in_use_is_refused_naming_the_holder(data_dir):
    run = data_dir / "run"
    config = write_config(data_dir, run)
    run.mkdir()
    with open(run / LOCK_FILE, "w") as holder:  # another process's lock (this test process's own fd)
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        second = start_fit(config, "--trainer.max_steps", "2")
        out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert err.strip().splitlines()[-1] == (
        f"lmproject: error: {run}: another lmproject fit is running in this run directory (pid 4242); "
        "wait for it to end, or choose another --trainer.default_root_dir"
    )
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_last_is_the_newest_checkpoint_when_a_kill_cut_the_rewrite_of_last_ckpt(data_dir):
    run, checkpoints = data_dir / "run", data_dir / "run" / "checkpoints"
    config = str(write_config(data_dir, run))
    main(["fit", "--config", config, "--trainer.max_steps", "2"])
    older = (checkpoints / "last.ckpt").read_bytes()
    main(["fit", "--config", config, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    (checkpoints / "last.ckpt").write_bytes(older)  # last.ckpt still at step 2: its rewrite was killed
    assert find_last(checkpoints) == checkpoints / "epoch=0-step=4.ckpt"


@pytest.mark.slow
def test_a_checkpoint_damaged_in_its_bytes_and_its_digest_mark_is_refused(data_dir, capsys):
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    main(["fit", "--config", config, "--trainer.max_steps", "2"])
    damaged = bytearray((run / "checkpoints" / "last.ckpt").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    damaged[-COMMENT_LENGTH] ^= 0xFF  # the digest's mark: the file reads as one written without a digest
    (data_dir / "twice.ckpt").write_bytes(damaged)
    message = fails(["validate", "--config", config, "--ckpt_path", str(data_dir / "twice.ckpt")], capsys)
    assert "damaged checkpoint (the SHA-256 digest saved with it is gone or altered" in message


@pytest.mark.parametrize(
    ("flag", "value", "requirement"),
    [
        ("--trainer.log_every_n_steps", "0", "an integer >= 1 (0 logs no row)"),
        ("--trainer.max_epochs", "0", "-1 (no limit) or an integer >= 1"),
        ("--trainer.limit_train_batches", "0", "0 would train nothing"),
        ("--trainer.gradient_clip_val", "1.0", "null: clipping is model.max_grad_norm"),
    ],
)
def test_settings_that_would_quietly_train_nothing_are_refused_before_anything_is_written(
    data_dir, capsys, flag, value, requirement
):
    run = data_dir / "run"
    message = fails(["fit", "--config", str(write_config(data_dir, run)), flag, value], capsys)
    assert flag.removeprefix("--") in message and requirement in message
    assert not run.exists()
