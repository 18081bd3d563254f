"""api/priority.py: a lowered thread runs at idle priority, and only that thread (Linux)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from api import priority


def _policy(tid: int = 0) -> tuple[int, int]:
    return os.sched_getscheduler(tid), os.getpriority(
        os.PRIO_PROCESS, tid or threading.get_native_id()
    )


def test_a_lowered_thread_runs_at_idle_priority_and_no_other_thread_does():
    before = _policy()
    seen: list = []

    def work() -> None:
        seen.append(priority.lower_thread())
        seen.append(_policy())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    how, (policy, nice) = seen
    assert how in (priority.IDLE, priority.NICE)
    assert policy == os.SCHED_IDLE if how == priority.IDLE else nice == 19
    assert _policy() == before  # the calling thread (and process) unchanged


def test_a_process_on_its_way_out_lowers_every_thread():
    script = textwrap.dedent(
        """
        import os, threading
        from api import priority
        other = threading.Thread(target=threading.Event().wait, daemon=True)
        other.start()
        priority.lower_process()
        for tid in (0, other.native_id):
            print(os.sched_getscheduler(tid) == os.SCHED_IDLE
                  or os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id()) == 19)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True"], done.stderr


def test_yielding_offers_the_core_every_so_many_calls_in_this_thread_only(monkeypatch):
    offers: list[int] = []
    monkeypatch.setattr(os, "sched_yield", lambda: offers.append(threading.get_native_id()))

    def work() -> None:
        for _ in range(100):
            abs(-1)  # a call and its return: two events

    previous = sys.getprofile()
    with priority.yielding(every=10):
        work()
        other = threading.Thread(target=work)  # another thread: not offered
        other.start()
        other.join()
    assert len(offers) >= 200 // 10 and set(offers) == {threading.get_native_id()}
    assert sys.getprofile() is previous  # the hook is gone
    count = len(offers)
    work()
    assert len(offers) == count
