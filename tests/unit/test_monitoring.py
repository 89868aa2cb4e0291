"""Debug endpoints are for loopback callers only."""

from __future__ import annotations

from istiod_lite.monitoring.http import _loopback


def test_loopback_only() -> None:
    assert _loopback("127.0.0.1") and _loopback("127.5.6.7") and _loopback("::1")
    assert not _loopback("10.0.0.1") and not _loopback("192.168.1.2") and not _loopback(None)
    assert not _loopback("garbage")


async def test_loopz_serves_lag_since_a_time() -> None:
    import aiohttp

    from istiod_lite.monitoring.http import MonitoringServer

    calls: list[float] = []

    def loopz(since: float) -> dict[str, object]:
        calls.append(since)
        return {"p99_ms": 1.5}

    server = MonitoringServer(lambda: True, list, None, loopz=loopz)
    await server.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/debug/loopz?since=12.5") as r:
                assert r.status == 200 and await r.json() == {"p99_ms": 1.5}
            async with http.get(f"http://127.0.0.1:{server.port}/debug/loopz?since=soon") as r:
                assert r.status == 400
        assert calls == [12.5]
    finally:
        await server.stop()
