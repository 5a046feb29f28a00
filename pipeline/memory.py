"""Keeping freed memory in a worker's process for reuse (glibc's malloc).

glibc hands every block above its mmap threshold (at most 32 MB) back to the system when it is
freed, and the next such block faults in fresh pages: on a CPU a teacher's activations and
outputs (a batch of 8 semantic maps is 81 MB) and the pipeline's large temporaries pay page
faults on every call, and handing them back costs the kernel about as much again. A worker
that keeps its freed memory reuses the same pages from panorama to panorama. Measured on 2
cores, interleaved pairs: Depth Anything V2 Small (`make bench-labels`' architecture) over a
panorama's 20 patches 19.0-21.3 s -> 13.6-16.8 s (four pairs); the pipeline's non-teacher work
with all three no-cost teachers 9% less at 512x1024 (median of four pairs, 0.337 -> 0.306 s)
and 5% at 1024x2048 (three pairs). Its price: the process holds its peak for as long as it
runs; the peak itself over 24 panoramas was 0.1 GB higher at 512x1024 (1.65-1.71 -> 1.78-1.80
GB) and the same at 1024x2048 (2.50 GB).

Only glibc has these settings; elsewhere nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

# mallopt parameters and glibc's defaults (malloc/malloc.c).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 1 << 30  # bytes free at the top of the heap before it is trimmed


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc, else None."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """From now on this process's malloc keeps freed blocks for reuse: none is mapped on its own
    (so none is unmapped when freed) and the heap is not trimmed. Returns whether it could
    (glibc only)."""
    libc = _glibc()
    if libc is None:
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return all([bool(libc.mallopt(parameter, value)) for parameter, value in settings])  # both tried


def release_freed_memory() -> None:
    """Undo `keep_freed_memory`: large blocks mapped on their own again, the heap trimmed at
    glibc's default threshold, and what the heap holds free given back to the system now."""
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[None]:
    """Keep freed memory for reuse (`keep_freed_memory`) inside the block, and give it back
    after it (`release_freed_memory`, also when only one setting took); nothing when not
    `enabled`."""
    if not enabled:
        yield
        return
    keep_freed_memory()
    try:
        yield
    finally:
        release_freed_memory()
