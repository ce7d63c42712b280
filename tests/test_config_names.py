"""`--config NAME` finds the shipped configs from any directory; a wrong key gets the closest valid one."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lmproject.errors import UserError
from lmproject.lit.run_config import find_config, prepare_words, shipped_config_names, shipped_configs_dir
from lmproject.settings import closest_key

REPO = Path(__file__).resolve().parent.parent


def lmproject(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmproject.lit.commands", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("tinystories.yaml", "tinystories.yaml"),
        ("tinystories", "tinystories.yaml"),
        ("configs/tinystories.yaml", "tinystories.yaml"),
        ("recipes/modern.yaml", "recipes/modern.yaml"),
        ("recipes/modern", "recipes/modern.yaml"),
    ],
)
def test_a_name_finds_the_shipped_config(tmp_path, monkeypatch, name, file):
    monkeypatch.chdir(tmp_path)
    assert Path(find_config(name)) == shipped_configs_dir() / file


def test_a_path_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinystories.yaml").write_text("model: {}\n")
    assert find_config("tinystories.yaml") == "tinystories.yaml"
    assert find_config("{model: {}}") == "{model: {}}"  # inline YAML goes to the parser as it is


def test_an_unknown_name_lists_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"--config tinystoriez: no such file.*shipped: .*tinystories") as err:
        prepare_words(["fit", "--config", "tinystoriez"])
    assert "\n" not in str(err.value) and "recipes/modern" in str(err.value)
    assert {"demo", "tinystories", "owt", "recipes/modern"} <= set(shipped_config_names())


@pytest.mark.slow
def test_fit_by_name_prints_its_config_from_an_empty_directory(tmp_path):
    result = lmproject("fit", "--config", "tinystories.yaml", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "d_model: 512" in result.stdout and "vocab_size: 10000" in result.stdout
    overlay = lmproject(
        "fit", "--config", "tinystories", "--config", "recipes/muon", "--print_config", cwd=tmp_path
    )
    assert overlay.returncode == 0, overlay.stderr
    assert "optimizer: muon" in overlay.stdout


@pytest.mark.slow
def test_a_misplaced_key_gets_the_closest_valid_one(tmp_path):
    result = lmproject(
        "fit", "--config", "demo.yaml", "--model.d_model", "64", "--print_config", cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean --model.arch.d_model?" in lines[0], result.stderr
    assert closest_key("model.lr_mx", ["model.lr_max", "model.lr_min", "data.seed"]) == "model.lr_max"
    assert closest_key("trainer.nothing_like_it", ["model.lr_max"]) is None


@pytest.mark.slow
def test_a_built_wheel_carries_the_configs(tmp_path):
    """The wheel's package data is built from configs/ (setup.py), not a second copy in the repository."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w",
         str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("lmproject-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("lmproject/configs/")}
    expected = {
        f"lmproject/configs/{path.relative_to(REPO / 'configs')}" for path in REPO.glob("configs/**/*.yaml")
    }
    assert expected and expected <= shipped
    assert not (REPO / "lmproject" / "configs").exists()
