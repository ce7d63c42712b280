"""`lmproject plot RUN_DIR... --out PICTURE`: learning curves of several runs in one picture.

Each run is read from its Lightning CSVLogger files (every metrics.csv below RUN_DIR, one per invocation,
joined in version order so a resumed run is one curve), or from a metrics.csv given directly. A folder that
holds several runs (e.g. runs/lr with runs/lr/1e-3/logs/... and runs/lr/1e-2/logs/...) gives one curve per
run, named by its path below that folder. The left panel draws train and val loss against the optimizer
step, the right panel against wall-clock seconds when the run logged them (a column named in
WALL_CLOCK_COLUMNS; steps in between take interpolated times).

A run diverged where its loss is NaN/inf, or where the running mean of its last SMOOTHING train losses
exceeds DIVERGENCE_FACTOR times the lowest running mean before (val losses, already averages, are compared
unsmoothed), so one noisy small-batch step is not a divergence; the step reported is the first exploded
loss in that window. That point gets an X and the legend says at which step. A run whose fit.status
(written by experiments.mk) holds a non-zero exit status stopped early, e.g. on a NaN loss: its last step
gets the X; one that stopped so early that it logged no row at all (fit.status but no metrics.csv) is listed
in the legend with its exit status. Logs without train or val loss (`lmproject test`'s, predict's) are left
out of a run's curves.

The picture's format is the one --out's suffix names (png, pdf, svg, ...: those matplotlib writes).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmproject.atomic import atomic_write, naming_output
from lmproject.errors import ArgumentParser, UserError, run_cli
from lmproject.tokenizer.files import read_text

TRAIN_COLUMNS = ("train/loss", "train/loss_step", "train_loss")
VAL_COLUMNS = ("val/loss", "val_loss")
WALL_CLOCK_COLUMNS = ("time/elapsed_s", "elapsed_s", "wall_time", "time")
DIVERGENCE_FACTOR = 2.0
SMOOTHING = 5  # train losses in the running mean that the divergence rule compares
LOG_FOLDERS = ("logs", "csv", "lightning_logs")  # logger folders between a run directory and version_N


@dataclass
class Run:
    """The curves of one run: (step, value) pairs, and the (step, seconds) pairs of the wall clock."""

    name: str
    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    clock: list[tuple[int, float]] = field(default_factory=list)
    exit_status: int | None = None  # of `lmproject fit`, when experiments.mk recorded it in fit.status

    def verdict(self) -> tuple[int | None, str]:
        """(step to mark with an X or None, one-line summary): diverged, stopped by an error, or fine."""
        if not self.train and not self.val:
            return None, f"stopped before its first logged step (fit exit status {self.exit_status})"
        step = self.diverged_at()
        kind = "val" if self.val else "train"
        last_step, last_loss = (self.val or self.train)[-1]
        if step is not None:
            return step, f"diverged at step {step}"
        if self.exit_status:  # e.g. a NaN loss stops fit before it is logged
            last_step = max(s for s, _ in self.train + self.val)
            return last_step, f"stopped at step {last_step} (fit exit status {self.exit_status})"
        return None, f"last {kind} loss {last_loss:.4f} at step {last_step}"

    def diverged_at(self) -> int | None:
        """First step where the train (else val) loss is non-finite or explodes (see the module docstring)."""
        for curve, window in ((self.train, SMOOTHING), (self.val, 1)):
            step = _explosion(curve, window)
            if step is not None:
                return step
        return None

    def seconds(self, step: int) -> float | None:
        """Wall-clock seconds at `step`, linearly interpolated between logged times (None if none)."""
        if not self.clock:
            return None
        import numpy as np

        steps, times = zip(*self.clock, strict=True)
        return float(np.interp(step, steps, times))


def _explosion(curve: list[tuple[int, float]], window: int) -> int | None:
    """First step with a non-finite loss, or where the mean of the last `window` losses is above
    DIVERGENCE_FACTOR times the lowest such mean so far: then the window's first loss above that bound."""
    best = math.inf
    for i, (step, loss) in enumerate(curve):
        if not math.isfinite(loss):
            return step
        recent = curve[max(0, i - window + 1) : i + 1]
        mean = sum(value for _, value in recent) / len(recent)
        if mean > DIVERGENCE_FACTOR * best:
            return next(s for s, value in recent if value > DIVERGENCE_FACTOR * best)
        best = min(best, mean)
    return None


