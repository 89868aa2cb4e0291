"""Benchmark: push latency, memory and bytes for many xDS streams (xDS server issue).

Starts ``istiod-lite serve`` as a subprocess on a generated config (one waypoint serving
``--services`` services), connects ``--clients`` fake waypoint replicas from this process (raw
grpc.aio streams that behave like Envoy: wildcard CDS and LDS; every resource of every response
decoded into its message type; EDS by the names the clusters give and RDS by the names the
listeners' connection managers give, followed as they change; everything ACKed; synced once CDS,
EDS, LDS and RDS are held), then:

1. initial sync time for all streams, server RSS per stream;
2. edits one VirtualService file and measures file write -> last ACK (p50/p99 over streams,
   including the file poll and the directory's 100 ms quiet period, which is the debounce of a
   directory change: the control plane adds no second one), and bytes each stream received for
   it; and, from the server's ``/debug/syncz``, source -> ACK per stream (from the moment the
   source hands the change over: translation, push and the client's ACK of the last type pushed
   for it - RDS for a VirtualService edit, since routes are served over RDS);
3. reconnect storm: every stream drops and reconnects at once (with the server's default admission;
   a refused stream retries as Envoy does); time until all are synced, and the server's event-loop
   lag during it (from ``/debug/loopz``).

With ``--mesh reference`` the config is instead the reference mesh of the traffic-management issue
(1000 services, 2000 pods, 1000 VirtualServices, 1000 DestinationRules, 1000
AuthorizationPolicies, 50 namespaces with a waypoint each) and the clients are spread over the 50
waypoints: one edit (VirtualService or, with ``--edit policy``, AuthorizationPolicy) reaches only
the streams of its waypoint, and the figures are theirs.

    python bench/bench_xds_push.py --clients 100 --variant delta
    python bench/bench_xds_push.py --clients 100 --mesh reference
    python bench/bench_xds_push.py --clients 100 --edit endpoint    # bytes of a one-endpoint change
    python bench/bench_xds_push.py --clients 100 --mesh reference --edit policy
    python bench/bench_xds_push.py --clients 100 --edit policy         # one waypoint, 1000 services
    python bench/bench_xds_push.py --clients 1000 --variant sotw
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf.message import Message

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, services: int) -> None:
    (root / "00-waypoint.yaml").write_text(
        """apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.1}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""
    )
    chunks = []
    for i in range(services):
        chunks.append(
            f"""apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: mesh}}
spec:
  clusterIP: 127.10.{i // 250}.{i % 250 + 1}
  selector: {{app: svc-{i}}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: svc-{i}-pod, namespace: mesh, labels: {{app: svc-{i}}}}}
status: {{podIP: 127.0.{2 + i // 250}.{i % 250 + 1}}}
---
"""
        )
    (root / "10-services.yaml").write_text("".join(chunks))
    write_vs(root, 90)


REFERENCE_NAMESPACES = 50


def write_reference_config(root: Path, services: int) -> None:
    """The reference mesh: a waypoint per namespace, every service with two pods, a
    DestinationRule with two subsets and a VirtualService splitting between them."""
    docs = []
    for n in range(REFERENCE_NAMESPACES):
        amb = ", istio.io/dataplane-mode: ambient" if n % 2 == 0 else ""
        docs.append(f"""apiVersion: v1
kind: Namespace
metadata: {{name: ns-{n}, labels: {{istio.io/use-waypoint: waypoint{amb}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: ns-{n}}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: 127.0.1.{n + 1}}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
""")
    (root / "00-waypoints.yaml").write_text("---\n".join(docs))
    chunks = []
    for i in range(services):
        ns, name = f"ns-{i % REFERENCE_NAMESPACES}", f"svc-{i}"
        chunks.append(f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  clusterIP: 127.10.{i // 250}.{i % 250 + 1}
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8080}}]
---
""")
        for v in (1, 2):
            chunks.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}-v{v}, namespace: {ns}, labels: {{app: {name}, version: v{v}}}}}
status: {{podIP: 127.{2 + v}.{i // 250}.{i % 250 + 1}}}
---
""")
        if i:
            chunks.append(_reference_vs(ns, name, 90))
            chunks.append(_reference_policy(ns, name, 0))
    (root / "10-services.yaml").write_text("".join(chunks))
    write_reference_vs(root, 90)
    write_reference_policy(root, 0)


