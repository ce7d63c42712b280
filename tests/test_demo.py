"""`python -m lmproject.tools.demo`: the README's first command, end to end at toy scale; folder safety."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lmproject.errors import UserError
from lmproject.tools import demo


def test_prepare_out_replaces_only_a_previous_demo(tmp_path):
    out = tmp_path / "demo"
    demo.prepare_out(out)
    (out / "old.txt").write_text("from the last demo")
    demo.prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == [demo.MARKER]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="was not made by the demo"):
        demo.prepare_out(mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_config_gets_the_demo_paths_and_tiny_sizes(tmp_path):
    import yaml

    path = demo.write_config(
        tmp_path / "c.yaml", demo.TINY, tmp_path / "tok", tmp_path / "bpe", tmp_path / "run"
    )
    config = yaml.safe_load(path.read_text())
    assert config["data"]["train_path"] == str(tmp_path / "tok" / "train.npy")
    assert config["trainer"]["default_root_dir"] == str(tmp_path / "run")
    shipped = yaml.safe_load(demo.CONFIG.read_text())["model"]
    assert config["model"]["arch"] == shipped["arch"] | {"vocab_size": demo.TINY.vocab_size} | (
        {"context_length": 32, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 96}
    )  # the tiny sizes replace the shipped ones, the other fields (rope_theta) stay
    assert config["model"]["lr_max"] == shipped["lr_max"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tiny_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "lmproject.tools.demo", "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("vocab.json", "merges.txt"):
        assert (out / "tokenizer" / name).stat().st_size > 0
    for split in ("train", "valid"):
        ids = np.load(out / "tokens" / f"{split}.npy", mmap_mode="r")
        assert ids.dtype == np.uint16 and len(ids) > 1000 and ids.max() < demo.TINY.vocab_size
    assert (out / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "run").rglob("metrics.csv"))
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    sample = (out / "sample.txt").read_text()
    assert sample.startswith(demo.PROMPT) and len(sample) > len(demo.PROMPT) + 1
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert record["prompt"] == demo.PROMPT and sample == record["prompt"] + record["completion"] + "\n"
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == ["stories", "tokenizer", "tokens", "fit", "validate", "predict", "plot"]
    assert f"Sample ({out / 'sample.txt'})" in result.stdout