def find_metrics(run_dir: Path) -> list[Path]:
    """The metrics.csv files of a run in order: RUN_DIR itself if it is a CSV file, else every metrics.csv
    below it sorted by the logger's version number (one per invocation: fit, its resumes, validate...)."""
    if run_dir.is_file() and run_dir.suffix == ".csv":
        return [run_dir]
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    found = sorted(run_dir.rglob("metrics.csv"), key=lambda p: (_version(p.parent.name), p.stat().st_mtime))
    if not found:
        raise UserError(f"{run_dir}: no metrics.csv (is it a run directory with a CSV logger?)")
    return found


def _run_root(metrics: Path) -> Path:
    """The run directory a metrics.csv belongs to: above its version_N and logger folders."""
    folder = metrics.parent
    if folder.name.startswith("version_"):
        folder = folder.parent
    return folder.parent if folder.name in LOG_FOLDERS else folder


def expand_runs(path: Path) -> list[tuple[Path, str]]:
    """(run directory, curve name) for each run in `path`: the path itself when it holds one run, else
    every run directory below it, named by its path relative to `path`."""
    if path.is_file():
        return [(path, path.stem)]
    if _failed_unlogged(path):
        return [(path, path.name)]
    roots = sorted({_run_root(metrics) for metrics in find_metrics(path)})
    if len(roots) == 1:
        return [(path, path.name)]
    if path in roots:
        nested = ", ".join(str(root.relative_to(path)) for root in roots if root != path)
        raise UserError(f"{path}: holds its own logs and other runs' ({nested}); plot them separately")
    return [(root, str(root.relative_to(path))) for root in roots]


def _failed_unlogged(run_dir: Path) -> bool:
    """Whether `run_dir` is a run that fit left with a non-zero exit status before it logged any row (a loss
    that diverged at once): a result of a sweep, not a missing run."""
    status = run_dir / "fit.status"
    return status.is_file() and _read_status(status) != 0 and not any(run_dir.rglob("metrics.csv"))


def _read_status(path: Path) -> int:
    text = read_text(path).strip()
    if not text.lstrip("-").isdigit():
        raise UserError(f"{path}: expected the exit status of lmproject fit, got {text[:40]!r}")
    return int(text)


def _version(folder: str) -> int:
    number = folder.removeprefix("version_")
    return int(number) if number.isdigit() else -1


def _first_present(header: list[str], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in header), None)


def read_metrics(path: Path, name: str, other_logs: bool = False) -> Run | None:
    """The losses and wall clock in one metrics.csv. A last row with fewer fields than the header (the
    file of a run killed while writing it) is left out with a note; such a row elsewhere is an error.
    A log without a step and a train or val loss column is an error, or None with `other_logs` (a run's
    folder also holds the logs of test and predict)."""
    rows = csv.reader(io.StringIO(read_text(path), newline=""))
    header = next(rows, [])
    train_col, val_col = _first_present(header, TRAIN_COLUMNS), _first_present(header, VAL_COLUMNS)
    clock_col = _first_present(header, WALL_CLOCK_COLUMNS)
    if "step" not in header or not (train_col or val_col):
        if other_logs:
            return None
        raise UserError(
            f"{path}: expected a 'step' column and a loss column ({TRAIN_COLUMNS[0]} or {VAL_COLUMNS[0]})"
        )
    run = Run(name)
    lines = [(rows.line_num, fields) for fields in rows if fields]
    for number, fields in lines:
        if len(fields) != len(header):
            if number == lines[-1][0] and len(fields) < len(header):
                print(f"lmproject plot: {path}, line {number}: row cut off, left out", file=sys.stderr)
                break
            raise UserError(f"{path}, line {number}: {len(fields)} fields, the header has {len(header)}")
        row = dict(zip(header, fields, strict=True))
        try:
            step = float(row["step"])
            if not step.is_integer() or step < 0:  # int(inf) was an OverflowError traceback
                raise UserError(f"{path}, line {number}: step is {row['step']}, expected a whole number >= 0")
            for column, curve in ((train_col, run.train), (val_col, run.val), (clock_col, run.clock)):
                if column and row[column]:
                    curve.append((int(step), float(row[column])))
        except ValueError as err:
            raise UserError(f"{path}, line {number}: not a number ({err})") from None
    return run


