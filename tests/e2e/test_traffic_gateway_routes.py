"""GRPCRoute, TCPRoute and TLSRoute attached to Services, through a real waypoint: client ztunnel
(hbone forward) -> waypoint Envoy (agent, CA certificate, secure xDS) -> real loopback backends.

* gRPC: real grpcio servers and client (generic handlers, bytes in and out: no protos).  Calls are
  routed by method (A -> v1, B -> v2), a request header set by the route reaches the backend, a
  response header added by the route reaches the client, a service match is split 80/20 per call,
  and a method no rule matches reaches no backend.
* TCP: connections to a Service split 80/20 between two other Services; its own pod gets none
  until the TCPRoute is removed.
* TLS: the client's TLS (SNI = the service's name) passes through the waypoint untouched to the
  TLSRoute's backend, whose self-signed certificate (made here) is the only one the client trusts;
  a TLSRoute naming another hostname does not apply, so that service keeps its own pod.

Weighted counts: v2's share is Binomial(200, 0.2) (mean 40, sd 5.7); the bounds are +-5 sd
(12..68): a false failure below one in a million, and both an ignored weight (100) and an
all-or-nothing pick (0 or 200) fall far outside.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import math
import ssl
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_pod_ips, alloc_vips, port_free_on_all
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

N = 200
V2_SHARE = 0.2


def assert_split(counts: collections.Counter[str], v1: str, v2: str) -> None:
    sd = math.sqrt(N * V2_SHARE * (1 - V2_SHARE))
    print(f"\n80/20: {N} -> {dict(counts)} (v2 expected {N * V2_SHARE:.0f} +- {5 * sd:.0f})")
    assert set(counts) <= {v1, v2} and sum(counts.values()) == N, counts
    assert abs(counts[v2] - N * V2_SHARE) <= 5 * sd, counts


# --------------------------------------------------------------------------- gRPC

GRPC_CONFIG = SHOP_WAYPOINT + """apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: greeter}}
  ports: [{{name: rpc, appProtocol: grpc, port: 50051, targetPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: greeter-v1, namespace: shop}}
spec:
  clusterIP: {vip1}
  selector: {{app: greeter, version: v1}}
  ports: [{{name: grpc, port: 50051, targetPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: greeter-v2, namespace: shop}}
spec:
  clusterIP: {vip2}
  selector: {{app: greeter, version: v2}}
  ports: [{{name: grpc, port: 50051, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: greeter-v1, namespace: shop, labels: {{app: greeter, version: v1}}}}
status: {{podIP: {ip1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: greeter-v2, namespace: shop, labels: {{app: greeter, version: v2}}}}
status: {{podIP: {ip2}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: greeter, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: greeter}}]
  rules:
  - matches: [{{method: {{service: test.Echo, method: A}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: rule-a}}]}}
    backendRefs: [{{name: greeter-v1, port: 50051}}]
  - matches: [{{method: {{service: test.Echo, method: B}}}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-served-by, value: waypoint}}]}}
    backendRefs: [{{name: greeter-v2, port: 50051}}]
  - matches: [{{method: {{service: test.Split}}}}]
    backendRefs:
    - {{name: greeter-v1, port: 50051, weight: 80}}
    - {{name: greeter-v2, port: 50051, weight: 20}}
"""


class GrpcPod:
    """A real gRPC server answering every method with ``<pod> <method> <x-route metadata>``."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.address = name, f"{host}:{port}"
        self.calls: collections.Counter[str] = collections.Counter()
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((self._Handler(self),))

    class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
        def __init__(self, pod: GrpcPod) -> None:
            self.pod = pod

        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            method = details.method
            route = dict(details.invocation_metadata).get("x-route", "-")
            pod = self.pod

            async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                pod.calls[method] += 1
                return f"{pod.name} {method} {route} {request.decode()}".encode()

            return grpc.unary_unary_rpc_method_handler(answer)

    async def __aenter__(self) -> GrpcPod:
        if self.server.add_insecure_port(self.address) == 0:
            raise OSError(f"cannot bind {self.address}")
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


async def call(channel: grpc.aio.Channel, method: str, payload: str = "hi"
               ) -> tuple[str, dict[str, str | bytes]]:
    """One unary call with raw bytes; (answer, response initial metadata)."""
    rpc = channel.unary_unary(method)
    c = rpc(payload.encode(), timeout=5)
    answer = await c
    return answer.decode(), dict(await c.initial_metadata())


