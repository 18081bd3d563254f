"""The worker roster and recycling: a replacement is ready before the worker it replaces leaves.

The master side (:class:`api.fleet.Recycler`) is driven here with a stand-in for gunicorn's
Arbiter (the attributes and methods it uses); tests/reliability runs it inside a real gunicorn.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from api.fleet import Recycler, Roster


def _ready(roster: Roster, *pids: int) -> None:
    for pid in pids:
        roster.publish(pid, ready=True, version="v1", folder="v1")


@dataclass
class _Worker:
    age: int


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _add(self, msg: str, *args: object) -> None:
        self.lines.append(msg % args)

    info = warning = error = _add


@dataclass
class _Arbiter:
    """What Recycler touches on gunicorn's Arbiter; signals are recorded, not sent."""

    num_workers: int
    WORKERS: dict[int, _Worker] = field(default_factory=dict)
    signals: list[tuple[int, int]] = field(default_factory=list)
    log: _Log = field(default_factory=_Log)
    next_pid: int = 1000

    #: what the recycler's ``spawning`` said at each fork (the child's copy of it)
    spawned_as_replacement: list[bool] = field(default_factory=list)
    recycler: object = None

    def spawn_worker(self) -> int:
        if self.recycler is not None:
            self.spawned_as_replacement.append(self.recycler.spawning)
        self.next_pid += 1
        self.WORKERS[self.next_pid] = _Worker(age=self.next_pid)
        return self.next_pid

    def kill_worker(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))

    def reap(self, pid: int, roster: Roster) -> None:
        """The worker exited: gunicorn forgets it, child_exit clears its roster files."""
        del self.WORKERS[pid]
        roster.remove(pid)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_roster_lists_live_workers_and_retirement_requests(tmp_path):
    roster = Roster(tmp_path)
    _ready(roster, 12, 11)
    assert [e["pid"] for e in roster.entries()] == [11, 12]
    assert roster.entry(12)["ready"] and roster.entry(13) is None
    assert roster.request_retirement(11)
    assert roster.retirement_requests() == {11}
    roster.remove(11)
    assert roster.retirement_requests() == set()
    assert [e["pid"] for e in roster.entries()] == [12]


def test_a_single_worker_is_stopped_only_once_its_replacement_is_ready(tmp_path):
    roster = Roster(tmp_path)
    server = _Arbiter(num_workers=1, WORKERS={7: _Worker(age=1)})
    _ready(roster, 7)
    recycler = Recycler(roster)
    recycler.step(server)
    assert server.signals == [] and len(server.WORKERS) == 1  # nobody asked

    roster.request_retirement(7)
    recycler.step(server)
    new = recycler.new
    assert new in server.WORKERS and server.num_workers == 2  # gunicorn keeps the extra one
    recycler.step(server)
    assert server.signals == []  # the replacement has not loaded its bundle yet: 7 serves

    _ready(roster, new)
    recycler.step(server)
    assert server.signals == [(7, signal.SIGTERM)]
    recycler.step(server)
    assert server.signals == [(7, signal.SIGTERM)]  # sent once, 7 finishes its requests

    server.reap(7, roster)
    recycler.step(server)
    assert server.num_workers == 1 and list(server.WORKERS) == [new]
    assert recycler.old is None
    assert any("recycled worker 7" in line for line in server.log.lines)


def test_one_replacement_at_a_time_oldest_first(tmp_path):
    roster = Roster(tmp_path)
    server = _Arbiter(num_workers=2, WORKERS={21: _Worker(age=2), 20: _Worker(age=1)})
    _ready(roster, 20, 21)
    roster.request_retirement(21)
    roster.request_retirement(20)
    recycler = Recycler(roster)
    recycler.step(server)
    first = recycler.new
    assert recycler.old == 20 and server.num_workers == 3
    recycler.step(server)
    assert len(server.WORKERS) == 3  # 21 waits for its turn

    _ready(roster, first)
    recycler.step(server)
    server.reap(20, roster)
    recycler.step(server)
    assert server.num_workers == 2
    recycler.step(server)
    assert recycler.old == 21 and recycler.new != first and server.num_workers == 3


