"""The whole ambient data path for a test, every part the product's own:

* the control plane in-process, with its CA and secure port (``control_plane(..., ca_dir=...)``);
* a waypoint: ``WaypointAgent`` (certificate from the CA over TLS with a token, SDS, Envoy);
* the client's ztunnel: ``istiod-lite hbone`` outbound tunnels (plain TCP in, HBONE to the waypoint);
* ambient pods' ztunnels: HBONE terminators on ``<podIP>:15008`` delivering to the app.

``async with ambient_mesh(tmp_path, config_dir) as mesh:`` then ``mesh.waypoint(...)``,
``mesh.client(...)``, ``mesh.pod_ztunnel(...)`` (each an async context manager).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.tokens import create_token
from istiod_lite.controlplane.app import ControlPlane
from istiod_lite.envoy_binary import envoy_binary
from istiod_lite.hbone import Endpoint, FileCredentials, HboneConfig, HboneProxy, InboundTerminator, OutboundTunnel
from istiod_lite.hbone.node import HboneNode, NodeConfig
from istiod_lite.hbone.xdsclient import ztunnel_node
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from tests.support.controlplane import control_plane
from tests.support.ports import alloc_pod_ip, free_port

HBONE_PORT = 15008
_IP_LOCKS = Path(tempfile.gettempdir()) / "istiod-lite-test-ip-locks"
_held: list[object] = []


def exclusive_ip() -> str:
    """A loopback address whose port 15008 no other test (in any process) uses while we run.

    Port 15008 is fixed for every waypoint and ztunnel stand-in, and separate pytest processes
    hand out the same addresses: claim each with a lock file and probe it with a bind.
    """
    _IP_LOCKS.mkdir(exist_ok=True)
    for _ in range(200):
        ip = alloc_pod_ip()
        lock = open(_IP_LOCKS / ip, "a")  # noqa: SIM115 (held for the process lifetime)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        with socket.socket() as probe:
            try:
                probe.bind((ip, HBONE_PORT))
            except OSError:
                lock.close()
                continue
        _held.append(lock)
        return ip
    raise RuntimeError("no loopback address with a free port 15008")


@contextlib.contextmanager
def _short_dir(prefix: str) -> Iterator[Path]:
    """Unix socket paths must fit in 107 bytes; pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class _ForeignPeerConfig(HboneConfig):
    """A client ztunnel whose own certificate is of another trust domain (an aliased or foreign
    peer): it accepts any SPIFFE certificate, its own and the waypoint's (the waypoint's SAN check
    on it is what such a test exercises)."""

    @property
    def peer_san_prefix(self) -> str:
        return "spiffe://"


