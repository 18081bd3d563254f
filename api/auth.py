"""API keys: ``X-API-Key`` checked in constant time; scoring keys and admin keys are separate.

A missing or unknown key answers 401; a valid key of the other kind answers 403. Keys are never
logged and never echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from api.errors import Forbidden, Unauthorized

HEADER = "X-API-Key"
SCORING = "scoring"
ADMIN = "admin"


class KeyRing:
    """The configured keys of both kinds, as bytes, compared without short-circuit."""

    def __init__(self, scoring: Iterable[str], admin: Iterable[str]) -> None:
        self._keys = [(k.encode(), SCORING) for k in scoring] + [(k.encode(), ADMIN) for k in admin]

    def kind_of(self, presented: str | None) -> str | None:
        """The kind of ``presented`` (``scoring``/``admin``), or None when it matches no key."""
        if not presented:
            return None
        given = presented.encode("utf-8", "surrogateescape")
        found = None
        # Compare against every key, whatever matched earlier, so the time taken does not
        # depend on which key (if any) matched.
        for key, kind in self._keys:
            if hmac.compare_digest(given, key):
                found = kind
        return found

    def require(self, presented: str | None, kind: str) -> None:
        """Raise Unauthorized/Forbidden unless ``presented`` is a key of ``kind``."""
        found = self.kind_of(presented)
        if found is None:
            message = "missing API key" if not presented else "invalid API key"
            raise Unauthorized(f"{message} (send it in the {HEADER} header)")
        if found != kind:
            raise Forbidden(f"this key cannot call {kind} endpoints")
