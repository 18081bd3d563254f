"""CPU priority for a worker's work that no request waits for: a replacement's start, an exit.

With one worker per core, a replacement worker starts on the core its predecessor is still
serving from, and the predecessor leaves on the core its replacement now serves from. At equal
priority the scheduler shares the core between them: building the app (~15 ms of CPU) and
tearing down an address space (~6 ms) came in slices of up to 4 ms, each holding up every
request in flight (bench/RESULTS.md). At ``SCHED_IDLE`` that work runs when the serving worker
waits, and a serving worker that wakes takes the core back at once.

Lowering is one-way for an unprivileged process (going back needs ``CAP_SYS_NICE``), so it is
only ever applied to a thread that ends once its work is done, or to a process on its way out,
and a thread started from a lowered thread would inherit its priority: nothing lowered here
starts threads. Linux keeps both policies and nice values per thread.
"""

from __future__ import annotations

import contextlib
import os

IDLE = "SCHED_IDLE"
NICE = "nice 19"


def lower_thread(tid: int = 0) -> str | None:
    """Put thread ``tid`` (0: the calling one) at the lowest priority it can take.

    ``SCHED_IDLE`` where allowed, else nice 19. Returns which one, or None when neither is.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return IDLE
    with contextlib.suppress(AttributeError, OSError):
        # PRIO_PROCESS with a thread id: that thread only (Linux)
        os.setpriority(os.PRIO_PROCESS, tid or _thread_id(), 19)
        return NICE
    return None


def lower_process() -> None:
    """Every thread of this process at the lowest priority (a process about to exit)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        lower_thread(tid)


def _thread_id() -> int:
    import threading

    return threading.get_native_id()
