"""Settings: typed, defaults as documented, a malformed value stops start-up naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from api import create_app
from api.settings import ServerSettings, Settings, SettingsError


def test_defaults():
    s = Settings.load(environ={})
    root = s.MODEL_ROOT
    assert root == Path("model_artifacts")
    assert s.MODEL_VERSION is None and s.REDIS_URL is None
    assert (s.REDIS_TIMEOUT_MS, s.CACHE_TTL_SECONDS, s.CACHE_PREFIX) == (50, 300, "segsvc")
    assert (s.MAX_BATCH_ITEMS, s.MAX_BODY_BYTES) == (1000, 1 << 20)
    assert s.API_KEYS == () and s.ADMIN_API_KEYS == ()
    assert (s.EXPLAIN_METHOD, s.RATE_LIMIT_EXPLAIN_WEIGHT) == ("path", 1.5)
    assert ServerSettings.load(environ={}).bind == "127.0.0.1:8000"


def test_environment_is_parsed_and_overrides_win():
    env = {
        "API_KEYS": " a-key , b-key ,",
        "MAX_BATCH_ITEMS": "5",
        "BENCH_FLOOR": "yes",
        "LOG_LEVEL": "debug",
        "EXPLAIN_METHOD": "TreeSHAP",
    }
    s = Settings.load({"MAX_BATCH_ITEMS": 7}, environ=env)
    assert s.API_KEYS == ("a-key", "b-key")
    assert s.MAX_BATCH_ITEMS == 7
    assert s.BENCH_FLOOR is True and s.LOG_LEVEL == "DEBUG"
    assert s.EXPLAIN_METHOD == "treeshap"
    server = ServerSettings.load(
        environ={"HOST": "0.0.0.0", "PORT": "9000", "WEB_CONCURRENCY": "3"}
    )
    assert server.bind == "0.0.0.0:9000" and server.WEB_CONCURRENCY == 3
    assert ServerSettings.load(environ={"BIND": "unix:/tmp/s.sock", "PORT": "1"}).bind == (
        "unix:/tmp/s.sock"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_TIMEOUT_MS", "fast"),
        ("REDIS_TIMEOUT_MS", "0"),
        ("CACHE_TTL_SECONDS", "-5"),
        ("MAX_BATCH_ITEMS", "1.5"),
        ("MAX_BODY_BYTES", "10"),
        ("REDIS_URL", "http://example"),
        ("CACHE_PREFIX", "has space"),
        ("MODEL_VERSION", "../x"),
        ("LOG_LEVEL", "LOUD"),
        ("BENCH_FLOOR", "maybe"),
        ("API_KEYS", "has space,x"),
        ("PROFILE_MEMO_SECONDS", "nan"),
        ("EXPLAIN_METHOD", "shap"),
    ],
)
def test_malformed_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.load(environ={name: value})


@pytest.mark.parametrize(
    ("name", "value"), [("PORT", "70000"), ("WEB_CONCURRENCY", "zero"), ("HOST", "a b")]
)
def test_malformed_server_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        ServerSettings.load(environ={name: value})


def test_cross_field_checks():
    with pytest.raises(SettingsError, match="PROFILE_MEMO_SECONDS"):
        Settings.load(environ={"PROFILE_MEMO_SECONDS": "600", "CACHE_TTL_SECONDS": "60"})
    with pytest.raises(SettingsError, match="must not share"):
        Settings.load(environ={"API_KEYS": "same-key", "ADMIN_API_KEYS": "same-key"})


def test_secrets_are_not_in_repr_or_errors():
    s = Settings.load(
        environ={
            "API_KEYS": "k-secret-1",
            "BUNDLE_HMAC_KEY": "hmac-secret",
            "REDIS_URL": "redis://:pw-secret@127.0.0.1:1/0",
        }
    )
    text = repr(s)
    for secret in ("k-secret-1", "hmac-secret", "pw-secret"):
        assert secret not in text
    with pytest.raises(SettingsError) as info:
        Settings.load(environ={"REDIS_URL": "http://:pw-secret@host"})
    assert "pw-secret" not in str(info.value)


def test_create_app_refuses_a_malformed_setting(tiny_bundle_root):
    with pytest.raises(SettingsError, match="MAX_BATCH_ITEMS"):
        create_app({"MODEL_ROOT": str(tiny_bundle_root), "MAX_BATCH_ITEMS": "many"})
