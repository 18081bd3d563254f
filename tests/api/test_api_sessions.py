"""No cookie sessions: every request shares Flask's read-only null session (api/__init__.py)."""

from __future__ import annotations

import pytest
from flask import session
from flask.sessions import NullSession


def test_requests_share_one_read_only_null_session(app, client, scoring_headers, demo_request):
    seen = []
    with app.test_request_context("/"):
        seen.append(session._get_current_object())
    with app.test_request_context("/"):
        seen.append(session._get_current_object())
        assert isinstance(session._get_current_object(), NullSession)
        assert dict(session) == {}
        with pytest.raises(RuntimeError):
            session["x"] = 1
    assert seen[0] is seen[1]
    r = client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert r.status_code == 200 and "Set-Cookie" not in r.headers and "Cookie" not in r.vary
