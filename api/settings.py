"""Service settings: read once from the environment, typed, failing fast with the variable's name.

This is the only module that reads ``os.environ``. ``create_app(config)`` passes test overrides
(same names as the variables; values may be strings or already typed) through the same parsers,
so an override is checked exactly like the environment.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from scoring.attribution import METHODS as EXPLAIN_METHODS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class SettingsError(ValueError):
    """A setting is malformed; the message names the variable and what was expected."""


# ---- parsers: (variable name, raw value) -> typed value --------------------------------------
def _text(name: str, raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise SettingsError(f"{name}={raw!r}: expected a string")
    raw = raw.strip()
    return raw or None


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def parse(name: str, raw: Any) -> int:
        if isinstance(raw, bool):
            raise SettingsError(f"{name}={raw!r}: expected an integer")
        if isinstance(raw, int):
            value = raw
        else:
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise SettingsError(f"{name}={raw!r}: expected an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise SettingsError(f"{name}={value}: should be >= {minimum}{upper}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str, Any], float]:
    def parse(name: str, raw: Any) -> float:
        if isinstance(raw, bool):
            raise SettingsError(f"{name}={raw!r}: expected a number")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}={raw!r}: expected a number") from None
        if not value >= minimum or value == float("inf"):
            raise SettingsError(f"{name}={value}: should be a finite number >= {minimum}")
        return value

    return parse


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _keys(name: str, raw: Any) -> tuple[str, ...]:
    # Never echo the raw value: it holds secrets.
    if raw is None:
        return ()
    if isinstance(raw, (list, tuple)):
        items = [str(k).strip() for k in raw]
    elif isinstance(raw, str):
        items = [k.strip() for k in raw.split(",")]
    else:
        raise SettingsError(f"{name}: expected a comma-separated string of keys")
    keys = tuple(k for k in items if k)
    for k in keys:
        if any(c.isspace() or not c.isprintable() for c in k):
            raise SettingsError(f"{name}: keys must be printable characters without spaces")
    return keys


def _secret(name: str, raw: Any) -> bytes | None:
    if raw is None or raw == "" or raw == b"":
        return None
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode()
    raise SettingsError(f"{name}: expected a string")


def _path(name: str, raw: Any) -> Path:
    text = _text(name, raw if not isinstance(raw, Path) else str(raw))
    if text is None:
        raise SettingsError(f"{name}: expected a path, got an empty value")
    return Path(text)


def _optional_path(name: str, raw: Any) -> Path | None:
    text = _text(name, raw if not isinstance(raw, Path) else str(raw))
    return Path(text) if text else None


def _redis_url(name: str, raw: Any) -> str | None:
    url = _text(name, raw)
    if url is not None and not url.startswith(_REDIS_SCHEMES):
        # Do not echo the URL: it may carry a password.
        raise SettingsError(f"{name}: expected a URL starting with {', '.join(_REDIS_SCHEMES)}")
    return url


def _prefix(name: str, raw: Any) -> str:
    text = _text(name, raw) or ""
    if not _PREFIX_RE.match(text):
        raise SettingsError(f"{name}={raw!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    return text


def _version(name: str, raw: Any) -> str | None:
    text = _text(name, raw)
    if text is not None and (not _PREFIX_RE.match(text) or text.startswith(".")):
        raise SettingsError(f"{name}={raw!r}: expected a bundle version name")
    return text


def _log_level(name: str, raw: Any) -> str:
    text = (_text(name, raw) or "").upper()
    if text not in LOG_LEVELS:
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(LOG_LEVELS)}")
    return text


def _host(name: str, raw: Any) -> str:
    text = _text(name, raw)
    if not text or any(c.isspace() or c in "/:@" for c in text.strip("[]")):
        raise SettingsError(f"{name}={raw!r}: expected a host name or IP address")
    return text


def _caps_fail(name: str, raw: Any) -> str:
    text = (_text(name, raw) or "").lower()
    if text not in ("open", "closed"):
        raise SettingsError(f"{name}={raw!r}: expected open or closed")
    return text


def _explain_method(name: str, raw: Any) -> str:
    text = (_text(name, raw) or "").lower()
    if text not in EXPLAIN_METHODS:
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(EXPLAIN_METHODS)}")
    return text


def _meta(parse: Callable[[str, Any], Any], *, secret: bool = False) -> dict[str, Any]:
    return {"parse": parse, "secret": secret}


class _FromEnvironment:
    """Shared loader: every dataclass field has a parser in its metadata."""

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Any:
        """Build from ``environ`` (default ``os.environ``), then ``overrides`` on top."""
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in overrides:
                raw = overrides[f.name]
            elif f.name in environ:
                raw = environ[f.name]
            else:
                continue
            values[f.name] = f.metadata["parse"](f.name, raw)
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        """Cross-field checks; raise SettingsError."""

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = "<set>"
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class Settings(_FromEnvironment):
    """Typed service settings; field names are the environment variable names."""

    #: folder of versioned bundles with a ``current`` link
    MODEL_ROOT: Path = field(default=Path("model_artifacts"), metadata=_meta(_path))
    #: pin a bundle version at start-up (and on SIGHUP); default: the one ``current`` names
    MODEL_VERSION: str | None = field(default=None, metadata=_meta(_version))
    #: HMAC key the bundle's manifest must be signed with (optional)
    BUNDLE_HMAC_KEY: bytes | None = field(default=None, metadata=_meta(_secret, secret=True))
    #: Redis for the profile cache; unset -> in-process cache only
    REDIS_URL: str | None = field(default=None, metadata=_meta(_redis_url, secret=True))
    #: socket connect/read timeout towards Redis, milliseconds
    REDIS_TIMEOUT_MS: int = field(default=50, metadata=_meta(_int(1, 10_000)))
    #: TTL of cached profiles in Redis
    CACHE_TTL_SECONDS: int = field(default=300, metadata=_meta(_int(1)))
    #: how long a worker keeps a profile in memory before asking Redis again (<= the TTL)
    PROFILE_MEMO_SECONDS: float = field(default=10.0, metadata=_meta(_float(0.0)))
    #: key prefix in Redis: ``{prefix}:profile:{version}:{segment}``
    CACHE_PREFIX: str = field(default="segsvc", metadata=_meta(_prefix))
    #: keys for the scoring endpoints (comma-separated); empty -> scoring answers 401
    API_KEYS: tuple[str, ...] = field(default=(), metadata=_meta(_keys, secret=True))
    #: keys for /admin/* (comma-separated); empty -> admin answers 401
    ADMIN_API_KEYS: tuple[str, ...] = field(default=(), metadata=_meta(_keys, secret=True))
    #: most customers in one batch request
    MAX_BATCH_ITEMS: int = field(default=1000, metadata=_meta(_int(1, 100_000)))
    #: largest request body; a 1,000-customer batch takes about 250 KB
    MAX_BODY_BYTES: int = field(default=1 << 20, metadata=_meta(_int(1024)))
    LOG_LEVEL: str = field(default="INFO", metadata=_meta(_log_level))
    #: per API key: requests per second (0: no limit; any limit needs REDIS_URL)
    RATE_LIMIT_REQUESTS_PER_SECOND: float = field(default=0.0, metadata=_meta(_float(0.0)))
    #: per API key: customers scored per second (a batch counts its items; 0: no limit)
    RATE_LIMIT_CUSTOMERS_PER_SECOND: float = field(default=0.0, metadata=_meta(_float(0.0)))
    #: bucket size, in seconds of the rate: the burst a key may send at once
    RATE_LIMIT_BURST_SECONDS: float = field(default=1.0, metadata=_meta(_float(0.001)))
    #: what one customer with explain=true costs against the customers limit
    RATE_LIMIT_EXPLAIN_WEIGHT: float = field(default=1.5, metadata=_meta(_float(1.0)))
    #: how explain=true computes contributions: "path" (per-leaf tables) or exact "treeshap"
    EXPLAIN_METHOD: str = field(default="path", metadata=_meta(_explain_method))
    #: per client address: requests with a wrong or missing key per minute before 429 (0: off)
    AUTH_FAILURES_PER_MINUTE: float = field(default=0.0, metadata=_meta(_float(0.0)))
    #: proxies in front of the service whose X-Forwarded-For is trusted (0: none, use the peer)
    TRUSTED_PROXY_HOPS: int = field(default=0, metadata=_meta(_int(0, 10)))
    #: file through which gunicorn workers agree on the bundle version (set by gunicorn.conf.py)
    RELOAD_MARKER: Path | None = field(default=None, metadata=_meta(_optional_path))
    #: folder where each gunicorn worker publishes its state (set by gunicorn.conf.py)
    WORKER_ROSTER: Path | None = field(default=None, metadata=_meta(_optional_path))
    #: how often a worker looks at the reload marker, seconds (0: on every request)
    RELOAD_POLL_SECONDS: float = field(default=1.0, metadata=_meta(_float(0.0)))
    #: prometheus_client's multiprocess folder (gunicorn with several workers); unset: one process
    PROMETHEUS_MULTIPROC_DIR: Path | None = field(default=None, metadata=_meta(_optional_path))
    #: expose POST /bench/floor (the benchmark's baseline endpoint)
    BENCH_FLOOR: bool = field(default=False, metadata=_meta(_bool))
    #: with Redis down, frequency caps let every offer through ("open") or none ("closed")
    CAPS_FAIL: str = field(default="open", metadata=_meta(_caps_fail))
    #: hold frequency-cap counters read in this worker until Redis reports they changed
    #: (CLIENT TRACKING; api/cap_tracking.py); off: read-only /recommend reads them every time
    CAPS_LOCAL_CACHE: bool = field(default=True, metadata=_meta(_bool))
    #: most cap counter values a worker holds (about 100 bytes each; the oldest go first)
    CAPS_LOCAL_CACHE_ENTRIES: int = field(default=65_536, metadata=_meta(_int(1)))
    #: with CAPS_LOCAL_CACHE: keep a per-worker bitmap of the customers with a per-customer cap
    #: counter this ISO week (api/cap_summary.py); a read-only check of anyone else reads none
    CAPS_SUMMARY: bool = field(default=True, metadata=_meta(_bool))
    #: that bitmap holds 2**CAPS_SUMMARY_BITS bits (23: 1 MB a worker); the same in all workers
    CAPS_SUMMARY_BITS: int = field(default=23, metadata=_meta(_int(3, 32)))
    #: Redis Stream of feedback events (default "{CACHE_PREFIX}:feedback")
    FEEDBACK_STREAM: str | None = field(default=None, metadata=_meta(_text))

    def _check(self) -> None:
        if self.PROFILE_MEMO_SECONDS > self.CACHE_TTL_SECONDS:
            raise SettingsError(
                f"PROFILE_MEMO_SECONDS={self.PROFILE_MEMO_SECONDS} should be <= "
                f"CACHE_TTL_SECONDS={self.CACHE_TTL_SECONDS}"
            )
        limits = (
            "RATE_LIMIT_REQUESTS_PER_SECOND",
            "RATE_LIMIT_CUSTOMERS_PER_SECOND",
            "AUTH_FAILURES_PER_MINUTE",
        )
        for name in limits:
            if getattr(self, name) and not self.REDIS_URL:
                raise SettingsError(
                    f"{name}={getattr(self, name)} needs REDIS_URL (limits live there)"
                )
        if set(self.API_KEYS) & set(self.ADMIN_API_KEYS):
            raise SettingsError("API_KEYS and ADMIN_API_KEYS must not share a key")

    def limits(self) -> Any:
        """The rate limits as ``api.limits.Limits``."""
        from api.limits import Limits

        return Limits(
            requests_per_second=self.RATE_LIMIT_REQUESTS_PER_SECOND,
            customers_per_second=self.RATE_LIMIT_CUSTOMERS_PER_SECOND,
            burst_seconds=self.RATE_LIMIT_BURST_SECONDS,
            explain_weight=self.RATE_LIMIT_EXPLAIN_WEIGHT,
            auth_failures_per_minute=self.AUTH_FAILURES_PER_MINUTE,
        )

    def warn_about(self, log: logging.Logger) -> None:
        """Log start-up warnings for safe-but-probably-unintended settings (never the secrets)."""
        if not self.API_KEYS:
            log.warning("API_KEYS is empty: every scoring call will be refused with 401")
        if not self.ADMIN_API_KEYS:
            log.warning("ADMIN_API_KEYS is empty: /admin/reload will be refused with 401")
        if self.REDIS_URL is None:
            log.info("REDIS_URL unset: profiles are cached in-process only")
        if self.TRUSTED_PROXY_HOPS:
            log.info(
                "client addresses come from X-Forwarded-For (%s trusted proxies in front)",
                self.TRUSTED_PROXY_HOPS,
            )


@dataclass(frozen=True, repr=False)
class ServerSettings(_FromEnvironment):
    """What gunicorn.conf.py reads: bind address, worker model, timeouts, metrics folder."""

    #: full bind address (``host:port`` or ``unix:/path``); overrides HOST/PORT
    BIND: str | None = field(default=None, metadata=_meta(_text))
    HOST: str = field(default="127.0.0.1", metadata=_meta(_host))
    PORT: int = field(default=8000, metadata=_meta(_int(1, 65535)))
    WEB_CONCURRENCY: int = field(default=2, metadata=_meta(_int(1, 256)))
    GUNICORN_THREADS: int = field(default=1, metadata=_meta(_int(1, 256)))
    GUNICORN_TIMEOUT: int = field(default=30, metadata=_meta(_int(1, 3600)))
    GUNICORN_GRACEFUL_TIMEOUT: int = field(default=20, metadata=_meta(_int(1, 3600)))
    #: seconds a client has to send a whole request (head and body) before a 408
    GUNICORN_READ_TIMEOUT: int = field(default=10, metadata=_meta(_int(1, 3600)))
    #: restart a worker after this many requests (plus jitter); 0 disables
    GUNICORN_MAX_REQUESTS: int = field(default=20_000, metadata=_meta(_int(0)))
    PROMETHEUS_MULTIPROC_DIR: Path | None = field(default=None, metadata=_meta(_optional_path))
    RELOAD_MARKER: Path | None = field(default=None, metadata=_meta(_optional_path))
    WORKER_ROSTER: Path | None = field(default=None, metadata=_meta(_optional_path))
    LOG_LEVEL: str = field(default="INFO", metadata=_meta(_log_level))
    #: freed memory each process keeps for reuse, in MB (api/memory.py); 0: glibc's defaults
    MALLOC_KEEP_MB: int = field(default=32, metadata=_meta(_int(0, 4096)))
    #: a replacement worker builds its app at idle priority (api/priority.py): meant for a
    #: serving core with idle time; on a saturated core it only stretches the start
    RECYCLE_AT_IDLE_PRIORITY: bool = field(default=False, metadata=_meta(_bool))

    @property
    def bind(self) -> str:
        """The address gunicorn listens on."""
        return self.BIND or f"{self.HOST}:{self.PORT}"
