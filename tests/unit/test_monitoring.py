"""Debug endpoints are for loopback callers only."""

from __future__ import annotations

from istiod_lite.monitoring.http import _loopback


def test_loopback_only() -> None:
    assert _loopback("127.0.0.1") and _loopback("127.5.6.7") and _loopback("::1")
    assert not _loopback("10.0.0.1") and not _loopback("192.168.1.2") and not _loopback(None)
    assert not _loopback("garbage")
