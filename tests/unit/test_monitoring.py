"""Debug endpoints are for loopback callers only."""

from __future__ import annotations

from istiod_lite.monitoring.http import _loopback


def test_loopback_only() -> None:
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("::ffff:127.0.0.1")
    assert not _loopback("10.0.0.1") and not _loopback("192.168.1.2") and not _loopback(None)
    assert not _loopback("garbage")


def test_the_rest_of_127_8_is_not_a_debug_caller() -> None:
    """127.0.0.6 is the source Istio's sidecars use for passthrough traffic (any remote client's
    connection re-originated locally): only the host's own 127.0.0.1 and ::1 are trusted."""
    assert not _loopback("127.0.0.6") and not _loopback("127.5.6.7") and not _loopback("::ffff:127.0.0.6")


async def test_debug_refuses_a_caller_from_127_0_0_6_over_the_wire() -> None:
    import aiohttp

    from istiod_lite.monitoring.http import MonitoringServer

    server = MonitoringServer(lambda: True, lambda: [{"node_id": "secret"}], None)
    await server.start("127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.port}/debug/syncz"
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.6", 0))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as r:
            assert r.status == 403
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert r.status == 200
    finally:
        await server.stop()


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
