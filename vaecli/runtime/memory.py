"""glibc's malloc and a training loop. Every step frees and re-allocates the same large tensors
(activations, gradients); with glibc's defaults the big ones come from mmap and the freed top of
the heap is handed back to the OS (trimmed), so each step pays page faults and zeroing again: on
the conv models that was seconds of system time per epoch on 2 cores (bench/images.py measures
it). `tune()` sets glibc once per process so that memory freed by one step is reused by the next:
every allocation comes from the heap (M_MMAP_MAX 0: raising the mmap threshold is not enough, glibc
caps it at 32 MiB and a resnet's activations at batch 128 are larger), and the heap is trimmed only
past TRIM_THRESHOLD of free memory at its top. The cost: the process keeps up to that much freed
memory instead of returning it (bench/images.py prints the peak resident memory both ways).

Nothing happens off glibc (macOS, musl, Windows), when the user set glibc's own settings
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ or GLIBC_TUNABLES: theirs win), or
with VAECLI_MALLOC=glibc (the benchmark's "glibc's defaults" side)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # mallopt's parameter numbers (malloc.h)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
GLIBC_DEFAULTS = {"VAECLI_MALLOC": "glibc"}  # the environment that leaves glibc's defaults alone

_done: str | None = None


def tune() -> str:
    """Set the thresholds (once per process); returns what was done: "tuned", or why not."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> str:
    if os.environ.get("VAECLI_MALLOC", "").lower() == "glibc":
        return "off (VAECLI_MALLOC=glibc)"
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return "off (the environment sets glibc's malloc)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "off (not glibc)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "off (no mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return "tuned" if ok else "off (mallopt refused)"
