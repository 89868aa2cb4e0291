"""The waypoint agent: pilot-agent's job for one waypoint Envoy, wired from the parts in this package.

Order matters, and is Istio's:

1. the SDS server and the xDS proxy listen on their Unix sockets (SDS refuses streams until it has
   a certificate; the proxy forwards Envoy's ADS streams to istiod with the token, ``xdsproxy.py``);
2. the rotator gets the first certificate from the CA and publishes it to SDS;
3. only then is the bootstrap written and Envoy started, so Envoy's first SDS request is answered
   at once and its TLS contexts never start empty;
4. from then on the rotator renews in the background and the supervisor keeps Envoy up.

Envoy's ``xds-grpc`` cluster always points at the proxy's socket; only the proxy's upstream differs
between the secure port (TLS + bearer token) and ``--plaintext-xds``.  The node metadata names the
identity the token and the certificate carry: the first certificate is only accepted if the CA, which
takes the identity from the token, issued exactly this SPIFFE ID (``certs.check_response``), so
Envoy never starts with a node identity istiod would refuse.

Stopping (``stop`` event): Envoy first (it is the SDS and xDS client), then the xDS proxy, the
rotator, the SDS server and the CA channel; a working directory the agent created itself is removed.
If the rotator or the supervisor fails for good, the agent stops everything and ``run`` returns 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from istiod_lite.agent.bootstrap import DEFAULT_CLUSTER_ID, WaypointIdentity, waypoint_bootstrap
from istiod_lite.agent.certs import (
    CaClient,
    CaClientConfig,
    CertificateRequest,
    IssuedCertificate,
    KeyAlgorithm,
    fetch_certificate,
    spiffe_id,
)
from istiod_lite.agent.filesecrets import DEFAULT_CREDENTIAL_DIRS
from istiod_lite.agent.rotation import CertRotator, RotationPolicy
from istiod_lite.agent.sds import SdsServer
from istiod_lite.agent.stats.collector import StatsCollector
from istiod_lite.agent.stats.scrape import PrometheusEndpoint
from istiod_lite.agent.supervisor import EXIT_FAILED, EXIT_OK, EnvoySupervisor, SupervisorOptions
from istiod_lite.agent.uds import check_socket_path
from istiod_lite.agent.workdir import prepare_work_dir, write_file
from istiod_lite.agent.xdsproxy import XdsProxy, XdsProxyConfig

log = logging.getLogger(__name__)

#: Istio's ``SECRET_TTL`` default: the validity the agent asks the CA for.
DEFAULT_CERT_TTL = 24 * 3600
#: Istio's ProxyConfig ``drainDuration``: Envoy's ``--drain-time-s``.
DEFAULT_DRAIN_DURATION = 45.0
#: Istio's ProxyConfig ``terminationDrainDuration``: listeners drain this long before Envoy is stopped.
DEFAULT_TERMINATION_DRAIN = 5.0
DRAIN_STRATEGIES = ("immediate", "gradual")


@dataclass(frozen=True)
class EnvoySettings:
    binary: str
    admin_port: int = 15000
    log_level: str = "warning"
    concurrency: int = 2
    #: After SIGTERM, how long Envoy may take to exit before SIGKILL.
    drain_timeout: float = 5.0
    #: Envoy's ``--drain-time-s`` (rounded up to whole seconds): how long a replaced listener or
    #: filter chain, or a draining Envoy, keeps its connections.
    drain_duration: float = DEFAULT_DRAIN_DURATION
    #: Envoy's ``--drain-strategy``: ``immediate`` (pilot-agent's: every connection of a draining
    #: chain is told to close at once) or ``gradual``.
    drain_strategy: str = "immediate"
    #: On stop: drain the listeners, wait this long (or until Envoy exits), then SIGTERM.
    termination_drain_duration: float = DEFAULT_TERMINATION_DRAIN
    max_restarts: int = 0
    #: Envoy's stdout/stderr file (``None``: the agent's own).
    output_path: Path | None = None
    #: Istio's status port (15021: ``/healthz/ready``) on the proxy's IP; 0: none.
    status_port: int = 0
    #: Istio's Prometheus port (15090: ``/stats/prometheus``) on the proxy's IP; 0: none.
    prometheus_port: int = 0

    def __post_init__(self) -> None:
        if self.drain_strategy not in DRAIN_STRATEGIES:
            raise ValueError(f"drain strategy must be one of {', '.join(DRAIN_STRATEGIES)}")
        if self.drain_duration <= 0 or self.termination_drain_duration < 0:
            raise ValueError("the drain duration must be positive, the termination drain not negative")


@dataclass(frozen=True)
class AgentConfig:
    identity: WaypointIdentity
    token_file: Path
    xds_address: str
    ca_address: str
    root_cert: Path
    envoy: EnvoySettings
    trust_domain: str = "cluster.local"
    cert_ttl: int = DEFAULT_CERT_TTL
    key_algorithm: KeyAlgorithm = "ec-p256"
    #: The xDS proxy reaches istiod over TLS with the bearer token (Istio's 15012); False =
    #: plaintext without token (15010).  Envoy talks to the proxy's Unix socket either way.
    xds_tls: bool = True
    #: Names to verify on the CA's / xDS server's certificate (``None``: see ``tls_server_name``).
    ca_server_name: str | None = None
    xds_server_name: str | None = None
    delta: bool = True
    cluster_id: str = DEFAULT_CLUSTER_ID
    #: Where the bootstrap, the SDS and xDS sockets and the PID file go (``None``: a private temp
    #: dir, removed on exit).  Keep it short: a socket path must fit in 107 bytes.
    work_dir: Path | None = None
    #: The only directories DestinationRule file credentials are read from (``filesecrets``).
    credential_dirs: tuple[Path, ...] = DEFAULT_CREDENTIAL_DIRS
    rotation: RotationPolicy = field(default_factory=RotationPolicy)
    #: Istio's standard metrics: the access-log service the translator's metrics loggers stream to,
    #: served on the Prometheus port with Envoy's stats (``stats/``); only with a Prometheus port.
    #: False: Envoy's stats only.
    istio_metrics: bool = True

    @property
    def spiffe(self) -> str:
        return spiffe_id(self.trust_domain, self.identity.namespace, self.identity.effective_service_account)


def load_root_cert(path: Path) -> bytes:
    """The PEM bundle trusted for the CA (and xDS); refuses a file without a certificate, which
    would otherwise only show up as endless handshake failures."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read --root-cert {path}: {exc.strerror or exc}") from exc
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"--root-cert {path} holds no PEM certificate: {exc}") from exc
    return data


