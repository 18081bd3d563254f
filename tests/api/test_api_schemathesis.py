"""Property test: requests generated from /openapi.json (valid and invalid) never get a 5xx.

schemathesis derives cases from the served OpenAPI document, valid and deliberately invalid, for
every operation; each answer must not be a server error and must match the documented response
schema (a NaN written as null would not). Derandomised and bounded, so it is repeatable and
takes seconds. Skips when schemathesis is not installed (it is a dev requirement).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.api.conftest import ADMIN_KEY, SCORING_KEY

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_OPERATION = 40


def _fuzz(operation, key: str) -> None:
    """Run EXAMPLES_PER_OPERATION generated cases of one operation through the test client."""
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        case.call_and_validate(
            headers={"X-API-Key": key}, checks=[not_a_server_error, response_schema_conformance]
        )

    check()


def test_generated_requests_never_get_a_server_error(make_app, redis_url, redis_prefix):
    # with Redis: /feedback appends to a stream (without one it answers 503 by design)
    app = make_app(REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        _fuzz(operation, ADMIN_KEY if operation.path.startswith("/admin") else SCORING_KEY)
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert {
        "POST /predict-segment",
        "POST /recommend",
        "POST /admin/reload",
        "POST /feedback",
    } <= set(tested)
