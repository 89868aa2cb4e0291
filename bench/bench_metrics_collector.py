"""Micro-benchmark: entries/s of the waypoint agent's Istio-metrics path, without Envoy.

Feeds the agent's access-log service (``StatsCollector``) the batches a waypoint Envoy sends and
times what the agent does with them: protobuf decoding of the serialized
``StreamAccessLogsMessage`` (what grpc does before the handler sees a message), the handler's
queueing and the aggregation into the store (labels, counters, histograms).  No gRPC transport:
that cost is per message, not per entry, and is the same whatever the aggregation does.

The entries are shaped like the ones Envoy 1.3x's ``http_grpc`` logger produces for the
translator's config (every common property Envoy fills: addresses, timings, stream id, wire bytes,
the peer principal filter state, the ``istio.workload`` custom tag, request/response properties),
about 600 bytes each, with a realistic mix: two caller identities, two routes (two workloads),
response codes 200/404/503 (some with response flags), a few gRPC requests, per-request ids,
ports and durations.  Envoy cuts a batch at ``buffer_size_bytes`` (``--batch-bytes``, the
translator's setting by default), so the batch size follows from the entry size as it does live.

    python bench/bench_metrics_collector.py                 # HTTP and TCP figures
    python bench/bench_metrics_collector.py --entries 200000 --batch-bytes 16384
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import wrappers_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from istiod_lite.agent.stats.collector import StatsCollector
from istiod_lite.translator.telemetry import metrics as tm
from istiod_lite.translator.telemetry.metrics import LogConfig

PEERS = ("spiffe://cluster.local/ns/client/sa/client", "spiffe://cluster.local/ns/frontend/sa/web")
ROUTES = (("inbound-vip|9080|http|reviews.shop.svc.cluster.local", "reviews-v1;shop;reviews;v1;Kubernetes"),
          ("inbound-vip|9080|http/v2|reviews.shop.svc.cluster.local", "reviews-v2;shop;reviews;v2;Kubernetes"))
HTTP_CONFIG = LogConfig("http", "reviews.shop.svc.cluster.local", "reviews", "shop")
TCP_CONFIG = LogConfig("tcp", "echo.shop.svc.cluster.local", "echo", "shop")


def _address(addr: data_pb2.AccessLogCommon, field: str, ip: str, port: int) -> None:
    sock = getattr(addr, field).socket_address
    sock.address, sock.port_value = ip, port


def _common(c: data_pb2.AccessLogCommon, rnd: random.Random, peer: str, cluster: str, workload: str,
            nanos: int) -> None:
    _address(c, "downstream_remote_address", "127.0.0.1", rnd.randrange(32768, 61000))
    _address(c, "downstream_local_address", "127.10.1.1", 9080)
    c.start_time.seconds, c.start_time.nanos = 1796507778 + rnd.randrange(100), rnd.randrange(10**9)
    for i, name in enumerate(("time_to_last_rx_byte", "time_to_first_upstream_tx_byte",
                              "time_to_last_upstream_tx_byte", "time_to_first_upstream_rx_byte",
                              "time_to_last_upstream_rx_byte", "time_to_first_downstream_tx_byte",
                              "time_to_last_downstream_tx_byte")):
        getattr(c, name).nanos = nanos * (i + 1) // 8
    _address(c, "upstream_remote_address", "127.0.2.200", 36773)
    _address(c, "upstream_local_address", "127.0.0.1", rnd.randrange(32768, 61000))
    c.upstream_cluster = cluster
    c.route_name = "default"
    c.downstream_direct_remote_address.envoy_internal_address.server_listener_name = "internal_client_address"
    c.filter_state_objects[tm.PEER_PRINCIPAL_KEY].Pack(wrappers_pb2.StringValue(value=peer))
    c.custom_tags[tm.CUSTOM_TAG_WORKLOAD] = workload
    c.duration.seconds, c.duration.nanos = divmod(nanos, 10**9)
    c.upstream_request_attempt_count = 1
    c.stream_id = str(uuid.UUID(int=rnd.getrandbits(128)))
    c.downstream_wire_bytes_sent, c.downstream_wire_bytes_received = 243, 62
    c.upstream_wire_bytes_sent, c.upstream_wire_bytes_received = 139, 151


def http_entry(rnd: random.Random) -> data_pb2.HTTPAccessLogEntry:
    e = data_pb2.HTTPAccessLogEntry()
    cluster, workload = rnd.choice(ROUTES)
    code = rnd.choices((200, 404, 503), (90, 7, 3))[0]
    _common(e.common_properties, rnd, rnd.choice(PEERS), cluster, workload, int(rnd.lognormvariate(13, 1)))
    if code == 503:
        e.common_properties.response_flags.upstream_connection_failure = True
    e.protocol_version = data_pb2.HTTPAccessLogEntry.HTTP11
    r = e.request
    r.request_method, r.scheme, r.authority, r.path, r.user_agent = 1, "http", "reviews:9080", "/bench", "bench"
    r.request_id = e.common_properties.stream_id
    r.request_headers_bytes, r.request_body_bytes = 138, rnd.choice((0, 0, 0, 512))
    r.upstream_header_bytes_sent, r.downstream_header_bytes_received = 116, 37
    grpc = rnd.random() < 0.1
    if grpc:
        r.request_headers["content-type"] = "application/grpc"
    p = e.response
    p.response_code.value = code
    p.response_headers_bytes, p.response_body_bytes = 146, rnd.randrange(10, 5000)
    if grpc:
        p.response_trailers["grpc-status"] = "0" if code == 200 else "14"
    p.response_code_details = "via_upstream"
    p.upstream_header_bytes_received, p.downstream_header_bytes_sent = 65, 160
    return e


def tcp_entry(rnd: random.Random, stream: str, kind: int, rx: int, tx: int) -> data_pb2.TCPAccessLogEntry:
    e = data_pb2.TCPAccessLogEntry()
    _common(e.common_properties, rnd, rnd.choice(PEERS), "inbound-vip|7000|tcp|echo.shop.svc.cluster.local",
            "echo-v1;shop;echo;v1;Kubernetes", 10**9)
    e.common_properties.stream_id = stream
    e.common_properties.access_log_type = kind
    e.connection_properties.received_bytes, e.connection_properties.sent_bytes = rx, tx
    return e


def batches(entries: list[bytes], config: LogConfig, tcp: bool, batch_bytes: int) -> list[bytes]:
    """Serialized messages cut like Envoy cuts them: at ``batch_bytes`` (the first one names the log)."""
    out: list[bytes] = []
    msg, size = als_pb2.StreamAccessLogsMessage(), 0
    msg.identifier.log_name = config.encode()
    logs = msg.tcp_logs.log_entry if tcp else msg.http_logs.log_entry
    for raw in entries:
        logs.add().MergeFromString(raw)
        size += len(raw)
        if size >= batch_bytes:
            out.append(msg.SerializeToString())
            msg, size = als_pb2.StreamAccessLogsMessage(), 0
            logs = msg.tcp_logs.log_entry if tcp else msg.http_logs.log_entry
    if size:
        out.append(msg.SerializeToString())
    return out


def http_workload(n: int, batch_bytes: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return batches([http_entry(rnd).SerializeToString() for _ in range(n)], HTTP_CONFIG, False, batch_bytes)


def tcp_workload(n: int, batch_bytes: int, seed: int) -> list[bytes]:
    """Connections reported on connect, twice periodically and at their end (four entries each)."""
    rnd = random.Random(seed)
    raw = []
    for i in range(n // 4):
        stream = f"conn-{i}"
        raw.append(tcp_entry(rnd, stream, data_pb2.TcpUpstreamConnected, 0, 0).SerializeToString())
        raw.append(tcp_entry(rnd, stream, data_pb2.TcpPeriodic, 100, 1000).SerializeToString())
        raw.append(tcp_entry(rnd, stream, data_pb2.TcpPeriodic, 200, 2000).SerializeToString())
        raw.append(tcp_entry(rnd, stream, data_pb2.TcpConnectionEnd, 300, 3000).SerializeToString())
    return batches(raw, TCP_CONFIG, True, batch_bytes)


async def run(messages: list[bytes]) -> tuple[int, float, StatsCollector]:
    """(entries, seconds) of decoding, handing to the collector and aggregating ``messages``."""
    collector = StatsCollector(Path(tempfile.mkdtemp(prefix="bench-als-")) / "als", max_pending=len(messages))

    async def stream() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
        for raw in messages:
            yield als_pb2.StreamAccessLogsMessage.FromString(raw)

    start = time.perf_counter()
    await collector.StreamAccessLogs(stream(), None)
    await collector.drain()
    elapsed = time.perf_counter() - start
    lost = collector.dropped_entries + collector.malformed_entries
    if lost or collector.store.entries != collector.received_entries:
        raise RuntimeError("the benchmark's entries were not all aggregated")
    return collector.received_entries, elapsed, collector


def report(name: str, messages: list[bytes], repeat: int) -> None:
    best = None
    for _ in range(repeat):
        n, secs, collector = asyncio.run(run(messages))
        best = secs if best is None else min(best, secs)
    assert best is not None
    per_batch = n / len(messages)
    print(f"{name:<5} {n:>8} entries in {len(messages):>6} batches ({per_batch:6.1f}/batch): "
          f"{n / best:10.0f} entries/s  {best / n * 1e6:6.2f} us/entry  (best of {repeat})")
    text = collector.store.render()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    print(f"      {series} sample lines rendered, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]} "
          "(equal before and after an optimisation: same results)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100000, help="entries per run")
    parser.add_argument("--batch-bytes", type=int, default=tm.BUFFER_SIZE_BYTES,
                        help="Envoy's buffer_size_bytes (default: the translator's)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is printed")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    report("http", http_workload(args.entries, args.batch_bytes, args.seed), args.repeat)
    report("tcp", tcp_workload(args.entries, args.batch_bytes, args.seed), args.repeat)


if __name__ == "__main__":
    main()
