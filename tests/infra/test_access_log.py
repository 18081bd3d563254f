"""The access log of gunicorn.conf.py: one JSON object per line, the same fields on both paths
(written straight to gunicorn's stream handler, or through logging for any other handler)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import logging
from pathlib import Path

import pytest
from gunicorn.config import Config

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {
    "time",
    "remote",
    "method",
    "path",
    "status",
    "bytes",
    "duration_ms",
    "pid",
    "user_agent",
    "request_id",
}


@pytest.fixture(scope="module")
def conf():
    spec = importlib.util.spec_from_file_location(
        "gunicorn_conf_under_test", ROOT / "gunicorn.conf.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Response:
    status = "201 CREATED"
    sent = 312


ENVIRON = {
    "REMOTE_ADDR": "127.0.0.1",
    "REQUEST_METHOD": "POST",
    "PATH_INFO": "/recommend",
    "HTTP_USER_AGENT": "curl/8",
    "HTTP_X_API_KEY": "secret-never-logged",
}


def _logger(conf, accesslog: str):
    cfg = Config()
    cfg.set("accesslog", accesslog)
    return conf.JsonAccessLogger(cfg)


def test_stream_handler_gets_one_json_line_per_request(conf):
    logger = _logger(conf, "-")
    (handler,) = logger.access_log.handlers
    assert type(handler) is logging.StreamHandler
    handler.stream = io.StringIO()
    before = dt.datetime.now(dt.UTC)
    logger.access(_Response(), None, ENVIRON, dt.timedelta(microseconds=1500))
    logger.access(_Response(), None, ENVIRON, dt.timedelta(seconds=2))
    lines = handler.stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == FIELDS
    assert (first["status"], first["bytes"], first["duration_ms"]) == (201, 312, 1.5)
    assert json.loads(lines[1])["duration_ms"] == 2000.0
    stamp = dt.datetime.fromisoformat(first["time"])
    assert abs((stamp - before).total_seconds()) < 60
    assert first["time"].endswith("+00:00") and len(first["time"].split(".")[1]) == 9
    assert "secret-never-logged" not in handler.stream.getvalue()


def test_other_handlers_get_the_same_line_through_logging(conf, tmp_path):
    path = tmp_path / "access.log"
    logger = _logger(conf, str(path))
    assert type(logger.access_log.handlers[0]) is not logging.StreamHandler
    logger.access(_Response(), None, ENVIRON, dt.timedelta(microseconds=1500))
    for handler in logger.access_log.handlers:
        handler.flush()
    record = json.loads(path.read_text().splitlines()[0])
    assert set(record) == FIELDS and record["path"] == "/recommend"