def test_a_replacement_that_cannot_load_is_stopped_and_the_old_worker_keeps_serving(tmp_path):
    roster = Roster(tmp_path)
    clock = _Clock()
    server = _Arbiter(num_workers=1, WORKERS={7: _Worker(age=1)})
    _ready(roster, 7)
    roster.request_retirement(7)
    recycler = Recycler(roster, retry_after=30.0, clock=clock)
    recycler.step(server)
    new = recycler.new
    roster.publish(new, ready=False, version=None, folder=None)  # its bundle was refused
    recycler.step(server)
    assert server.signals == [(new, signal.SIGTERM)]

    server.reap(new, roster)
    recycler.step(server)
    assert server.num_workers == 1 and list(server.WORKERS) == [7]
    recycler.step(server)
    assert len(server.WORKERS) == 1  # no new attempt before retry_after
    clock.now += 31
    recycler.step(server)
    assert len(server.WORKERS) == 2 and recycler.old == 7


def test_a_replacement_that_never_gets_ready_is_given_up(tmp_path):
    roster = Roster(tmp_path)
    clock = _Clock()
    server = _Arbiter(num_workers=1, WORKERS={7: _Worker(age=1)})
    roster.request_retirement(7)
    recycler = Recycler(roster, ready_timeout=60.0, clock=clock)
    recycler.step(server)
    new = recycler.new
    clock.now += 30
    recycler.step(server)
    assert server.signals == []
    clock.now += 31
    recycler.step(server)
    assert server.signals == [(new, signal.SIGTERM)]


def test_no_replacement_while_gunicorn_is_short_of_workers(tmp_path):
    """A crashed worker is being replaced by gunicorn itself: recycling waits."""
    roster = Roster(tmp_path)
    server = _Arbiter(num_workers=2, WORKERS={7: _Worker(age=1)})
    roster.request_retirement(7)
    Recycler(roster).step(server)
    assert list(server.WORKERS) == [7] and server.num_workers == 2


def test_a_roll_out_replaces_every_worker_one_at_a_time(tmp_path):
    """After a SIGHUP roll-out the master queues every worker, asked or not."""
    roster = Roster(tmp_path)
    server = _Arbiter(num_workers=2, WORKERS={30: _Worker(age=1), 31: _Worker(age=2)})
    _ready(roster, 30, 31)
    recycler = Recycler(roster)
    recycler.replace([30, 31])
    replaced = []
    for _ in range(2):
        recycler.step(server)
        old, new = recycler.old, recycler.new
        assert len(server.WORKERS) == 3 and old not in replaced
        _ready(roster, new)
        recycler.step(server)
        assert server.signals[-1] == (old, signal.SIGTERM)
        server.reap(old, roster)
        recycler.step(server)
        replaced.append(old)
    assert replaced == [30, 31] and server.num_workers == 2
    recycler.step(server)
    assert len(server.WORKERS) == 2 and recycler.old is None  # nobody left to replace


def test_only_the_recyclers_own_forks_are_replacements(tmp_path):
    """A fork the recycler makes sees ``spawning`` (post_fork starts it at idle priority); one
    gunicorn makes itself (after a crash), even in the middle of a replacement, does not."""
    roster = Roster(tmp_path)
    server = _Arbiter(num_workers=1, WORKERS={7: _Worker(age=1)})
    recycler = server.recycler = Recycler(roster)
    _ready(roster, 7)
    roster.request_retirement(7)
    recycler.step(server)
    assert server.spawned_as_replacement == [True] and not recycler.spawning
    server.spawn_worker()  # gunicorn replacing a crashed worker meanwhile
    assert server.spawned_as_replacement == [True, False]
