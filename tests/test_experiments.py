"""experiments.mk and its overlays: every point names a real overlay whose keys the training CLI accepts."""

import inspect
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = ROOT / "experiments.mk"


def make_variable(name: str) -> list[str]:
    match = re.search(rf"^{name} \?= (.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"{name} not set in experiments.mk"
    return match.group(1).split()


@pytest.mark.parametrize("variable, folder", [("LR_POINTS", "lr"), ("BATCH_POINTS", "batch_size")])
def test_sweep_points_are_overlays_with_known_keys(variable, folder):
    from lmproject.lit.datamodule import TokenDataModule
    from lmproject.lit.module import LanguageModel

    accepted = {
        "model": set(inspect.signature(LanguageModel).parameters),
        "data": set(inspect.signature(TokenDataModule).parameters),
    }
    points = make_variable(variable)
    files = sorted(p.stem for p in (ROOT / "configs" / "sweeps" / folder).glob("*.yaml"))
    assert set(points) <= set(files) and set(files) - set(points) <= {"bs_1"}  # bs_1 is opt-in
    for point in points:
        overlay = yaml.safe_load((ROOT / "configs" / "sweeps" / folder / f"{point}.yaml").read_text())
        for section, values in overlay.items():
            assert set(values) <= accepted[section], f"{point}: unknown keys in {section}"


def test_lr_points_match_their_names():
    for point in make_variable("LR_POINTS"):
        overlay = yaml.safe_load((ROOT / "configs" / "sweeps" / "lr" / f"{point}.yaml").read_text())
        lr = float(point.removeprefix("lr_"))
        assert overlay["model"] == {"lr_max": lr, "lr_min": pytest.approx(lr / 10)}


def test_make_plans_one_run_per_point_and_a_plot(tmp_path):
    included = "include experiments.mk" in (ROOT / "Makefile").read_text()
    files = ["-f", "Makefile"] + ([] if included else ["-f", "experiments.mk"])
    plan = subprocess.run(
        ["make", "-n", *files, "lr-sweep", "ablations", f"RUNS={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    fits = re.findall(r"lmproject fit .*?--trainer.default_root_dir (\S+)", plan)
    expected = [f"{tmp_path}/lr/{p}" for p in make_variable("LR_POINTS")]
    expected += [f"{tmp_path}/ablations/{a}" for a in ["baseline", *make_variable("ABLATIONS")]]
    assert fits == expected
    assert plan.count("lmproject plot") == 2
    for ablation in make_variable("ABLATIONS"):
        assert f"--config configs/ablations/{ablation}.yaml" in plan


def test_every_ablation_has_its_overlay():
    for ablation in make_variable("ABLATIONS"):
        assert (ROOT / "configs" / "ablations" / f"{ablation}.yaml").is_file(), ablation


@pytest.mark.parametrize("status, recorded", [(0, True), (3, True), (2, False), (130, False)])
def test_only_finished_or_diverged_runs_are_recorded_as_results(tmp_path, status, recorded):
    fake_lmproject = tmp_path / "lmproject"
    fake_lmproject.write_text(f"#!/bin/sh\nexit {status}\n")
    fake_lmproject.chmod(0o755)
    no_install = tmp_path / "no_install.mk"
    no_install.write_text("install:\n")
    target = tmp_path / "lr" / "lr_1e-3" / "fit.status"
    make = subprocess.run(
        ["make", "-s", "-f", "experiments.mk", "-f", str(no_install), f"RUNS={tmp_path}",
         f"LM={fake_lmproject}", str(target)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert (make.returncode == 0) == recorded, make.stderr
    assert target.is_file() == recorded  # a missing file or typo is retried next time, not skipped forever
    if recorded:
        assert target.read_text().strip() == str(status)


def test_a_sweep_point_without_an_overlay_is_refused_before_its_folder_is_made(tmp_path):
    """(`make lr-sweep LR_POINTS=lr_nope` left an empty runs/lr/lr_nope after fit refused the config.)"""
    no_install = tmp_path / "no_install.mk"
    no_install.write_text("install:\n")
    runs = tmp_path / "runs"
    make = subprocess.run(
        ["make", "-s", "-f", "experiments.mk", "-f", str(no_install), f"RUNS={runs}", "LM=true", "lr-sweep",
         "LR_POINTS=lr_nope"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert make.returncode == 2
    assert "experiments.mk: configs/sweeps/lr/lr_nope.yaml: no such overlay" in make.stderr
    assert not runs.exists()
