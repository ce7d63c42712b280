"""Intervals of device work timed without waiting for the device (the optimizer step's, for the log)."""

from __future__ import annotations

import time

import torch


class IntervalClock:
    """start()/stop() around some work, as often as it runs; take() returns the milliseconds of the
    intervals measured since the previous take. On a GPU an interval is a pair of CUDA events, read only once
    both have completed (an interval still running waits for a later take, nothing is synchronized); on a
    CPU the work is done when its calls return, so the wall clock measures it."""

    def __init__(self):
        self._start: torch.cuda.Event | float | None = None
        self._running: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._measured: list[float] = []

    def start(self, device: torch.device) -> None:
        if device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        if isinstance(self._start, float):
            self._measured.append((time.perf_counter() - self._start) * 1e3)
        else:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._running.append((self._start, end))
        self._start = None

    def take(self) -> list[float]:
        """Milliseconds of each interval completed since the last take (possibly none)."""
        running = []
        for start, end in self._running:
            if end.query():
                self._measured.append(start.elapsed_time(end))
            else:
                running.append((start, end))
        self._running = running
        measured, self._measured = self._measured, []
        return measured