@dataclass
class Mesh:
    cp: ControlPlane
    ca_dir: Path
    tmp: Path
    trust_domain: str = "cluster.local"

    @property
    def root(self) -> Path:
        return self.ca_dir / ROOT_CERT

    def token_file(self, namespace: str, sa: str) -> Path:
        path = self.tmp / f"token-{namespace}-{sa}"
        path.write_text(create_token(self.ca_dir, namespace, sa) + "\n")
        return path

    def credentials(self, namespace: str, sa: str, trust_domain: str | None = None) -> FileCredentials:
        """A CA-issued certificate for ``spiffe://td/ns/<namespace>/sa/<sa>``, as files; ``trust_domain``
        (default: the mesh's) lets a test act as a peer of an aliased or foreign trust domain."""
        assert self.cp.ca is not None
        authority = self.cp.ca.authority
        key = ec.generate_private_key(ec.SECP256R1())
        spiffe = f"spiffe://{trust_domain or self.trust_domain}/ns/{namespace}/sa/{sa}"
        leaf = authority.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe), dt.timedelta(hours=2))
        out = self.tmp / f"creds-{namespace}-{sa}-{free_port()}"
        out.mkdir(parents=True)
        (out / "cert.pem").write_text(leaf + "".join(authority.material.chain_tail_pem[:-1]))
        (out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (out / "root.pem").write_text(authority.material.root_pem)
        return FileCredentials(out / "cert.pem", out / "key.pem", out / "root.pem")

    @contextlib.asynccontextmanager
    async def waypoint(self, namespace: str, name: str, ip: str, sa: str | None = None,
                       prometheus_port: int = 0) -> AsyncIterator[WaypointAgent]:
        """A waypoint proxy as ``istiod-lite waypoint run`` runs it, bound to ``ip`` (with Istio's
        Prometheus port on ``ip:prometheus_port`` when given)."""
        with _short_dir("wp-") as work:
            identity = WaypointIdentity(name=name, namespace=namespace, ip=ip, service_account=sa or name)
            secure = self.cp.secure_port
            config = AgentConfig(
                identity=identity,
                token_file=self.token_file(namespace, sa or name),
                xds_address=f"127.0.0.1:{secure}",
                xds_tls=True,
                ca_address=f"127.0.0.1:{secure}",
                root_cert=self.root,
                # A short termination drain: the drain request is still made, tests do not wait 5 s.
                envoy=EnvoySettings(binary=envoy_binary(), admin_port=free_port(), concurrency=1,
                                    output_path=work / "envoy.out", termination_drain_duration=0.5,
                                    prometheus_port=prometheus_port),
                work_dir=work,
                # DestinationRule file credentials of the tests live under the test's directory
                # (in a pod: the agent's --credential-dir, by default /etc/certs and /etc/istio).
                credential_dirs=(self.tmp,),
            )
            agent = WaypointAgent(config)
            import asyncio

            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                yield agent
            except BaseException:
                out = work / "envoy.out"
                print(f"\n----- waypoint {namespace}/{name} Envoy -----\n"
                      + (out.read_text()[-6000:] if out.exists() else "(none)"))
                raise
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)

    @contextlib.asynccontextmanager
    async def client(self, targets: Sequence[tuple[str, int]], waypoint_ip: str, namespace: str = "client",
                     sa: str = "client", trust_domain: str | None = None) -> AsyncIterator[dict[tuple[str, int], str]]:
        """The client's ztunnel: one local ``127.0.0.1:port`` per (VIP, port), tunnelled to the waypoint.

        Yields {(vip, port): "127.0.0.1:<local port>"}.
        """
        tunnels = tuple(OutboundTunnel(Endpoint("127.0.0.1", 0), Endpoint(vip, port), Endpoint(waypoint_ip, HBONE_PORT))
                        for vip, port in targets)
        config = HboneConfig(outbound=tunnels) if trust_domain is None else _ForeignPeerConfig(outbound=tunnels)
        proxy = HboneProxy(config, self.credentials(namespace, sa, trust_domain), concurrency=1)
        await proxy.start()
        try:
            yield dict(zip(targets, (str(a) for a in proxy.outbound_addresses), strict=True))
        finally:
            await proxy.stop()

    @contextlib.asynccontextmanager
    async def pod_ztunnels(self, pod_ips: Sequence[str], namespace: str = "default",
                           sa: str = "default") -> AsyncIterator[HboneProxy]:
        """Destination ztunnels for ambient pods: HBONE on each ``<podIP>:15008``, to the pod's app."""
        proxy = HboneProxy(HboneConfig(inbound=tuple(InboundTerminator(Endpoint(ip, HBONE_PORT)) for ip in pod_ips)),
                           self.credentials(namespace, sa), concurrency=1)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.stop()


    @contextlib.asynccontextmanager
    async def ztunnel(self, *, capture: bool = True, routes: Sequence[tuple[Endpoint, Endpoint]] = (),
                      inbound_pods: Sequence[str] = (), plaintext: Sequence[tuple[Endpoint, Endpoint]] = (),
                      namespace: str = "client", sa: str = "client",
                      node_name: str = "node-a") -> AsyncIterator[HboneNode]:
        """An xDS-driven node (``istiod-lite hbone node``): its destinations come from the control
        plane's ztunnel xDS (over the plaintext gRPC port), and follow every push."""
        import grpc

        node = ztunnel_node(pod=f"ztunnel-{node_name}", ip="127.0.0.1", node_name=node_name)
        config = NodeConfig(node=node, capture=capture, routes=tuple(routes), inbound_pods=tuple(inbound_pods),
                            plaintext=tuple(plaintext), trust_domain=self.trust_domain)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.cp.grpc_port}") as channel:
            zt = HboneNode(config, self.credentials(namespace, sa), channel)
            await zt.start()
            try:
                yield zt
            except BaseException:
                print(f"\n----- node {node_name} Envoy -----\n{zt.proxy.log_tail()}")
                raise
            finally:
                await zt.stop()


@contextlib.asynccontextmanager
async def ambient_mesh(tmp_path: Path, config_dir: Path, *, quiet: float = 0.05,
                       mesh: MeshConfig | None = None,
                       dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS) -> AsyncIterator[Mesh]:
    ca_dir = tmp_path / "ca"
    async with control_plane(config_dir, quiet=quiet, ca_dir=ca_dir, mesh=mesh, dynamic_dns=dynamic_dns) as cp:
        yield Mesh(cp, ca_dir, tmp_path)
