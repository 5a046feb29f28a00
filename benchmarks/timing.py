"""Small timing helpers shared by the benchmarks (medians: machines are noisy)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time in seconds of each `fn()`, the functions run in turn in every round.

    On a shared, noisy machine a burst of load then hits every contender alike, so ratios of
    the medians compare like with like.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(median_time(fn, repeats=1, warmup=0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Memory one call of `fn` needs above what is allocated before it.

    CUDA: `max_memory_allocated` during the call minus the allocation before it. CPU (Linux):
    the resident-set high-water mark is reset to the current resident set (writing 5 to
    /proc/self/clear_refs), and the peak is the high-water mark after the call (VmHWM) minus
    the resident set before it (VmRSS). `resource.getrusage(...).ru_maxrss` cannot be reset.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS
    fn()
    return (status_kib("VmHWM") - before) * 1024


def machine() -> str:
    """One line describing where the benchmark ran."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"
    )


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