def read_run(run_dir: Path, name: str | None = None) -> Run:
    """One run's curves from its training logs. A resume's log replaces the steps it repeats and its wall
    clock continues where the previous log's stopped; logs without train loss (validate, predict) are left
    out unless no log has any."""
    name = name or (run_dir.name if run_dir.is_dir() else run_dir.stem)
    status = run_dir / "fit.status"
    run = Run(name, exit_status=_read_status(status) if status.is_file() else None)
    if _failed_unlogged(run_dir):
        return run
    paths = find_metrics(run_dir)
    parts = [read_metrics(path, name, other_logs=len(paths) > 1) for path in paths]
    if not any(parts):
        read_metrics(paths[-1], name)  # its error: no loss column in any log
    parts = [part for part in parts if part is not None]
    fits = [part for part in parts if part.train] or [part for part in parts if part.val]
    if not fits:
        raise UserError(f"{run_dir}: no loss values logged yet")
    for part in fits:
        first = min(step for step, _ in part.train + part.val)
        run.train = [p for p in run.train if p[0] < first] + part.train
        run.val = [p for p in run.val if p[0] < first] + part.val
        kept = [p for p in run.clock if p[0] < first]
        offset = kept[-1][1] if kept else 0.0
        run.clock = kept + [(step, seconds + offset) for step, seconds in part.clock]
    return run


def _draw(ax, run: Run, color: str, use_clock: bool) -> None:
    """Train loss (thin line) and val loss (dashed, dots) of one run; an X where it diverged."""
    for curve, style in (
        (run.train, {"lw": 1, "alpha": 0.8}),
        (run.val, {"ls": "--", "marker": "o", "ms": 3}),
    ):
        if not curve:
            continue
        xs = [run.seconds(s) if use_clock else s for s, _ in curve]
        ax.plot(xs, [v for _, v in curve], color=color, **style)
    step, _ = run.verdict()
    if step is not None:
        curve = run.train or run.val
        finite = [v for s, v in curve if s <= step and math.isfinite(v)]
        x = run.seconds(step) if use_clock else step
        ax.plot([x], [finite[-1] if finite else 0.0], marker="X", ms=11, color=color, mec="black")


def plot_runs(runs: list[Run], out: Path, title: str | None = None) -> None:
    """Write the two-panel picture atomically (a reader never sees a half-written file), in the format
    `out`'s suffix names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    finite = [v for r in runs for _, v in r.train + r.val if math.isfinite(v)]
    starts = [next((v for _, v in r.train + r.val if math.isfinite(v)), None) for r in runs]
    top = max((v for v in starts if v is not None), default=1.0)  # the highest initial loss
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        step, summary = run.verdict()
        label = run.name + (f" ({summary})" if step is not None or not (run.train or run.val) else "")
        by_step.plot([], [], color=color, label=label)
        _draw(by_step, run, color, use_clock=False)
        if run.clock:
            _draw(by_time, run, color, use_clock=True)
    for ax, xlabel in ((by_step, "optimizer step"), (by_time, "wall-clock seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (solid: train, dashed: val)")
        ax.grid(alpha=0.3)
        if finite:
            ax.set_ylim(min(finite) * 0.95, top * 1.05)  # exploded losses run off the top, marked with X
    if not any(run.clock for run in runs):
        by_time.text(0.5, 0.5, "no wall-clock column in these logs", ha="center", transform=by_time.transAxes)
    by_step.legend(fontsize=8)
    fig.suptitle(title or "learning curves")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with naming_output(out), atomic_write(out, "wb") as f:
            fig.savefig(f, format=picture_format(out), dpi=110)
    finally:
        plt.close(fig)


def picture_format(out: Path) -> str:
    """The format --out's suffix names, refused unless matplotlib can write it (a .txt got PNG bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = out.suffix.lower().removeprefix(".")
    if suffix not in formats:
        given = f"a .{suffix} name" if suffix else "no suffix"
        raise UserError(
            f"--out {out}: {given}; give a picture name: {', '.join(f'.{f}' for f in sorted(formats))}"
        )
    return suffix


def main(argv: list[str] | None = None) -> int:
    """`lmproject plot RUN_DIR... [--out PICTURE] [--title TEXT]`."""
    import sys

    p = ArgumentParser(prog="lmproject plot", description="Plot the learning curves of runs.")
    p.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="runs, folders of runs, or metrics.csv"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("learning_curves.png"),
        help="picture to write (.png, .pdf, .svg, ...)",
    )
    p.add_argument("--title", help="figure title")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        picture_format(args.out)  # before reading any run
        runs = [read_run(run_dir, name) for path in args.runs for run_dir, name in expand_runs(path)]
        plot_runs(runs, args.out, args.title)
        for r in runs:
            print(f"{r.name}: {r.verdict()[1]}")
        print(f"wrote {args.out}")
        return 0

    return run_cli(run, "lmproject plot")


if __name__ == "__main__":
    raise SystemExit(main())
