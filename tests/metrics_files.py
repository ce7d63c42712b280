"""metrics.csv files shaped as CSVLogger writes them, for the plot and start-up tests."""

from __future__ import annotations

import csv


def write_metrics(folder, losses, val_every=5, clock=True, nan_at=None, first_step=0):
    """A CSVLogger-shaped metrics.csv: sparse rows, train and val losses on separate rows."""
    folder.mkdir(parents=True)
    columns = ["epoch", "step", "train/loss", "val/loss", "lr"] + (["time/elapsed_s"] if clock else [])
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for step, loss in enumerate(losses, start=first_step):
            row = {"epoch": 0, "step": step, "train/loss": "nan" if step == nan_at else loss, "lr": 1e-3}
            if clock:
                row["time/elapsed_s"] = 0.5 * (step - first_step)
            writer.writerow(row)
            if step % val_every == val_every - 1:
                writer.writerow({"epoch": 0, "step": step, "val/loss": loss + 0.1})
