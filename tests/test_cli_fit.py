"""`lmproject fit` then `validate` with configs/smoke.yaml, as a user runs them: separate processes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SMOKE = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"


def lmproject(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmproject.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_smoke_config_fits_and_validates_end_to_end(tmp_path):
    ids = np.random.default_rng(0).integers(0, 512, 20_000).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    np.save(tmp_path / "valid.npy", ids[:2000])
    data = ["--data.train_path", "train.npy", "--data.val_path", "valid.npy"]
    fit = lmproject("fit", "--config", str(SMOKE), *data, "--train_tokens", "4096", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "max_steps=8" in fit.stderr + fit.stdout  # 4096 tokens / (8 x 64) per step

    validate = lmproject("validate", "--config", str(SMOKE), *data, "--ckpt_path", "last", cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "val/perplexity" in validate.stdout
    rows = list(csv.DictReader((tmp_path / "runs/smoke/logs/version_1/metrics.csv").open()))
    assert 5.5 < float(rows[-1]["val/loss"]) < 7.0  # uniform random ids: about ln(512) = 6.24

    missing = lmproject("validate", "--config", str(SMOKE), "--ckpt_path", "last", cwd=tmp_path)
    assert missing.returncode == 2
    assert (
        missing.stderr.strip().splitlines()[-1]
        == "lmproject: error: data/smoke/valid.npy: token file not found"
    )
