"""`lmproject plot`: curves of several runs from CSVLogger files, divergence found and marked."""

import math

import pytest
from metrics_files import write_metrics

from lmproject.tools import plot


def test_two_runs_one_diverged_make_a_png(tmp_path, capsys):
    good = [6.0 * math.exp(-step / 10) + 1.0 for step in range(40)]
    exploding = good[:20] + [good[19] * 3**k for k in range(1, 21)]
    write_metrics(tmp_path / "lr_1e-3", good)
    write_metrics(tmp_path / "lr_1e-1" / "csv" / "version_0", exploding)
    out = tmp_path / "plots" / "curves.png"
    assert plot.main([str(tmp_path / "lr_1e-3"), str(tmp_path / "lr_1e-1"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left
    printed = capsys.readouterr().out
    assert "lr_1e-1: diverged at step 20" in printed and "lr_1e-3: last val loss" in printed


def test_divergence_rules():
    steady = plot.Run("a", train=[(0, 5.0), (1, 3.0), (2, 3.4), (3, 2.9)])
    assert steady.diverged_at() is None
    flat = [(step, 2.0) for step in range(10)]
    noisy = plot.Run("noisy", train=[*flat, (10, 4.5), (11, 2.0), (12, 1.9), (13, 4.4), (14, 2.0)])
    assert noisy.diverged_at() is None  # single small-batch spikes above 2x the best are not a divergence
    exploding = plot.Run("b", train=[*flat, (10, 4.5), (11, 9.0), (12, 20.0), (13, 50.0)])
    assert exploding.diverged_at() == 10  # where the sustained rise began
    assert plot.Run("c", train=[(0, 5.0), (1, float("inf"))]).diverged_at() == 1
    assert plot.Run("d", train=[(0, 5.0), (1, 2.0)], val=[(0, 4.0), (5, 1.9), (9, 4.0)]).diverged_at() == 9


def test_nan_loss_and_missing_clock_are_handled(tmp_path, capsys):
    write_metrics(tmp_path / "nan_run", [5.0, 4.0, 3.0, 2.5, 2.4, 2.3], clock=False, nan_at=4)
    run = plot.read_run(tmp_path / "nan_run")
    assert run.diverged_at() == 4 and run.clock == [] and run.seconds(3) is None
    assert plot.main([str(tmp_path / "nan_run"), "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").exists()


def test_wall_clock_is_interpolated_between_logged_times():
    run = plot.Run("a", clock=[(0, 0.0), (10, 20.0)])
    assert run.seconds(5) == pytest.approx(10.0)


def test_bad_run_directories_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.csv").write_text("step,accuracy\n1,0.5\n")
    for folder, message in [
        ("missing", "no such run directory"),
        ("empty", "no metrics.csv"),
        ("bad", "expected a 'step' column and a loss column"),
    ]:
        with pytest.raises(SystemExit) as info:
            plot.main([str(tmp_path / folder), "--out", str(tmp_path / "o.png")])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_a_resumed_run_is_one_curve_and_validate_logs_are_left_out(tmp_path):
    logs = tmp_path / "run" / "logs"
    write_metrics(logs / "version_0", [5.0 - 0.1 * i for i in range(12)])  # interrupted after step 11
    write_metrics(logs / "version_1", [3.9 - 0.1 * i for i in range(10)], first_step=10)  # resumed at 10
    (logs / "version_2").mkdir()
    (logs / "version_2" / "metrics.csv").write_text("step,val/loss,val/perplexity\n0,2.9,18.2\n")
    run = plot.read_run(tmp_path / "run")
    assert [s for s, _ in run.train] == list(range(20))
    assert run.train[10][1] == pytest.approx(3.9)  # the resume's value replaces the repeated step
    assert run.clock[-1] == (19, pytest.approx(0.5 * 9 + 0.5 * 9))  # continues from the clock at step 9
    assert all(step > 0 for step, _ in run.val)


def test_a_run_that_fit_stopped_with_an_error_is_marked(tmp_path, capsys):
    write_metrics(tmp_path / "lr_1e-1", [5.0, 4.0, 3.5, 3.4, 3.3, 3.2])  # NaN stopped fit before logging it
    (tmp_path / "lr_1e-1" / "fit.status").write_text("2\n")
    write_metrics(tmp_path / "lr_1e-3", [5.0, 4.0, 3.5, 3.4, 3.3, 3.2])
    (tmp_path / "lr_1e-3" / "fit.status").write_text("0\n")
    runs = [str(tmp_path / "lr_1e-1"), str(tmp_path / "lr_1e-3")]
    assert plot.main([*runs, "--out", str(tmp_path / "c.png")]) == 0
    printed = capsys.readouterr().out
    assert "lr_1e-1: stopped at step 5 (fit exit status 2)" in printed
    assert "lr_1e-3: last val loss 3.4000 at step 4" in printed


@pytest.mark.slow
def test_a_folder_of_runs_plots_each_run_as_its_own_curve(tmp_path, capsys):
    sweep = tmp_path / "runs" / "lr"
    write_metrics(sweep / "1e-3" / "logs" / "version_0", [5.0 - 0.1 * i for i in range(10)])
    write_metrics(sweep / "1e-3" / "logs" / "version_1", [4.0 - 0.1 * i for i in range(5)], first_step=10)
    write_metrics(sweep / "1e-1" / "logs" / "version_0", [5.0] * 5 + [5.0 * 3**k for k in range(1, 6)])
    assert [name for _, name in plot.expand_runs(sweep)] == ["1e-1", "1e-3"]
    assert plot.expand_runs(sweep / "1e-3") == [(sweep / "1e-3", "1e-3")]
    assert plot.main([str(sweep), "--out", str(tmp_path / "c.png")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["1e-1: diverged at step 5", "1e-3: last val loss 3.7000 at step 14"]
    assert plot.main([str(tmp_path / "runs"), "--out", str(tmp_path / "d.png")]) == 0  # names keep the path
    assert capsys.readouterr().out.startswith("lr/1e-1: diverged at step 5\nlr/1e-3: last val loss")


def test_a_run_folder_that_also_holds_other_runs_is_refused(tmp_path, capsys):
    write_metrics(tmp_path / "run" / "logs" / "version_0", [5.0, 4.0, 3.0])
    write_metrics(tmp_path / "run" / "other" / "logs" / "version_0", [5.0, 4.0, 3.0])
    with pytest.raises(SystemExit) as info:
        plot.main([str(tmp_path / "run"), "--out", str(tmp_path / "o.png")])
    assert info.value.code == 2
    assert "holds its own logs and other runs' (other)" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_a_metrics_file_cut_off_mid_row_plots_what_is_whole(tmp_path, capsys):
    write_metrics(tmp_path / "run", [3.0, 2.5, 2.0])
    metrics = tmp_path / "run" / "metrics.csv"
    metrics.write_text(metrics.read_text() + "0,3,1.")  # killed while Lightning wrote the row of step 3
    run = plot.read_run(tmp_path / "run")
    assert run.train == [(0, 3.0), (1, 2.5), (2, 2.0)]
    assert f"{metrics}, line 5: row cut off, left out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"step,train/loss\n1,2.0\n2,\xff\xfe\n", "metrics.csv: invalid UTF-8 at byte offset 24"),
        (b"step,train/loss\n1,2.0,7\n2,1.5\n", "metrics.csv, line 2: 3 fields, the header has 2"),
        (b"step,train/loss\n1\n2,1.5\n", "metrics.csv, line 2: 1 fields, the header has 2"),
    ],
)
def test_a_damaged_metrics_file_is_a_one_line_error(tmp_path, capsys, content, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_bytes(content)
    with pytest.raises(SystemExit) as info:
        plot.main([str(tmp_path / "run"), "--out", str(tmp_path / "o.png")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_a_test_log_beside_the_training_logs_is_left_out(tmp_path, capsys):
    """`lmproject test` writes a log of test/loss only: plot read it as a training log and failed."""
    logs = tmp_path / "run" / "logs"
    write_metrics(logs / "version_0", [5.0 - 0.1 * i for i in range(12)])
    (logs / "version_1").mkdir()
    (logs / "version_1" / "metrics.csv").write_text("epoch,step,test/loss,test/perplexity\n0,0,3.9,49.4\n")
    assert plot.main([str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 0
    assert "run: last val loss 4.2000 at step 9" in capsys.readouterr().out


@pytest.mark.parametrize(("suffix", "magic"), [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".PNG", b"\x89PNG")])
def test_the_picture_has_the_format_its_name_says(tmp_path, suffix, magic):
    write_metrics(tmp_path / "run", [3.0, 2.5, 2.0])
    out = tmp_path / f"curves{suffix}"
    assert plot.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize(
    ("name", "message"), [("c.txt", "a .txt name; give a picture name: "), ("c", "no suffix")]
)
def test_an_out_name_that_is_no_picture_format_is_refused(tmp_path, capsys, name, message):
    """(`--out c.txt` got PNG bytes.)"""
    write_metrics(tmp_path / "run", [3.0, 2.5, 2.0])
    with pytest.raises(SystemExit) as info:
        plot.main([str(tmp_path / "run"), "--out", str(tmp_path / name)])
    [line] = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and line.startswith(
        f"lmproject plot: error: --out {tmp_path / name}: {message}"
    )
    assert ".pdf" in line and ".png" in line and ".svg" in line
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("step", ["inf", "-1", "2.5", "nan"])
def test_a_step_that_is_no_whole_number_is_a_one_line_error(tmp_path, capsys, step):
    """(A step of inf was an OverflowError traceback.)"""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text(f"step,train/loss\n0,2.0\n{step},1.5\n")
    with pytest.raises(SystemExit) as info:
        plot.main([str(tmp_path / "run"), "--out", str(tmp_path / "o.png")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"line 3: step is {step}, expected a whole number >= 0")


def test_a_run_that_stopped_before_logging_a_row_is_listed_not_fatal(tmp_path, capsys):
    """A sweep point that diverged before its first logged row has a fit.status but no metrics.csv: plot
    failed with `no metrics.csv`, so `make ablations` failed, though a diverged run is a result."""
    write_metrics(tmp_path / "baseline", [5.0, 4.0, 3.5])
    (tmp_path / "baseline" / "fit.status").write_text("0\n")
    (tmp_path / "nope" / "logs" / "version_0").mkdir(parents=True)
    (tmp_path / "nope" / "fit.status").write_text("3\n")
    runs = [str(tmp_path / "baseline"), str(tmp_path / "nope")]
    assert plot.main([*runs, "--out", str(tmp_path / "c.png")]) == 0
    assert "nope: stopped before its first logged step (fit exit status 3)" in capsys.readouterr().out
    (tmp_path / "nope" / "fit.status").write_text("0\n")  # finished, yet no log: still an error
    with pytest.raises(SystemExit):
        plot.main([*runs, "--out", str(tmp_path / "c.png")])
    assert "no metrics.csv" in capsys.readouterr().err
