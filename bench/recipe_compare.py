"""The modern-recipe switches side by side (`make recipe-compare`): baseline, each switch alone, the recipe.

For each variant (the base config configs/recipe_compare.yaml plus its overlays from configs/recipes/):
1. a learning-rate sweep at seed 0, each run scored by `lmproject validate` on VAL_WINDOWS held-out windows:
   LR_GRID for the baseline, each switch alone and the recipe (SWEPT_ON_GRID), plus one point (a factor of
   2) past an edge of the grid that wins; the recipe without ReLU² at the recipe's best rate;
2. time per optimizer step of every variant, measured in this process (while the sweep runs) in interleaved
   rounds (one thread, the same batch), so that all variants see the same machine load;
3. a second seed (init and data order) at every variant's best rate (SEEDED); a variant's equal-wall-clock
   budget is the baseline's steps x (baseline s/step) / (its s/step), and when that differs from the
   baseline's step count by more than CLOCK_TOLERANCE its seeds are trained again at that budget.
Writes RUNS/results.md (tables), RUNS/results.json and RUNS/curves.png (val and train loss of each variant's
best seed-0 run against steps and against seconds, the seconds from the interleaved timing). Every training
run uses one thread; WORKERS runs go at once. Finished runs (their result.json) are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

from lmproject.accounting import merge_configs
from lmproject.lit.module import LanguageModel
from lmproject.tools.plot import plot_runs, read_run
from lmproject.training.optim import clip_gradients

BASE = Path("configs/recipe_compare.yaml")
RECIPES = Path("configs/recipes")
VARIANTS = {
    "baseline": [],
    "muon": ["muon"],
    "qk_norm": ["qk_norm"],
    "relu2": ["relu2"],
    "zero_init": ["zero_init"],
    "softcap": ["softcap"],
    "wsd": ["wsd"],
    "modern": ["modern"],
    "modern_swiglu": ["muon", "qk_norm", "zero_init", "softcap", "wsd"],  # the recipe without ReLU²
}
LR_GRID = (5e-3, 1e-2, 2e-2)
SWEPT_ON_GRID = ("baseline", "muon", "qk_norm", "relu2", "zero_init", "softcap", "wsd", "modern")
LR_LIKE = {"modern_swiglu": "modern"}  # trained at that variant's best rate, not the baseline's
SEEDED = (*SWEPT_ON_GRID, *LR_LIKE)  # the variants trained with every seed of SEEDS
SEEDS = (0, 1)
VAL_WINDOWS = 256
CLOCK_TOLERANCE = 0.03
TIMING_ROUNDS, TIMING_STEPS = 15, 3


def model_settings(variant: str) -> dict:
    """The `model:` section of the base config with the variant's overlays applied (and the ReLU² FFN's
    d_ff rule, 4 x d_model, which an overlay written for one width cannot state for every base)."""
    settings = yaml.safe_load(BASE.read_text())["model"]
    for overlay in VARIANTS[variant]:
        settings = merge_configs(settings, yaml.safe_load((RECIPES / f"{overlay}.yaml").read_text())["model"])
    if settings["arch"].get("ffn") == "relu2":
        settings["arch"]["d_ff"] = 4 * settings["arch"]["d_model"]
    return settings


def base_steps() -> int:
    config = yaml.safe_load(BASE.read_text())
    return config["train_tokens"] // (
        config["data"]["batch_size"] * config["model"]["arch"]["context_length"]
    )


def run_dir(runs: Path, variant: str, lr: float, seed: int, steps: int) -> Path:
    suffix = "" if steps == base_steps() else f"_steps{steps}"
    return runs / variant / f"lr{lr:g}_seed{seed}{suffix}"


def train_and_validate(runs: Path, variant: str, lr: float, seed: int, steps: int) -> float:
    """`lmproject fit` then `lmproject validate` of one run (one thread); returns the final val loss."""
    out = run_dir(runs, variant, lr, seed, steps)
    result = out / "result.json"
    if result.is_file():
        return json.loads(result.read_text())["val_loss"]
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(BASE.read_text())
    tokens = steps * config["data"]["batch_size"] * config["model"]["arch"]["context_length"]
    settings = model_settings(variant)
    common = [sys.executable, "-m", "lmproject.lit.commands"]
    configs = ["--config", str(BASE)] + [
        a for o in VARIANTS[variant] for a in ("--config", f"{RECIPES}/{o}.yaml")
    ]
    args = configs + [
        f"--model.arch.d_ff={settings['arch']['d_ff']}", f"--model.lr_max={lr}", f"--model.lr_min={lr / 10}",
        f"--seed_everything={seed}", f"--data.seed={seed}", f"--trainer.default_root_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with open(out / "log.txt", "w") as log:
        for command in (
            common + ["fit", *args, f"--train_tokens={tokens}", "--ckpt_path=last"],
            common + ["validate", *args, f"--data.val_windows={VAL_WINDOWS}", "--ckpt_path=last"],
        ):
            status = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            if status == 3:  # diverged: a result, the worst one
                val_loss = math.inf
                break
            if status != 0:
                raise SystemExit(f"{' '.join(command)} failed with status {status}; see {out / 'log.txt'}")
        else:
            val_loss = _validate_loss(out)
    result.write_text(
        json.dumps({"variant": variant, "lr": lr, "seed": seed, "steps": steps, "val_loss": val_loss})
    )
    return val_loss


def _validate_loss(out: Path) -> float:
    """val/loss of the newest log without training rows: the `validate` run."""
    for metrics in sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))[
        ::-1
    ]:
        run = read_run(metrics)
        if not run.train and run.val:
            return run.val[-1][1]
    raise SystemExit(f"{out}: no validate log found")


def run_all(jobs: list[tuple], runs: Path, workers: int) -> list[float]:
    """Run jobs (variant, lr, seed, steps) WORKERS at a time, with a progress line per finished job."""
    start, done = time.perf_counter(), 0

    def one(job: tuple) -> float:
        nonlocal done
        loss = train_and_validate(runs, *job)
        done += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (len(jobs) - done)
        print(f"  [{done}/{len(jobs)}] {job[0]} lr {job[1]:g} seed {job[2]} steps {job[3]}: val {loss:.4f}"
              f"  ({elapsed:.0f} s, ETA {eta:.0f} s)", flush=True)  # fmt: skip
        return loss

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, jobs))


def sweep(runs: Path, workers: int) -> dict[str, dict[float, float]]:
    """Seed-0 val loss per variant and learning rate (see the module docstring for which rates)."""
    steps = base_steps()
    losses = {v: {} for v in VARIANTS}

    def train(points: list[tuple[str, float]]) -> None:
        results = run_all([(v, lr, 0, steps) for v, lr in points], runs, workers)
        for (v, lr), loss in zip(points, results, strict=True):
            losses[v][lr] = loss

    train([(v, lr) for v in SWEPT_ON_GRID for lr in LR_GRID])
    edges = []
    for v in SWEPT_ON_GRID:
        best = min(LR_GRID, key=losses[v].get)
        if best in (LR_GRID[0], LR_GRID[-1]):
            edges.append((v, best / 2 if best == LR_GRID[0] else best * 2))
    train(edges)
    best = {v: min(losses[v], key=losses[v].get) for v in SWEPT_ON_GRID}
    train([(v, best[LR_LIKE.get(v, "baseline")]) for v in VARIANTS if v not in SWEPT_ON_GRID])
    return losses


def time_per_step(variants: list[str]) -> dict[str, float]:
    """Seconds per optimizer step (forward, backward, clipping, optimizer, schedule) of each variant,
    measured round-robin on one thread with the same random batch, after one warm-up step each: the fastest
    of its steps, since load from other processes only ever adds time."""
    torch.set_num_threads(1)
    config = yaml.safe_load(BASE.read_text())
    batch, context = config["data"]["batch_size"], config["model"]["arch"]["context_length"]
    tokens = torch.randint(
        0,
        config["model"]["arch"]["vocab_size"],
        (batch, context + 1),
        generator=torch.Generator().manual_seed(0),
    )
    data = (tokens[:, :-1], tokens[:, 1:])
    trainers = {}
    for v in variants:
        module = LanguageModel(**{**model_settings(v), "cosine_cycle_iters": base_steps()})
        setup = module.configure_optimizers()
        trainers[v] = (module, setup["optimizer"], setup["lr_scheduler"]["scheduler"])
    samples = {v: [] for v in variants}
    for round_index in range(TIMING_ROUNDS + 1):
        for v in variants:
            module, optimizer, schedule = trainers[v]
            for _ in range(TIMING_STEPS if round_index else 1):
                begin = time.perf_counter()
                module._loss(data).backward()
                clip_gradients(module.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                if round_index:  # round 0 warms up
                    samples[v].append(time.perf_counter() - begin)
    return {v: min(s) for v, s in samples.items()}


def summary(values: list[float]) -> str:
    """mean ± half the spread (max - min) of the seeds."""
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {(max(values) - min(values)) / 2:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/recipes"), help="output folder")
    parser.add_argument("--workers", type=int, default=3, help="training runs at once (one thread each)")
    args = parser.parse_args(argv)
    steps = base_steps()
    print(f"recipe comparison: {len(VARIANTS)} variants, {steps} steps each, lr grid {LR_GRID}", flush=True)
    timing = args.runs / "seconds_per_step.json"
    # A rerun keeps the step times its equal-wall-clock runs were sized by, unless a variant is new.
    timed = timing.is_file() and set(VARIANTS) <= set(json.loads(timing.read_text()))
    with ThreadPoolExecutor(1) as timer:
        if not timed:
            print("timing each variant's step (interleaved, one thread) in the background", flush=True)
            measured = timer.submit(time_per_step, list(VARIANTS))
        print("learning-rate sweep (seed 0) ...", flush=True)
        losses = sweep(args.runs, args.workers)
        if not timed:
            args.runs.mkdir(parents=True, exist_ok=True)
            timing.write_text(json.dumps(measured.result()))
    seconds = json.loads(timing.read_text())
    print("  " + ", ".join(f"{v} {s * 1000:.0f} ms" for v, s in seconds.items()), flush=True)
    best_lr = {v: min(by_lr, key=by_lr.get) for v, by_lr in losses.items()}
    clock_steps = {v: round(steps * seconds["baseline"] / seconds[v]) for v in VARIANTS}
    clock_steps = {
        v: steps if abs(n - steps) <= CLOCK_TOLERANCE * steps else n for v, n in clock_steps.items()
    }
    seeds = {v: SEEDS if v in SEEDED else SEEDS[:1] for v in VARIANTS}
    jobs = [
        (v, best_lr[v], s, n) for v in VARIANTS for n in sorted({steps, clock_steps[v]}) for s in seeds[v]
    ]
    print("seeds at the best rates, equal-wall-clock budgets ...", flush=True)
    by_job = dict(zip(jobs, run_all(jobs, args.runs, args.workers), strict=True))
    results = {
        "seconds_per_step": seconds,
        "sweep": {v: {f"{lr:g}": loss for lr, loss in by_lr.items()} for v, by_lr in losses.items()},
        "best_lr": best_lr,
        "equal_tokens": {v: [by_job[(v, best_lr[v], s, steps)] for s in seeds[v]] for v in VARIANTS},
        "equal_clock_steps": clock_steps,
        "equal_clock": {v: [by_job[(v, best_lr[v], s, clock_steps[v])] for s in seeds[v]] for v in VARIANTS},
    }
    (args.runs / "results.json").write_text(json.dumps(results, indent=1))
    table = report(results, steps)
    (args.runs / "results.md").write_text(table)
    curves = []
    for v in VARIANTS:
        run = read_run(run_dir(args.runs, v, best_lr[v], 0, steps), name=v)
        run.clock = [(0, 0.0), (steps, steps * seconds[v])]  # interleaved timing, not the shared-load clock
        curves.append(run)
    plot_runs(curves, args.runs / "curves.png", title="recipe switches at their best lr (seed 0)")
    print(table + f"plot: {args.runs / 'curves.png'}", flush=True)
    return 0


def report(results: dict, steps: int) -> str:
    """The comparison table and the sweep table, in Markdown."""
    seconds, best_lr, clock_steps = (
        results["seconds_per_step"],
        results["best_lr"],
        results["equal_clock_steps"],
    )
    tokens, clock = results["equal_tokens"], results["equal_clock"]
    base_tokens, base_clock = statistics.mean(tokens["baseline"]), statistics.mean(clock["baseline"])
    lines = [
        f"Val loss (`lmproject validate`, {VAL_WINDOWS} windows of heldout.txt), mean ± half the spread of "
        f"seeds {SEEDS}. Equal tokens: {steps} steps each. Equal wall-clock: the baseline's {steps} steps' "
        "time at each variant's own s/step (interleaved timing, one thread).",
        "",
        "| variant | lr_max | equal tokens | Δ | s/step | steps in equal time | equal time | Δ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in VARIANTS:
        relative = seconds[v] / seconds["baseline"]
        cells = [v, f"{best_lr[v]:g}", summary(tokens[v]), f"{statistics.mean(tokens[v]) - base_tokens:+.4f}",
                 f"{seconds[v] * 1000:.0f} ms ({relative:.2f}x)", str(clock_steps[v]), summary(clock[v]),
                 f"{statistics.mean(clock[v]) - base_clock:+.4f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    rates = sorted({float(lr) for by_lr in results["sweep"].values() for lr in by_lr})
    lines += ["", "Learning-rate sweep (seed 0, val loss):", ""]
    lines += [
        "| variant | " + " | ".join(f"{lr:g}" for lr in rates) + " |",
        "| --- |" + " --- |" * len(rates),
    ]
    for v, by_lr in results["sweep"].items():
        lines.append(
            f"| {v} | "
            + " | ".join(f"{by_lr[f'{lr:g}']:.4f}" if f"{lr:g}" in by_lr else "" for lr in rates)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
