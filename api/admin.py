"""Operator endpoints (admin key): POST /admin/reload."""

from __future__ import annotations

from flask import Response

from api.auth import ADMIN
from api.errors import BundleNotFound, BundleRejected
from api.extensions import get_services
from api.model import BundleMissingError
from api.schemas import ReloadRequest
from api.views import authorised, json_response, read_json
from scoring.bundle import BundleError

_RELOAD_REQUEST = ReloadRequest()


def reload() -> Response:
    """Load, verify and swap in the bundle ``current`` names (or ``{"version": ...}``).

    Every worker follows within RELOAD_POLL_SECONDS (``scope: all_workers``). A bundle that fails
    verification is refused with 409 and the previous one keeps serving.
    """
    services = get_services()
    authorised(services, ADMIN)
    body = _RELOAD_REQUEST.load(read_json())
    try:
        loaded, previous = services.model.reload(body.get("version"))
    except BundleMissingError as exc:
        raise BundleNotFound(str(exc)) from None
    except BundleError as exc:
        raise BundleRejected(
            f"bundle refused, still serving the previous one: {_relative(exc, services)}"
        ) from None
    services.cache.clear_memo()
    return json_response(
        {
            "model_version": loaded.version,
            "previous_version": previous,
            "scope": "all_workers" if services.model.follows_marker else "this_worker",
        }
    )


def _relative(exc: BundleError, services) -> str:
    # Paths relative to the model root: the operator knows the root, clients need not.
    return (
        str(exc)
        .replace(f"{services.settings.MODEL_ROOT.resolve()}/", "")
        .replace(f"{services.settings.MODEL_ROOT}/", "")
    )
