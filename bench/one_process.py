"""gunicorn with its one worker run in the master's own process, for tools that cannot follow a fork.

``valgrind --tool=callgrind`` can only be steered (``callgrind_control``) in the process it
started: a worker forked by gunicorn's master is out of its reach. This runs the same server
as ``python -m gunicorn`` with the same arguments (``-c gunicorn.conf.py wsgi:app``, or the bare
floor's defaults), except that the master, once started (its ``on_starting`` and ``when_ready``
hooks included), does not fork: it becomes the worker itself (``post_fork``, ``init_process``,
``post_worker_init``, then the worker's loop with every per-request hook), exactly the code a
forked worker runs per request. With one worker there is nothing else to supervise; the process
exits when the worker does (SIGTERM).

    python -m bench.one_process -c gunicorn.conf.py wsgi:app
"""

from __future__ import annotations

import os
import sys

from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.arbiter import Arbiter


class OneProcessArbiter(Arbiter):
    """An arbiter whose single worker runs in its own process (no fork, no supervision)."""

    def spawn_worker(self) -> int:
        """Become the worker: gunicorn's post-fork steps, without the fork."""
        self.worker_age += 1
        # the worker watches its parent: ours is whoever started this process
        worker = self.worker_class(
            self.worker_age,
            os.getppid(),
            self.LISTENERS,
            self.app,
            self.timeout / 2.0,
            self.cfg,
            self.log,
        )
        self.cfg.pre_fork(self, worker)
        worker.pid = os.getpid()
        self.WORKERS[worker.pid] = worker
        self.log.info("Running the worker in the master's process (pid: %s)", worker.pid)
        self.cfg.post_fork(self, worker)
        try:
            worker.init_process()
        finally:
            worker.tmp.close()
            self.cfg.worker_exit(self, worker)
        sys.exit(0)


def main() -> None:
    """Parse gunicorn's own command line and run it in one process."""
    if "--workers" in sys.argv or "-w" in sys.argv:
        raise SystemExit("bench.one_process runs exactly one worker")
    os.environ["WEB_CONCURRENCY"] = "1"
    app = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="bench.one_process")
    OneProcessArbiter(app).run()


if __name__ == "__main__":
    main()
