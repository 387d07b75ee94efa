"""Side-by-side timing: variants run in turn (A B, B A, ...) so drift and noise hit them alike.

A variant's figure is its best (shortest) round: other processes on a shared machine
only ever add time, so the minimum is the least disturbed measurement. Process CPU
seconds are kept beside wall seconds as a cross-check that neighbours barely move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timings:
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, list[Any]] = field(default_factory=dict)

    def best(self, name: str) -> float:
        """The shortest wall time of a variant."""
        return min(self.wall[name])

    def best_cpu(self, name: str) -> float:
        return min(self.cpu[name])

    def to_dict(self) -> dict:
        return {"wall_seconds": self.wall, "cpu_seconds": self.cpu}


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> Timings:
    """Every variant `repeats` times, the order flipping each round; what each call returned is kept."""
    timings = Timings({n: [] for n in variants}, {n: [] for n in variants}, {n: [] for n in variants})
    for round_ in range(repeats):
        for name in list(variants) if round_ % 2 == 0 else list(reversed(variants)):
            with Stopwatch() as watch:
                timings.outputs[name].append(variants[name]())
            timings.wall[name].append(watch.seconds)
            timings.cpu[name].append(watch.cpu_seconds)
    return timings


class Stopwatch:
    """`with Stopwatch() as watch: ...` then `watch.seconds` (wall) and `watch.cpu_seconds` (this process)."""

    def __enter__(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
