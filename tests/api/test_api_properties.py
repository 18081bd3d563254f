"""Property (hypothesis): the order of a request's keys and the whitespace in its JSON change
nothing in the answer."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WHITESPACE = st.text(alphabet=" \t\r\n", max_size=3)


def _render(value, data) -> str:
    """JSON text of ``value`` with keys in a drawn order and drawn whitespace between tokens."""
    ws = lambda: data.draw(WHITESPACE)  # noqa: E731
    if isinstance(value, dict):
        keys = data.draw(st.permutations(list(value)))
        items = [f"{ws()}{json.dumps(k)}{ws()}:{ws()}{_render(value[k], data)}{ws()}" for k in keys]
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(f"{ws()}{_render(v, data)}{ws()}" for v in value) + "]"
    return json.dumps(value)


@given(data=st.data())
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_key_order_and_whitespace_change_nothing(make_app, demo_request, scoring_headers, data):
    client = _client(make_app)
    path = data.draw(st.sampled_from(["/predict-segment", "/recommend"]))
    body = data.draw(
        st.sampled_from(
            [
                demo_request,
                {**demo_request, "top_k": 2, "explain": True},
                {"customers": [demo_request, {**demo_request, "customer_id": "c-2"}], "top_k": 1},
            ]
        )
    )
    if path == "/predict-segment":
        body = {k: v for k, v in body.items() if k not in ("top_k", "explain")}
    plain = client.post(path, json=body, headers=scoring_headers)
    text = data.draw(WHITESPACE) + _render(body, data) + data.draw(WHITESPACE)
    varied = client.post(
        path, data=text, headers={**scoring_headers, "Content-Type": "application/json"}
    )
    assert plain.status_code == 200
    assert varied.status_code == 200 and varied.get_json() == plain.get_json()


_APPS: dict = {}


def _client(make_app):
    # one app for every example (building one per example would dominate the run)
    if "app" not in _APPS:
        _APPS["app"] = make_app()
    return _APPS["app"].test_client()
