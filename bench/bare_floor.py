"""The bare floor: a plain Flask route under a plain sync gunicorn worker, nothing else.

It parses the JSON body and returns a constant, like the service's own ``POST /bench/floor``,
but without the service's server settings (no access log, no metrics, no API key, gunicorn's
default ``sync`` worker, which closes the connection after every answer). The serving benchmark
runs it in the same rounds as the service, so "x bare floor" says what our whole stack costs.

    gunicorn --workers 1 bench.bare_floor:app     (run from a folder without gunicorn.conf.py)
"""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.post("/bench/floor")
def floor() -> dict[str, bool]:
    """Parse the body, answer a constant."""
    request.get_json()
    return {"ok": True}
