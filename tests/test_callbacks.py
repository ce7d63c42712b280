"""ThroughputMonitor's default peak FLOP/s: Lightning's table (completed for the H200) for the GPU and the
precision in use."""

from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from lmproject.lit.callbacks import ThroughputMonitor
from lmproject.lit.clock import IntervalClock
from lmproject.nn import ModelConfig

TINY = SimpleNamespace(
    model=SimpleNamespace(
        config=ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64)
    )
)  # what setup reads


# The H200 is not in Lightning's table: device_peak_flops completes it.
@pytest.mark.parametrize("gpu", ["NVIDIA H100 80GB HBM3", "NVIDIA H200"])
@pytest.mark.parametrize(
    ("precision", "peak"), [("bf16-mixed", 989.4e12), ("16-mixed", 989.4e12), ("32-true", 66.9e12)]
)
def test_default_peak_is_the_h100_figure_for_the_training_precision(gpu, precision, peak):
    trainer = SimpleNamespace(
        precision=precision, strategy=SimpleNamespace(root_device=torch.device("cuda", 0))
    )
    monitor = ThroughputMonitor()
    with (
        mock.patch("torch.cuda.get_device_name", return_value=gpu),
        mock.patch("lightning.fabric.accelerators.cuda._is_ampere_or_later", return_value=True),
    ):  # float32 counts as tf32 only when torch.set_float32_matmul_precision allows it (default: not)
        monitor.setup(trainer, TINY, "fit")
    assert monitor.peak_flops == peak


def test_no_default_peak_on_a_cpu_and_an_explicit_one_is_kept():
    trainer = SimpleNamespace(
        precision="bf16-mixed", strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    monitor = ThroughputMonitor()
    monitor.setup(trainer, TINY, "fit")
    assert monitor.peak_flops is None
    explicit = ThroughputMonitor(peak_flops=1e12)
    explicit.setup(trainer, TINY, "fit")
    assert explicit.peak_flops == 1e12


def test_the_interval_clock_gives_each_measured_interval_once():
    clock = IntervalClock()
    clock.stop()  # no interval started: nothing measured
    assert clock.take() == []
    for _ in range(2):
        clock.start(torch.device("cpu"))
        clock.stop()
    first = clock.take()
    assert len(first) == 2 and all(ms >= 0 for ms in first)
    assert clock.take() == []  # taken: never repeated
