"""Shared benchmark helpers: repeat a measurement, report median and min-max (machines are noisy)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} kernel {platform.release()} cpus {os.cpu_count()} "
          f"python {platform.python_version()}")


def reps(fn: Callable[[], float], n: int = 7, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(n)]


def fmt(values: list[float], unit: str, scale: float = 1.0, digits: int = 1) -> str:
    v = [x * scale for x in values]
    return f"median {statistics.median(v):.{digits}f} {unit} (min {min(v):.{digits}f} - max {max(v):.{digits}f}, n={len(v)})"


def median(values: list[float]) -> float:
    return statistics.median(values)