def _reference_policy(ns: str, name: str, n: int) -> str:
    """An ALLOW policy on the service: its own namespace and one other, GET/POST under /api."""
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: {name}}}]
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: [{ns}, ns-{(n + 1) % REFERENCE_NAMESPACES}]}}}}]
    to: [{{operation: {{methods: [GET, POST], paths: ["/api/*"]}}}}]
---
"""


def write_reference_policy(root: Path, n: int) -> None:
    """svc-0's AuthorizationPolicy (namespace ns-0), in a file of its own; ``n`` moves it."""
    (root / "21-policy.yaml").write_text(_reference_policy("ns-0", "svc-0", n))


def _reference_vs(ns: str, name: str, weight: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {name}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}]
  http:
  - route:
    - {{destination: {{host: {name}, subset: v1}}, weight: {weight}}}
    - {{destination: {{host: {name}, subset: v2}}, weight: {100 - weight}}}
---
"""


def write_reference_vs(root: Path, weight: int) -> None:
    """svc-0's DestinationRule and VirtualService (namespace ns-0), in a file of their own."""
    (root / "20-vs.yaml").write_text(_reference_vs("ns-0", "svc-0", weight))


def write_endpoint(root: Path, n: int) -> None:
    """A second pod of svc-0 (single mesh) whose IP moves with ``n``: an endpoint-only change."""
    (root / "30-pod.yaml").write_text(f"""apiVersion: v1
kind: Pod
metadata: {{name: svc-0-extra, namespace: mesh, labels: {{app: svc-0}}}}
status: {{podIP: 127.0.9.{n % 250 + 1}}}
""")


def write_vs(root: Path, weight: int) -> None:
    (root / "20-vs.yaml").write_text(
        f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-0, namespace: mesh}}
