"""How much freed memory a server process keeps for reuse (glibc's malloc thresholds).

A full batch answer is a few megabytes, made twice per request (the answer's bytes, then the
response head joined to them) and freed at once. glibc serves such a block from a fresh
``mmap`` (its threshold starts at 128 KB and only grows to the largest block freed so far) and
gives the top of its heap back to the kernel once more than twice that lies free, so each
answer's pages were faulted in anew: ~1,850 page faults and ~3 ms of system time per
1,000-customer answer of the demo bundle (bench/RESULTS.md, "Batch `/recommend`, fourth
pass"). Fixing both thresholds at ``MALLOC_KEEP_MB`` keeps that much freed memory in the
process for the next request instead. Set in the gunicorn master before it loads the bundle
and forks (workers inherit it); glibc only (elsewhere, or with 0, nothing changes).

Written here rather than taken from a library: it is two ``mallopt`` calls; the environment
variable glibc reads for the same thresholds (``GLIBC_TUNABLES``) must be set before the
process starts, which neither ``make run`` nor the benchmarks' servers do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(megabytes: int, libc: Any | None = None) -> bool:
    """Let this process keep up to ``megabytes`` of freed memory (and serve blocks below that
    size from its heap); True when glibc took both settings."""
    if megabytes <= 0:
        return False
    if libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return False
        try:
            libc = ctypes.CDLL(name)
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
            return False
    else:
        mallopt = libc.mallopt
    size = megabytes * 1024 * 1024
    # mallopt returns 1 on success; the mmap threshold is capped at 32 MB on 64-bit glibc
    return bool(mallopt(M_TRIM_THRESHOLD, size)) and bool(
        mallopt(M_MMAP_THRESHOLD, min(size, 32 * 1024 * 1024))
    )
