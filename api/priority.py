"""CPU priority for a worker's work that no request waits for: a replacement's start, an exit.

With one worker per core, a replacement worker starts on the core its predecessor is still
serving from, and the predecessor leaves on the core its replacement now serves from. At equal
priority the scheduler shares the core between them: building the app (~15 ms of CPU) and
tearing down an address space (~6 ms) came in slices of up to 4 ms, each holding up every
request in flight (bench/RESULTS.md). At ``SCHED_IDLE`` that work runs when the serving worker
waits, and a serving worker that wakes takes the core back at once.

A thread at ``SCHED_IDLE`` still gets its small share of a busy core, and the scheduler hands it
that share a whole slice at a time (a 4 ms tick on this project's machine) during which a
runnable serving worker waits. So the start-up also hands the core back every ~1,000
interpreter calls (~0.5 ms of work; :func:`yielding`): with the serving worker busy, a slice
then costs it at most that.

Lowering is one-way for an unprivileged process (going back needs ``CAP_SYS_NICE``), so it is
only ever applied to a thread that ends once its work is done, or to a process on its way out,
and a thread started from a lowered thread would inherit its priority: nothing lowered here
starts threads. Linux keeps both policies and nice values per thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

IDLE = "SCHED_IDLE"
NICE = "nice 19"
#: interpreter events (calls, returns) between two offers of the core: ~0.5 ms of start-up work
YIELD_EVERY = 1000


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


@contextlib.contextmanager
def yielding(
    every: int = YIELD_EVERY, on_offer: Callable[[], object] | None = None
) -> Iterator[None]:
    """In the calling thread, offer the core to whatever else is runnable every ``every``
    interpreter events (``os.sched_yield``, which also lets go of the interpreter lock), calling
    ``on_offer`` first (a worker's heartbeat: it says the work is moving).

    A profile hook of this thread only, removed on exit (it costs ~0.1 us an event: ~6 ms on a
    replacement's ~15 ms start-up, at idle priority).
    """
    count = 0

    def offer(frame: object, event: str, arg: object) -> None:
        nonlocal count
        count += 1
        if count >= every:
            count = 0
            if on_offer is not None:
                on_offer()
            os.sched_yield()

    previous = sys.getprofile()
    sys.setprofile(offer)
    try:
        yield
    finally:
        sys.setprofile(previous)


def _thread_id() -> int:
    import threading

    return threading.get_native_id()