async def test_grpcroute_routes_by_method_sets_headers_and_splits_by_weight(tmp_path: Path) -> None:
    ip1, ip2 = alloc_pod_ips(2)
    port = port_free_on_all([ip1, ip2])
    wp = exclusive_ip()
    vip, vip1, vip2 = alloc_vips(3)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(GRPC_CONFIG.format(wp=wp, vip=vip, vip1=vip1, vip2=vip2, port=port,
                                                      ip1=ip1, ip2=ip2))
    async with GrpcPod("greeter-v1", ip1, port) as v1, GrpcPod("greeter-v2", ip2, port) as v2, \
            ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 50051)], wp) as local, grpc.aio.insecure_channel(local[(vip, 50051)]) as channel:

        async def routed() -> bool:
            try:
                return (await call(channel, "/test.Echo/A"))[0].startswith("greeter-v1 ")
            except grpc.aio.AioRpcError:
                return False

        await wait_until(routed, timeout=30, message="gRPC through the waypoint")
        v1.calls.clear()
        v2.calls.clear()

        # By method; the rule's request header reaches the backend, its response header the client.
        for i in range(10):
            answer, meta = await call(channel, "/test.Echo/A", f"a{i}")
            assert answer == f"greeter-v1 /test.Echo/A rule-a a{i}"
            assert "x-served-by" not in meta
            answer, meta = await call(channel, "/test.Echo/B", f"b{i}")
            assert answer == f"greeter-v2 /test.Echo/B - b{i}"
            assert meta.get("x-served-by") == "waypoint"
        assert (v1.calls, v2.calls) == ({"/test.Echo/A": 10}, {"/test.Echo/B": 10})

        # No rule matches this method: it reaches no backend.
        with pytest.raises(grpc.aio.AioRpcError) as missed:
            await call(channel, "/test.Echo/C")
        print(f"\nunmatched method: {missed.value.code()}")
        assert sum(v1.calls.values()) + sum(v2.calls.values()) == 20

        # A service match split 80/20, one pick per call (all calls share one HTTP/2 connection).
        counts: collections.Counter[str] = collections.Counter()
        for i in range(N):
            answer, _ = await call(channel, f"/test.Split/M{i % 3}", str(i))
            pod, method, _, echoed = answer.split(" ")
            assert (method, echoed) == (f"/test.Split/M{i % 3}", str(i))
            counts[pod] += 1
        assert_split(counts, "greeter-v1", "greeter-v2")
        assert sum(v2.calls[m] for m in v2.calls if m.startswith("/test.Split/")) == counts["greeter-v2"]


# --------------------------------------------------------------------------- TCP and TLS


