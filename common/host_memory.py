"""Keep freed host memory in the process instead of handing it back to the kernel after every step.

glibc serves every large allocation with its own mmap and unmaps it on free. A training step on the CPU
allocates and frees many such tensors (AlexNet: the fp32 gradients of its largest dense weight, autocast's
bf16 weight copies), so each step page-faults and zero-fills them again, and kernel time takes a large share
of the run (docs/benchmarks: the step time with and without). Allocating from the heap and not trimming it
makes those pages reusable; the price is that the process keeps its peak footprint until it exits, which a
training run mostly does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_UP_TO = 2**30  # bytes of free heap top kept before trimming


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Tune glibc's malloc for reuse; returns False (and changes nothing) on other C libraries."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))


def trim_heap() -> bool:
    """The opposite, once, for long-lived servers: hand freed heap pages back after a big one-off load."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