class WaypointAgent:
    """One waypoint: certificate, SDS, bootstrap and Envoy.  ``await agent.run(stop)``."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._own_work_dir = config.work_dir is None
        self.work_dir = config.work_dir or Path(tempfile.mkdtemp(prefix="istiod-lite-waypoint-"))
        self.bootstrap_path = self.work_dir / "bootstrap.json"
        self.sds = SdsServer(self.work_dir / "sds" / "socket", credential_dirs=config.credential_dirs)
        # Istio's ./etc/istio/proxy/XDS.  The proxy itself is built by ``run``, once the root
        # certificate it trusts has been read; the path is checked now, like the SDS one.
        self.xds_socket_path = self.work_dir / "proxy" / "XDS"
        check_socket_path(self.xds_socket_path, "xDS proxy socket")
        self.xds_proxy: XdsProxy | None = None
        self.stats: StatsCollector | None = None
        self.prometheus: PrometheusEndpoint | None = None
        if config.istio_metrics and config.envoy.prometheus_port:  # nothing would read them without the port
            self.stats = StatsCollector(self.work_dir / "stats" / "als")
            self.prometheus = PrometheusEndpoint(self.work_dir / "stats" / "prom", self.stats, "127.0.0.1",
                                                 config.envoy.admin_port)
        self.supervisor = EnvoySupervisor(SupervisorOptions(
            binary=config.envoy.binary,
            bootstrap_path=self.bootstrap_path,
            admin_address_path=self.work_dir / "admin_address",
            pid_path=self.work_dir / "envoy.pid",
            output_path=config.envoy.output_path,
            log_level=config.envoy.log_level,
            concurrency=config.envoy.concurrency,
            drain_timeout=config.envoy.drain_timeout,
            drain_time=max(1, math.ceil(config.envoy.drain_duration)),
            drain_strategy=config.envoy.drain_strategy,
            termination_drain=config.envoy.termination_drain_duration,
            max_restarts=config.envoy.max_restarts,
        ))
        self._ca: CaClient | None = None
        self.rotator: CertRotator | None = None

    # -- pieces ------------------------------------------------------------------------------------
    def bootstrap(self) -> dict[str, object]:
        c = self.config
        return waypoint_bootstrap(c.identity, None, admin_port=c.envoy.admin_port, delta=c.delta,
                                  sds_socket=str(self.sds.socket_path), xds_socket=str(self.xds_socket_path),
                                  status_port=c.envoy.status_port, prometheus_port=c.envoy.prometheus_port,
                                  stats_socket=str(self.stats.socket_path) if self.stats else None,
                                  prometheus_socket=str(self.prometheus.socket_path) if self.prometheus else None)

    def _xds_proxy_config(self, root: bytes) -> XdsProxyConfig:
        c = self.config
        return XdsProxyConfig(socket_path=self.xds_socket_path, upstream=c.xds_address,
                              root_cert=root if c.xds_tls else None,
                              token_file=c.token_file if c.xds_tls else None,
                              server_name=c.xds_server_name, cluster_id=c.cluster_id)

    def _on_certificate(self, cert: IssuedCertificate) -> None:
        self.sds.update(cert)

    @property
    def certificate(self) -> IssuedCertificate | None:
        return self.sds.current

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (returns 0) or something fails for good (returns 1)."""
        c = self.config
        try:
            if self._own_work_dir:
                self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            else:
                prepare_work_dir(self.work_dir)
            root = await asyncio.to_thread(load_root_cert, c.root_cert)
        except (OSError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            self._cleanup_dir()
            return EXIT_FAILED
        log.info("waypoint %s/%s: identity %s, work dir %s", c.identity.namespace, c.identity.name, c.spiffe,
                 self.work_dir)
        self._ca = CaClient(CaClientConfig(address=c.ca_address, root_cert=root, token_file=c.token_file,
                                           server_name=c.ca_server_name, cluster_id=c.cluster_id))
        request = CertificateRequest(identity=c.spiffe, key_algorithm=c.key_algorithm, ttl_seconds=c.cert_ttl)
        ca = self._ca
        self.rotator = CertRotator(lambda: fetch_certificate(ca, request), self._on_certificate, c.rotation)
        try:
            try:
                await self.sds.start()
            except (OSError, RuntimeError) as exc:  # grpc raises RuntimeError when it cannot bind
                log.error("cannot serve SDS on %s: %s", self.sds.socket_path, exc)
                return EXIT_FAILED
            self.xds_proxy = XdsProxy(self._xds_proxy_config(root))
            try:
                await self.xds_proxy.start()
            except (OSError, RuntimeError) as exc:
                log.error("cannot serve the xDS proxy on %s: %s", self.xds_socket_path, exc)
                self.xds_proxy = None
                return EXIT_FAILED
            try:
                if self.stats is not None:
                    await self.stats.start()
                if self.prometheus is not None:
                    await self.prometheus.start()
            except (OSError, RuntimeError) as exc:
                log.error("cannot serve the Istio metrics: %s", exc)
                return EXIT_FAILED
            self.rotator.start()
            early_exit = await self._first_certificate(stop)
            if early_exit is not None:
                return early_exit
            try:
                await asyncio.to_thread(self._write_bootstrap)
            except OSError as exc:
                log.error("cannot write the bootstrap %s: %s", self.bootstrap_path, exc)
                return EXIT_FAILED
            return await self._supervise(stop)
        finally:
            await self._shutdown()

    async def _first_certificate(self, stop: asyncio.Event) -> int | None:
        """``None`` once the first certificate is in SDS; otherwise the exit code (0: ``stop`` came
        first, 1: the rotator died)."""
        assert self.rotator is not None and self.rotator.task is not None
        first = asyncio.create_task(self.rotator.first_certificate.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({first, stopped, self.rotator.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
            stopped.cancel()
        if stop.is_set():
            return EXIT_OK
        if self.rotator.first_certificate.is_set():
            return None
        self._report_dead_rotator()
        return EXIT_FAILED

    def _report_dead_rotator(self) -> None:
        task = self.rotator.task if self.rotator is not None else None
        exc = None if task is None or task.cancelled() else task.exception()
        log.error("certificate rotation stopped unexpectedly: %r; shutting down", exc)

    def _write_bootstrap(self) -> None:
        write_file(self.bootstrap_path, json.dumps(self.bootstrap(), indent=2, sort_keys=True).encode())

    async def _supervise(self, stop: asyncio.Event) -> int:
        """Run the supervisor; if the rotator dies (a bug), stop Envoy and fail."""
        assert self.rotator is not None and self.rotator.task is not None
        supervisor_stop = asyncio.Event()
        supervised = asyncio.create_task(self.supervisor.run(supervisor_stop), name="envoy-supervisor")
        stopped = asyncio.create_task(stop.wait())
        rotator = self.rotator.task
        try:
            await asyncio.wait({supervised, stopped, rotator}, return_when=asyncio.FIRST_COMPLETED)
            if supervised.done():
                return supervised.result()
            failed = rotator.done()
            if failed:
                self._report_dead_rotator()
            supervisor_stop.set()
            rc = await supervised
            return EXIT_FAILED if failed else rc
        finally:
            stopped.cancel()
            if not supervised.done():
                supervised.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervised

    async def _shutdown(self) -> None:
        """Stop what was started, each step on its own: one failing must not leave the rest running."""
        steps: list[Callable[[], Awaitable[None]]] = []
        if self.xds_proxy is not None:
            steps.append(self.xds_proxy.stop)
        if self.rotator is not None:
            steps.append(self.rotator.stop)
        steps.append(self.sds.stop)
        if self.prometheus is not None:
            steps.append(self.prometheus.stop)
        if self.stats is not None:
            steps.append(self.stats.stop)
        if self._ca is not None:
            steps.append(self._ca.close)
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("error during shutdown (%s)", getattr(step, "__qualname__", step))
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