spec:
  host: svc-0
  subsets: [{{name: a, labels: {{app: svc-0}}}}, {{name: b, labels: {{app: svc-0}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-0, namespace: mesh}}
spec:
  hosts: [svc-0]
  http:
  - route:
    - {{destination: {{host: svc-0, subset: a}}, weight: {weight}}}
    - {{destination: {{host: svc-0, subset: b}}, weight: {100 - weight}}}
"""
    )


#: Type URL -> the message class a response's resources decode into.
MESSAGE_TYPES: dict[str, type[Message]] = {
    CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment, LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration, SDS: secret_pb2.Secret, ECDS: extension_pb2.TypedExtensionConfig,
}
#: What a proxy must hold to serve traffic (and ECDS when its listeners name filter configs).
SYNCED_TYPES = frozenset({CDS, EDS, LDS, RDS})

#: Listener bytes -> the route configuration names its connection managers take over RDS.  Every
#: client decodes every listener it receives; only this derived walk through the filter chains is
#: shared between the clients that received the very same bytes (the bench runs 1000 clients in
#: one process).
_RDS_NAMES: dict[bytes, tuple[str, ...]] = {}


def rds_names(listener: listener_pb2.Listener, raw: bytes) -> tuple[str, ...]:
    names = _RDS_NAMES.get(raw)
    if names is None:
        found = set()
        hcm = hcm_pb2.HttpConnectionManager()
        for fc in listener.filter_chains:
            for f in fc.filters:
                if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR) and f.typed_config.Unpack(hcm) \
                        and hcm.HasField("rds"):
                    found.add(hcm.rds.route_config_name)
        if len(_RDS_NAMES) > 64:
            _RDS_NAMES.clear()
        names = _RDS_NAMES[raw] = tuple(sorted(found))
    return names


_ECDS_NAMES: dict[bytes, tuple[str, ...]] = {}


def ecds_names(listener: listener_pb2.Listener, raw: bytes) -> tuple[str, ...]:
    """The filter configs (ECDS) a listener names, as Envoy subscribes to them: every network filter
    and HTTP filter with ``config_discovery`` (shared per listener bytes, like ``rds_names``)."""
    names = _ECDS_NAMES.get(raw)
    if names is None:
        found: set[str] = set()
        hcm = hcm_pb2.HttpConnectionManager()
        for fc in listener.filter_chains:
            for f in fc.filters:
                if f.HasField("config_discovery"):
                    found.add(f.name)
                elif f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR) and f.typed_config.Unpack(hcm):
                    found.update(h.name for h in hcm.http_filters if h.HasField("config_discovery"))
        if len(_ECDS_NAMES) > 64:
            _ECDS_NAMES.clear()
        names = _ECDS_NAMES[raw] = tuple(sorted(found))
    return names


def eds_name(cluster: cluster_pb2.Cluster) -> str | None:
    """The endpoint assignment an EDS cluster waits for (None: not an EDS cluster)."""
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def write_policy(root: Path, n: int) -> None:
    """svc-0's AuthorizationPolicy (single mesh), in a file of its own; ``n`` moves it."""
    (root / "21-policy.yaml").write_text(_reference_policy("mesh", "svc-0", n))


@dataclass
class Client:
    """One fake waypoint replica.  State kept across reconnects, as Envoy keeps it: the versions it
    holds per type (``held``, sent back as ``initial_resource_versions`` on a Delta reconnect) and
    what each held listener / cluster names (RDS / EDS names); never the decoded messages themselves
    (a thousand clients in one process)."""

    idx: int
    variant: str
    namespaces: int = 0
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_received: int = 0
    last_ack: float = 0.0
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    #: listener name -> its RDS names; cluster name -> its EDS name.
    listener_routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: listener name -> the filter configs (ECDS) it names.
    listener_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cluster_eds: dict[str, str] = field(default_factory=dict)
    decoded: int = 0

    def wanted(self, type_url: str) -> set[str]:
        """Names Envoy would subscribe for a named type, from what it holds."""
        if type_url == RDS:
            return {n for names in self.listener_routes.values() for n in names}
        if type_url == ECDS:
            return {n for names in self.listener_filters.values() for n in names}
        return set(self.cluster_eds.values())

    def apply(self, type_url: str, items: list[tuple[str, str, bytes]], removed: list[str], full: bool) -> None:
        """Decode and hold one response's resources: (name, version, Any payload) each."""
        held = self.held.setdefault(type_url, {})
        if full:  # SotW LDS/CDS: the response is the whole set
            held.clear()
            if type_url == LDS:
                self.listener_routes.clear()
                self.listener_filters.clear()
            elif type_url == CDS:
                self.cluster_eds.clear()
        for name in removed:
            held.pop(name, None)
            if type_url == LDS:
                self.listener_routes.pop(name, None)
                self.listener_filters.pop(name, None)
            elif type_url == CDS:
                self.cluster_eds.pop(name, None)
        kind = MESSAGE_TYPES.get(type_url)
        for name, version, raw in items:
            if kind is None:
                raise ValueError(f"unexpected type {type_url}")
            msg = kind.FromString(raw)
            self.decoded += 1
            name = name or str(getattr(msg, "name", "") or getattr(msg, "cluster_name", ""))
            held[name] = version
            if isinstance(msg, listener_pb2.Listener):
                self.listener_routes[name] = rds_names(msg, raw)
                self.listener_filters[name] = ecds_names(msg, raw)
            elif isinstance(msg, cluster_pb2.Cluster):
                eds = eds_name(msg)
                if eds is None:
                    self.cluster_eds.pop(name, None)
                else:
                    self.cluster_eds[name] = eds


def node(i: int, namespaces: int = 0) -> base_pb2.Node:
    """Replica ``i`` of the single mesh's waypoint, or (``namespaces``) of waypoint ``i % namespaces``."""
    ns, ip = ("mesh", "127.0.1.1") if not namespaces else (f"ns-{i % namespaces}", f"127.0.1.{i % namespaces + 1}")
    n = base_pb2.Node(id=f"waypoint~{ip}~waypoint-{i}.{ns}~{ns}.svc.cluster.local", user_agent_name="envoy")
    n.metadata.fields["NAMESPACE"].string_value = ns
    n.metadata.fields["LABELS"].struct_value.fields["gateway.networking.k8s.io/gateway-name"].string_value = "waypoint"
    return n


async def run_client(c: Client, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, stop: asyncio.Event) -> None:
    """Behave like Envoy: wildcard CDS, then EDS by the names its clusters give and wildcard LDS, then
    ECDS and RDS by the names its listeners give; decode every resource, follow every name change
    (subscribe and unsubscribe), ACK every response.  Synced once it holds CDS, EDS, LDS and RDS."""
    delta = c.variant == "delta"
    call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
    #: On this stream: names subscribed per named type, and (SotW) the last version and nonce per type.
    subscribed: dict[str, set[str]] = {}
    last: dict[str, tuple[str, str]] = {}

    async def follow(type_url: str) -> None:
        """(Re)subscribe a named type to what the held resources name, if that changed."""
        want = c.wanted(type_url)
        have = subscribed.get(type_url)
        if have == want:
            return
        subscribed[type_url] = want
        if delta:
            await call.write(d.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=sorted(want - (have or set())),
                resource_names_unsubscribe=sorted((have or set()) - want),
                initial_resource_versions={n: v for n, v in c.held.get(type_url, {}).items() if n in want}
                if have is None else {}))
        else:
            version, nonce = last.get(type_url, ("", ""))
            await call.write(d.DiscoveryRequest(type_url=type_url, resource_names=sorted(want), version_info=version,
                                                response_nonce=nonce))

    first = {"node": node(c.idx, c.namespaces)}
    if delta:
        await call.write(d.DeltaDiscoveryRequest(type_url=CDS, initial_resource_versions=c.held.get(CDS, {}), **first))
    else:
        await call.write(d.DiscoveryRequest(type_url=CDS, **first))
    seen: set[str] = set()
    reader = asyncio.ensure_future(call.read())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while True:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                break
            resp = reader.result()
            if resp is grpc.aio.EOF:
                break
            c.bytes_received += resp.ByteSize()
            t = resp.type_url
            if delta:
                c.apply(t, [(r.name, r.version, r.resource.value) for r in resp.resources],
                        list(resp.removed_resources), full=False)
                await call.write(d.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce))
            else:
                c.apply(t, [("", "", a.value) for a in resp.resources], [], full=t in (CDS, LDS))
                last[t] = (resp.version_info, resp.nonce)
                names = sorted(subscribed.get(t, ())) if t in (EDS, RDS, ECDS) else []
                await call.write(d.DiscoveryRequest(type_url=t, response_nonce=resp.nonce,
                                                    version_info=resp.version_info, resource_names=names))
            if t == CDS:
                await follow(EDS)
                if LDS not in seen and CDS not in seen:  # Envoy asks for listeners once clusters are in
                    if delta:
                        await call.write(d.DeltaDiscoveryRequest(type_url=LDS,
                                                                 initial_resource_versions=c.held.get(LDS, {})))
                    else:
                        await call.write(d.DiscoveryRequest(type_url=LDS))
            elif t == LDS:
                await follow(ECDS)  # the listeners' filter configs, then their routes
                await follow(RDS)
            seen.add(t)
            c.last_ack = time.monotonic()
            if seen >= (SYNCED_TYPES | {ECDS} if c.wanted(ECDS) else SYNCED_TYPES):
                c.synced.set()
            reader = asyncio.ensure_future(call.read())
    finally:
        reader.cancel()
        stopper.cancel()
        call.cancel()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def syncz(mon_port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{mon_port}/debug/syncz", timeout=10) as r:
        status: list[dict[str, Any]] = json.loads(r.read())
    return status


def syncz_convergence(mon_port: int, before: list[dict[str, Any]], group_part: str = ""
                      ) -> tuple[list[float], set[str]]:
    """Per connection (of a group containing ``group_part``) that was pushed something since
    ``before`` (an earlier ``syncz``): seconds from the config change to its ACK of the last of the
    responses that carried it - the latest ``ack_convergence_ms`` among the types it was sent
    (a VirtualService edit is an RDS push, an endpoint edit an EDS push, a policy edit an LDS push;
    a subset change adds CDS and EDS), on the server's own monotonic clock.  Also: those types."""
    sent_before = {(conn["connection_id"], t): st.get("responses", 0)
                   for conn in before for t, st in conn.get("types", {}).items()}
    out: list[float] = []
    types: set[str] = set()
    for conn in syncz(mon_port):
        if group_part not in str(conn.get("group", "")):
            continue
        pushed = {t: st for t, st in conn.get("types", {}).items()
                  if st.get("responses", 0) > sent_before.get((conn["connection_id"], t), 0)}
        ms = [st["ack_convergence_ms"] for st in pushed.values() if st.get("ack_convergence_ms") is not None]
        if ms:
            out.append(max(ms) / 1000)
            types |= set(pushed)
    return out, types


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


#: Streams the server refused (RESOURCE_EXHAUSTED) and the client retried, since the last reset.
REFUSED = [0]


async def run_client_retrying(c: Client, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub,
                              stop: asyncio.Event) -> None:
    """``run_client``, retried as Envoy retries a refused ADS stream: after a jittered backoff of
    up to 0.5 s, doubling to 30 s (admission answers RESOURCE_EXHAUSTED when a stream waited too long)."""
    cap = 0.5
    while not stop.is_set():
        try:
            await run_client(c, stub, stop)
            return
        except asyncio.InvalidStateError:  # refused before the first write landed
            pass
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                raise
        REFUSED[0] += 1
        await asyncio.sleep(random.uniform(0, cap))
        cap = min(cap * 2, 30.0)


def loop_lag(mon_port: int, since: float) -> dict[str, object]:
    """The server's event-loop lag samples taken since ``since`` (wall time), from ``/debug/loopz``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mon_port}/debug/loopz?since={since}", timeout=10) as r:
        return dict(json.loads(r.read()))


async def connect_all(clients: list[Client], stubs: list[ads_pb2_grpc.AggregatedDiscoveryServiceStub],
                      stop: asyncio.Event, timeout: float) -> tuple[list[asyncio.Task[None]], float]:
    t0 = time.monotonic()
    tasks = [asyncio.create_task(run_client_retrying(c, stubs[c.idx % len(stubs)], stop)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), timeout)
    return tasks, time.monotonic() - t0


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-xds-"))
    reference = args.mesh == "reference"
    (write_reference_config if reference else write_config)(tmp, args.services)
    edit = write_reference_vs if reference else write_vs
    if args.edit == "policy":
        edit = write_reference_policy if reference else write_policy
        if not reference:
            write_policy(tmp, 0)
    if args.edit == "endpoint":
        if reference:
            raise SystemExit("--edit endpoint is for the single mesh")
        write_endpoint(tmp, 99)
        edit = write_endpoint
    namespaces = REFERENCE_NAMESPACES if reference else 0
    grpc_port, mon_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "istiod_lite.cli.main", "--log-level", "WARNING", "serve", "--config", str(tmp),
         "--grpc-addr", f"127.0.0.1:{grpc_port}", "--monitoring-addr", f"127.0.0.1:{mon_port}",
         "--poll-interval", "0.05"],
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", grpc_port), 0.1).close()
                break
            await asyncio.sleep(0.05)
        base_rss = rss_kb(server.pid)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}",
                                              options=[("grpc.max_receive_message_length", 64 << 20)])
                    for _ in range(max(1, args.clients // args.streams_per_channel))]
        stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
        clients = [Client(i, args.variant, namespaces) for i in range(args.clients)]
        stop = asyncio.Event()
        tasks, initial = await connect_all(clients, stubs, stop, 120)
        await asyncio.sleep(0.5)
        early = (rss_kb(server.pid) - base_rss) / args.clients
        await asyncio.sleep(5)  # the server trims freed allocator memory once writes are quiet
        per_stream = (rss_kb(server.pid) - base_rss) / args.clients
        print(f"{args.variant}, {args.mesh} mesh: {args.clients} streams, {args.services} services: "
              f"initial sync {initial:.2f} s; "
              f"server RSS {rss_kb(server.pid) / 1024:.0f} MB ({per_stream / 1024:.3f} MB per stream when settled, "
              f"{early / 1024:.3f} MB 0.5 s after sync)")

        lat: list[float] = []
        server_lat: list[float] = []
        # The streams an edit of svc-0 reaches: all of them, or (reference mesh) ns-0's waypoint's.
        affected = [c for c in clients if not reference or c.idx % REFERENCE_NAMESPACES == 0]
        for rnd in range(args.rounds):
            before = {c.idx: c.bytes_received for c in clients}
            marks = {c.idx: c.last_ack for c in clients}
            status_before = await asyncio.to_thread(syncz, mon_port)
            t0 = time.monotonic()
            edit(tmp, 80 - rnd)
            deadline = t0 + 30
            while any(c.last_ack == marks[c.idx] for c in affected) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # let any trailing responses (e.g. a second type) arrive
            done = [c.last_ack - t0 for c in clients if c.last_ack != marks[c.idx]]
            lat.extend(done)
            conv, types = await asyncio.to_thread(syncz_convergence, mon_port, status_before,
                                                  "/ns-0/" if reference else "")
            server_lat.extend(conv)
            sent = [c.bytes_received - before[c.idx] for c in affected]
            print(f"  change {rnd + 1}: {len(done)}/{args.clients} updated; file write -> ACK p50 "
                  f"{pct(done, 50) * 1000:.0f} ms p99 {pct(done, 99) * 1000:.0f} ms max {max(done) * 1000:.0f} ms; "
                  f"config change -> ACK p50 {pct(conv, 50) * 1000:.0f} ms p99 {pct(conv, 99) * 1000:.0f} ms "
                  f"({len(conv)} streams; pushed {'+'.join(sorted(types))}); "
                  f"bytes per stream {statistics.mean(sent):.0f}")
        if lat:  # --rounds 0 measures only the initial sync and the storm
            print(f"  overall: file write -> last ACK p50 {pct(lat, 50) * 1000:.0f} ms, "
                  f"p99 {pct(lat, 99) * 1000:.0f} ms "
                  f"(includes the <= {0.05 * 1000:.0f} ms file poll and the directory's 100 ms quiet period, which is "
                  f"a directory change's debounce); source hands the change over -> ACK p50 "
                  f"{pct(server_lat, 50) * 1000:.0f} ms, p99 {pct(server_lat, 99) * 1000:.0f} ms")

        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            c.synced = asyncio.Event()
        stop = asyncio.Event()
        REFUSED[0], storm_wall = 0, time.time()
        tasks, storm = await connect_all(clients, stubs, stop, 120)
        lag = await asyncio.to_thread(loop_lag, mon_port, storm_wall)
        print(f"  reconnect storm: {args.clients} streams reconnected at once, all synced in {storm:.2f} s")
        print(f"  server event-loop lag during the storm: p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, "
              f"max {lag['max_ms']} ms ({lag['count']} samples every {lag['interval_ms']:.0f} ms); "
              f"{REFUSED[0]} streams refused and retried")
        await asyncio.sleep(5)  # as after the initial sync: freed memory is trimmed once writes are quiet
        print(f"  server RSS after the storm: {rss_kb(server.pid) / 1024:.0f} MB")
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
    finally:
        server.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        if server.poll() is None:
            server.kill()
        for p in tmp.iterdir():
            p.unlink()
        os.rmdir(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--variant", choices=["delta", "sotw"], default="delta")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams-per-channel", type=int, default=100,
                    help="fake proxies sharing one HTTP/2 connection (a real Envoy has its own)")
    ap.add_argument("--edit", choices=["vs", "endpoint", "policy"], default="vs",
                    help="what each round changes: svc-0's VirtualService, the IP of one of its pods, or "
                         "its AuthorizationPolicy (carried by ECDS: the figures are that type's)")
    ap.add_argument("--mesh", choices=["single", "reference"], default="single",
                    help="single: one waypoint serving --services; reference: the 50-waypoint reference mesh")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