class StreamPod:
    """Answers each connection's first line with ``<name> <line>`` (over TLS when given a context)."""

    def __init__(self, name: str, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.name, self.host, self.port, self.tls = name, host, port, tls
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.write(f"{self.name} {line.decode().strip()}\n".encode())
            await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> StreamPod:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def exchange(addr: str, text: str, tls: ssl.SSLContext | None = None, sni: str | None = None) -> str:
    """One connection: send a line, return the answer ("" if none)."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=tls, server_hostname=sni if tls else None), 5)
    try:
        writer.write(text.encode() + b"\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()


def _service(name: str, vip: str, port_name: str, port: int, target: int, app: str) -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: {app}}}
  ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]
---
"""


def _pod(name: str, ip: str, app: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}
status: {{podIP: {ip}}}
---
"""


TCP_ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: db}]
  rules:
  - backendRefs: [{name: db-a, port: 9000, weight: 80}, {name: db-b, port: 9000, weight: 20}]
"""


async def test_tcproute_splits_connections_between_services(tmp_path: Path) -> None:
    own_ip, ip_a, ip_b = alloc_pod_ips(3)
    port = port_free_on_all([own_ip, ip_a, ip_b])
    wp = exclusive_ip()
    vip, vip_a, vip_b = alloc_vips(3)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(
        SHOP_WAYPOINT.format(wp=wp) + _service("db", vip, "tcp", 9000, port, "db")
        + _service("db-a", vip_a, "tcp", 9000, port, "db-a") + _service("db-b", vip_b, "tcp", 9000, port, "db-b")
        + _pod("db-own", own_ip, "db") + _pod("db-a", ip_a, "db-a") + _pod("db-b", ip_b, "db-b"))
    (cfg / "route.yaml").write_text(TCP_ROUTE)
    async with StreamPod("db-own", own_ip, port) as own, StreamPod("db-a", ip_a, port) as a, \
            StreamPod("db-b", ip_b, port) as b, ambient_mesh(tmp_path, cfg) as mesh, \
            mesh.waypoint("shop", "waypoint", wp), mesh.client([(vip, 9000)], wp) as local:
        addr = local[(vip, 9000)]

        async def routed() -> bool:
            try:
                return (await exchange(addr, "ping")).startswith("db-a ")
            except (OSError, TimeoutError):
                return False

        await wait_until(routed, timeout=30, message="TCP through the waypoint to the TCPRoute's backend")
        own.connections = a.connections = b.connections = 0
        counts: collections.Counter[str] = collections.Counter()
        for i in range(N):
            name, _, echoed = (await exchange(addr, f"hello {i}")).partition(" ")
            assert echoed == f"hello {i}"  # the bytes went through unchanged, both ways
            counts[name] += 1
        assert_split(counts, "db-a", "db-b")
        assert (own.connections, a.connections, b.connections) == (0, counts["db-a"], counts["db-b"])

        # Removing the TCPRoute gives the service its own pod back (the default tcp_proxy).
        (cfg / "route.yaml").unlink()

        async def default_route() -> bool:
            try:
                return (await exchange(addr, "again")).startswith("db-own ")
            except (OSError, TimeoutError):
                return False

        await wait_until(default_route, timeout=15, message="the service's own pod once the TCPRoute is gone")


def _self_signed(host: str, directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A fresh key and self-signed certificate for ``host``: (server context, a client context
    that trusts only that certificate and checks the name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


TLS_ROUTES = """apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: secure, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: secure}]
  hostnames: [secure.shop.svc.cluster.local]
  rules:
  - backendRefs: [{name: secure-routed, port: 443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: other, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: other}]
  hostnames: [api.example.com]
  rules:
  - backendRefs: [{name: secure-routed, port: 443}]
"""


async def _tls_names(addr: str, sni: str, trust: Sequence[ssl.SSLContext], n: int) -> collections.Counter[str]:
    """``n`` TLS connections with SNI ``sni``; who answered, by the context that verified it."""
    out: collections.Counter[str] = collections.Counter()
    for i in range(n):
        for ctx in trust:
            try:
                name, _, echoed = (await exchange(addr, f"tls {i}", ctx, sni)).partition(" ")
            except ssl.SSLCertVerificationError:
                continue
            assert echoed == f"tls {i}"
            out[name] += 1
            break
        else:
            out["unverified"] += 1
    return out


async def test_tlsroute_passes_tls_through_to_the_routed_backend(tmp_path: Path) -> None:
    own_ip, routed_ip, other_ip = alloc_pod_ips(3)
    port = port_free_on_all([own_ip, routed_ip, other_ip])
    wp = exclusive_ip()
    vip, vip_routed, vip_other = alloc_vips(3)
    host, other_host = "secure.shop.svc.cluster.local", "other.shop.svc.cluster.local"
    own_srv, own_cli = _self_signed(host, tmp_path, "own")
    routed_srv, routed_cli = _self_signed(host, tmp_path, "routed")
    other_srv, other_cli = _self_signed(other_host, tmp_path, "other")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(
        SHOP_WAYPOINT.format(wp=wp) + _service("secure", vip, "tls", 443, port, "secure")
        + _service("secure-routed", vip_routed, "tls", 443, port, "secure-routed")
        + _service("other", vip_other, "tls", 443, port, "other")
        + _pod("secure-own", own_ip, "secure") + _pod("secure-routed", routed_ip, "secure-routed")
        + _pod("other-own", other_ip, "other") + TLS_ROUTES)
    async with StreamPod("secure-own", own_ip, port, own_srv) as own, \
            StreamPod("secure-routed", routed_ip, port, routed_srv) as routed, \
            StreamPod("other-own", other_ip, port, other_srv) as other, \
            ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 443), (vip_other, 443)], wp) as local:
        addr, other_addr = local[(vip, 443)], local[(vip_other, 443)]

        async def through() -> bool:
            try:
                return (await _tls_names(addr, host, [routed_cli], 1)) == {"secure-routed": 1}
            except (OSError, TimeoutError):
                return False

        await wait_until(through, timeout=30, message="TLS through the waypoint to the TLSRoute's backend")
        own.connections = routed.connections = other.connections = 0
        # Only the routed backend's certificate verifies: the handshake was end to end (the waypoint
        # does not terminate TLS), and it never reached the service's own pod.
        assert await _tls_names(addr, host, [routed_cli, own_cli], 20) == {"secure-routed": 20}
        assert (own.connections, routed.connections) == (0, 20)
        # "other": its TLSRoute names api.example.com, not the service; waypoints do not apply it.
        assert await _tls_names(other_addr, other_host, [other_cli, routed_cli], 10) == {"other-own": 10}
        assert (other.connections, routed.connections) == (10, 20)
