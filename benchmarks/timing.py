"""Timing helpers shared by the benchmarks: synchronised wall time, interleaved repeats."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(arms: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device,
                cpu_seconds: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds per call of each arm, arms run in turn (ABAB...) so that machine drift hits
    all of them alike; ``warmup`` rounds first, not recorded. ``cpu_seconds``, if given, is
    filled with this process's CPU seconds per call (less disturbed by other processes)."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(warmup + repeats):
        for name, fn in arms.items():
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            if round_ >= warmup:
                seconds[name].append(time.perf_counter() - start)
                if cpu_seconds is not None:
                    cpu_seconds.setdefault(name, []).append(time.process_time() - cpu_start)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of a[i] / b[i]: arms timed in the same round share the machine's state then,
    so the per-round ratio cancels slow drift that the ratio of two medians keeps."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def result(ratio_name: str, ratio: float, target: str | None, met: bool | None, **details) -> dict:
    """One benchmark's record: the ratio first, then what it was measured on."""
    return {"name": ratio_name, "ratio": round(ratio, 4), "target": target, "met": met, **details}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model} ({torch.get_num_threads()} threads)"
