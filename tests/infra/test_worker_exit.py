"""gunicorn.conf.py ``worker_exit``: a worker whose run loop ended cleanly leaves with
``os._exit(0)`` (no interpreter teardown), its buffered output and log lines written first, every
thread at idle priority (api/priority.py); any other worker leaves through gunicorn's own exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import atexit, importlib.util, logging, os, sys, threading
    spec = importlib.util.spec_from_file_location("conf_under_test", "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    log = logging.getLogger("exit-test")
    log.addHandler(logging.FileHandler(sys.argv[2]))
    log.warning("last log line")
    atexit.register(lambda: print("teardown ran"))

    class Worker:
        pass

    worker = Worker()
    worker.segsvc_exit_fast = sys.argv[1] == "clean"
    other = threading.Thread(target=threading.Event().wait, daemon=True)  # another thread
    other.start()
    exit_now = os._exit

    def exit_reporting(code):
        tids = [0, other.native_id]
        idle = [os.sched_getscheduler(t) == os.SCHED_IDLE for t in tids]
        print(f"exit at idle priority: {idle}")
        sys.stdout.flush()
        exit_now(code)

    os._exit = exit_reporting
    print("last output line")  # stdout is a pipe here: block-buffered until flushed
    conf.worker_exit(None, worker)
    print("gunicorn's own exit")
    """
)


def _run(kind: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / f"{kind}.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind, str(log)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, log.read_text()


def test_a_clean_exit_skips_teardown_and_loses_no_output(tmp_path):
    done, log = _run("clean", tmp_path)
    assert done.returncode == 0, done.stderr
    # atexit handlers did not run; both threads were at idle priority when it left
    assert done.stdout.splitlines() == ["last output line", "exit at idle priority: [True, True]"]
    assert log.splitlines() == ["last log line"]


def test_any_other_exit_is_left_to_gunicorn(tmp_path):
    done, log = _run("failed", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["last output line", "gunicorn's own exit", "teardown ran"]
    assert log.splitlines() == ["last log line"]
