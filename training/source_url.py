"""Telling a PostgreSQL source from a file path, and what makes its URL unusable.

Kept apart from :mod:`training.database` (which reads) so that the config can check a source
when it is loaded without importing the reader, the driver or the validation layer.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("postgresql", "postgres")


def is_url(source: str | None) -> bool:
    """True when ``source`` is written as a URL (``scheme://...``), whatever the scheme."""
    return source is not None and "://" in str(source) and bool(urlsplit(str(source)).scheme)


def is_database_url(source: str | None) -> bool:
    """True when ``source`` is a PostgreSQL URL rather than a file path."""
    return source is not None and urlsplit(str(source)).scheme.lower() in SCHEMES


def url_problem(url: str) -> str | None:
    """Why a source URL cannot be used (None when it can): a password in it, another scheme,
    no database. The message never repeats the URL (it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        return (
            f"{parts.scheme}:// is not a source this reads; expected a file path or "
            "postgresql://user@host:5432/db"
        )
    if parts.password is not None or any(
        key.lower() == "password" for key, _ in parse_qsl(parts.query)
    ):
        return (
            "the URL holds a password; remove it and name the environment variable that holds "
            "it in password_env"
        )
    if not parts.path.strip("/"):
        return "the URL names no database (postgresql://user@host:5432/DATABASE)"
    return None


def table_parts(table: str) -> list[str] | None:
    """``name`` or ``schema.name`` split into identifiers (None when neither)."""
    parts = table.split(".")
    return parts if len(parts) in (1, 2) and all(p.strip() for p in parts) else None
