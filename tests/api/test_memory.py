"""The server's malloc thresholds (api/memory.py): what is asked of glibc, and when nothing is."""

from __future__ import annotations

import sys

import pytest

from api.memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory
from api.settings import ServerSettings


class FakeLibc:
    """Records mallopt calls; answers ``result`` (1: glibc took it)."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


def test_both_thresholds_set_to_the_setting():
    libc = FakeLibc()
    assert keep_freed_memory(16, libc) is True
    assert libc.calls == [(M_TRIM_THRESHOLD, 16 << 20), (M_MMAP_THRESHOLD, 16 << 20)]


def test_mmap_threshold_capped_at_glibcs_maximum():
    libc = FakeLibc()
    assert keep_freed_memory(100, libc) is True
    assert libc.calls == [(M_TRIM_THRESHOLD, 100 << 20), (M_MMAP_THRESHOLD, 32 << 20)]


def test_zero_leaves_glibc_alone_and_a_refusal_is_reported():
    libc = FakeLibc()
    assert keep_freed_memory(0, libc) is False and libc.calls == []
    assert keep_freed_memory(8, FakeLibc(result=0)) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_the_default():
    assert keep_freed_memory(ServerSettings.load({}).MALLOC_KEEP_MB) is True


def test_setting_is_checked():
    assert ServerSettings.load({"MALLOC_KEEP_MB": "0"}).MALLOC_KEEP_MB == 0
    with pytest.raises(Exception, match="MALLOC_KEEP_MB"):
        ServerSettings.load({"MALLOC_KEEP_MB": "-1"})
