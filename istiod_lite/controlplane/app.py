"""The running control plane: source -> snapshot -> translator -> cache -> ADS server.

One object with an explicit lifecycle (``start`` / ``stop``), configured by a dataclass.
It is the only place that knows both the Istio model and the xDS layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from istiod_lite.ca.config import CaConfig, build_authenticators
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.controlplane import config_dump
from istiod_lite.controlplane.affects import affected_types, push_reason
from istiod_lite.controlplane.ambient_status import AmbientStatusWriter
from istiod_lite.controlplane.config_metrics import ConfigMetrics
from istiod_lite.controlplane.debounce import DebounceOptions, Debouncer
from istiod_lite.controlplane.leader import LeaderElectionOptions, LeaderElector
from istiod_lite.controlplane.memtrim import MemoryTrimmer
from istiod_lite.controlplane.pilot_metrics import PilotMetrics
from istiod_lite.controlplane.proxykinds import PROXY_KINDS, KindContext, ProxyKind, ProxyKindTable
from istiod_lite.controlplane.secure import XdsAuthenticator
from istiod_lite.controlplane.supervision import TaskSupervisor
from istiod_lite.controlplane.waypoint_controller import WaypointController, WaypointControllerOptions
from istiod_lite.gcpause import gc_paused
from istiod_lite.model import ConfigError, ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.monitoring.http import MonitoringServer
from istiod_lite.sources import DirectorySource, KubeSource, KubeSourceOptions, MergedSource, Source, SourceUpdate
from istiod_lite.sources.kube import api_client_for
from istiod_lite.sources.kube_status import StatusReporter
from istiod_lite.translator import find_waypoints
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.translator.diagnostics import diagnose
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.server import AdsServer, StreamRefused, XdsServerOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlPlaneOptions:
    #: A YAML config directory; None = none (then ``kube`` must be given).
    config_dir: Path | None
    grpc_addr: str = "0.0.0.0:15010"
    monitoring_addr: str = "0.0.0.0:15014"
    poll_interval: float = 0.5
    debounce: DebounceOptions = field(default_factory=DebounceOptions)
    xds: XdsServerOptions = field(default_factory=XdsServerOptions)
    #: SPIFFE trust domain of the mesh (peer certificates must be in it).
    trust_domain: str = "cluster.local"
    #: Seconds after which a client connection is closed (Istio's Helm default: 30 m); 0 = never.
    max_connection_age: float = 0.0
    #: The secure port (CA + authenticated ADS over TLS); "" = not served.  Needs ``ca``.
    secure_grpc_addr: str = ""
    #: CA key material and token issuers; None = no CA (and no secure port).
    ca: CaConfig | None = None
    #: Extra DNS names/IPs for the secure port's certificate (``--server-san``).
    server_sans: tuple[str, ...] = ()
    #: An mTLS-only port (client certificate required): certificate renewal and ADS authenticated
    #: by the mesh certificate alone.  gRPC Python cannot ask for an *optional* client
    #: certificate, so this cannot share the token port.  "" = not served.
    mtls_grpc_addr: str = ""
    #: Signing worker processes (0: one background thread); see docs/ca.md for the trade-off.
    ca_workers: int = 0
    #: Also (or only) watch a Kubernetes cluster; with ``config_dir`` too, the two are merged and
    #: the directory wins a key both define (docs/kubernetes.md).
    kube: KubeSourceOptions | None = None
    #: With ``kube``: run the waypoint controller (render and apply each istio-waypoint Gateway's
    #: ServiceAccount/Deployment/Service, Gateway status, root-cert ConfigMaps); None = off.
    waypoint_controller: WaypointControllerOptions | None = None
    #: Istio MeshConfig (``--mesh-config``): access logging defaults, providers, root namespace.
    mesh: MeshConfig | None = None
    #: How waypoints serve DYNAMIC_DNS ServiceEntries (``--enable-wildcard-host-service-entries-for-tls``,
    #: ``--dynamic-dns-resolver``); the defaults are istiod's.
    dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS
    #: With ``kube``: only the replica holding this Lease writes to the cluster (status, waypoint
    #: controller); every replica serves.  None = this replica always writes.
    leader_election: LeaderElectionOptions | None = None
    #: With ``kube``: write istiod's ambient binding status (``istio.io/WaypointBound`` on Services and
    #: ServiceEntries, ``WaypointAccepted`` on AuthorizationPolicies, HTTPRoute parents, a waypoint's
    #: attached services) into the cluster (``controlplane/ambient_status.py``).
    ambient_status: bool = True


def build_source(options: ControlPlaneOptions) -> Source:
    """The configured source: the YAML directory, the cluster, or both merged (directory first)."""
    sources: list[Source] = []
    names: list[str] = []
    if options.config_dir is not None:
        # The directory waits until files have been quiet for the debounce period before it reads
        # them: a non-atomic save (truncate, then write) must never be read half-way, or a
        # resource would be removed and its last good version lost (a 20 ms settle was tried
        # and lost a VirtualService under load).
        sources.append(DirectorySource(options.config_dir, poll_interval=options.poll_interval,
                                       debounce=options.debounce.quiet))
        names.append(f"directory {options.config_dir}")
    if options.kube is not None:
        sources.append(KubeSource(options.kube))
        names.append("cluster")
    if not sources:
        raise ValueError("no config source: give a config directory, a cluster, or both")
    return sources[0] if len(sources) == 1 else MergedSource(sources, names)


class ControlPlane:
    def __init__(self, options: ControlPlaneOptions, *, source: Source | None = None,
                 proxy_kinds: Sequence[ProxyKind[Any]] = PROXY_KINDS) -> None:
        """``source`` overrides the one ``options`` describes (tests inject a prepared source);
        ``proxy_kinds`` the kinds of proxy served (``controlplane/proxykinds``)."""
        self.options = options
        self.source: Source = source if source is not None else build_source(options)
        #: Which kind each connecting node is, and each kind's generator of resources.
        self.proxies = ProxyKindTable(proxy_kinds, KindContext(options.trust_domain, options.mesh,
                                                               options.dynamic_dns))
        self.cache = SnapshotCache(self.proxies.group_of, on_demand=self._on_demand, on_release=self.proxies.release)
        self.ca: CaRuntime | None = None
        self._xds_auth: XdsAuthenticator | None = None
        self.ads = AdsServer(self.cache, options.xds, stream_check=self._check_stream)
        self.config = ConfigSnapshot()
        self.errors: tuple[ConfigError, ...] = ()
        self._debouncer: Debouncer[SourceUpdate] = Debouncer(
            self._apply_update, _merge_updates, options.debounce
        )
        self._grpc: grpc.aio.Server | None = None
        self._secure: grpc.aio.Server | None = None
        self.secure_port = 0
        self._mtls: grpc.aio.Server | None = None
        self.mtls_port = 0
        self._binding_problems: set[str] = set()
        self._route_warnings: set[str] = set()
        self._controller: WaypointController | None = None
        self.ambient_status: AmbientStatusWriter | None = None
        self._pending_reconcile: ConfigSnapshot | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self.elector: LeaderElector | None = None
        #: Source, debouncer, memory trimmer, reconcile: a task that dies fails ``/ready`` at once.
        self._supervisor = TaskSupervisor()
        self._monitoring = MonitoringServer(lambda: self.ready, self.ads.status, self.ads.metrics.registry,
                                            loopz=self.ads.load_status, config_dump=self.config_dump)
        self.config_metrics = ConfigMetrics(self.ads.metrics.registry)
        self.pilot_metrics = PilotMetrics(self.ads.metrics.registry)
        self.ads.metrics.reject_listeners.append(self.pilot_metrics.rejected)
        self._loaded = False
        self.grpc_port = 0
        #: Set by ``drain``: ``/ready`` fails from then on.
        self._draining = False

    # -- lifecycle -------------------------------------------------------------------------------
    def _start_controller(self) -> None:
        opts = self.options.waypoint_controller
        if opts is None or self.options.kube is None:
            return
        root = self.ca.material.root_pem if self.ca is not None else None
        if opts.root_cert_pem is None and root is not None:
            opts = dataclasses.replace(opts, root_cert_pem=root)
        self._controller = WaypointController(api_client_for(self.options.kube), opts)

    async def start(self) -> None:
        # Nothing else runs yet: keep the collector off from load to the end of the first
        # translation, so it never walks the freshly loaded config (``_install`` freezes it).
        with gc_paused():
            update = await asyncio.to_thread(self.source.load)
            self._install(update)
        self.cache.mark_ready()
        self.ads.start_monitoring()  # loop lag on /metrics and /debug/loopz, streams or not
        grpc_options: list[tuple[str, int]] = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 15_000),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ]
        if self.options.max_connection_age > 0:
            grpc_options += [
                ("grpc.max_connection_age_ms", int(self.options.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", 10_000),
            ]
        if self.options.grpc_addr:
            self._grpc = grpc.aio.server(options=grpc_options)
            self.ads.register(self._grpc)
            self.grpc_port = self._grpc.add_insecure_port(self.options.grpc_addr)
            await self._grpc.start()
        if self.options.ca is not None:
            self.ca = CaRuntime.create(self.options.ca, registry=self.ads.metrics.registry,
                                       processes=self.options.ca_workers, snapshot=lambda: self.config)
            await self.ca.start()
            # Offline chain in a thread; TokenReviews through the CA's gate (shared bounds).
            offline = build_authenticators(self.options.ca, self.ca.material, token_review=False)
            self._xds_auth = XdsAuthenticator(offline, self.ca.review_gate)
        if self.options.secure_grpc_addr:
            if self.ca is None:
                raise ValueError("the secure port needs a CA (--ca-dir)")
            self._secure = grpc.aio.server(options=grpc_options)
            self.ca.add_to_server(self._secure)
            self.ads.register(self._secure)
            self.secure_port = self._secure.add_secure_port(
                self.options.secure_grpc_addr, self.ca.server_credentials(self.options.server_sans))
            await self._secure.start()
        if self.options.mtls_grpc_addr:
            if self.ca is None:
                raise ValueError("the mTLS port needs a CA (--ca-dir)")
            self._mtls = grpc.aio.server(options=grpc_options)
            self.ca.add_to_server(self._mtls)
            self.ads.register(self._mtls)
            self.mtls_port = self._mtls.add_secure_port(
                self.options.mtls_grpc_addr,
                self.ca.server_credentials(self.options.server_sans, require_client_auth=True))
            await self._mtls.start()
        await self._monitoring.start(self.options.monitoring_addr)
        self._start_controller()
        if self.options.kube is not None and self.options.ambient_status:
            root = self.options.mesh.root_namespace if self.options.mesh is not None else "istio-system"
            self.ambient_status = AmbientStatusWriter(api_client_for(self.options.kube), root_namespace=root)
        self._start_leader_election()  # installs the write gates before any writer starts
        if self.ambient_status is not None:
            self.ambient_status.update(self.config)
            self.ambient_status.start()
        self._reconcile_soon(self.config)
        self._supervisor.spawn(self.source.run(self._on_source_update), "source")
        self._supervisor.spawn(self._debouncer.run(), "debounce")
        self._supervisor.spawn(MemoryTrimmer(lambda: self.ads.metrics.bytes_sent).run(), "memtrim")
        log.info(
            "serving plaintext xDS on %s, secure xDS + CA on %s, monitoring on %s; %d resources, %d errors, "
            "waypoints: %s",
            f"{self.options.grpc_addr} (port {self.grpc_port})" if self._grpc else "-",
            f"{self.options.secure_grpc_addr} (port {self.secure_port})" if self._secure else "-",
            self.options.monitoring_addr, len(self.config),
            len(self.errors), ", ".join(str(w.ref) for w in find_waypoints(self.config)) or "none",
        )

    async def drain(self, period: float) -> None:
        """Leave gracefully before ``stop``: proxies move to other replicas without losing config.

        In order: ``/ready`` fails at once (the replica leaves its Service's endpoints); the gRPC
        servers stop accepting (GOAWAY on every connection, listeners closed: a new stream,
        plaintext or TLS, and a CA request go to another replica, a client that tries here gets
        UNAVAILABLE); the open ADS streams are closed with UNAVAILABLE one by one, spread evenly
        over ``period`` (``AdsServer.drain``), each keeping its config.  istiod's ``--shutdownDuration``
        (10 s) is a gRPC graceful stop: GOAWAY, then every stream still open (ADS streams never end
        by themselves) is cut when it runs out, so every proxy reconnects at the same moment.
        """
        self._draining = True
        tail = 2.0  # after the last close: its in-flight write, then the streams are cancelled
        servers = [s for s in (self._grpc, self._secure, self._mtls) if s is not None]
        stopping = [asyncio.ensure_future(s.stop(period + tail + 1.0)) for s in servers]
        await self.ads.drain(period, tail=tail)
        await asyncio.gather(*stopping)

    async def stop(self, grace: float = 1.0) -> None:
        if self.elector is not None:  # writes stop, and the lease goes to another replica at once
            await self.elector.stop()
        self._pending_reconcile = None
        if self._reconcile_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reconcile_task, 10)
        await self._supervisor.stop()
        if self.ambient_status is not None:
            await asyncio.to_thread(self.ambient_status.close)
        for server in (self._grpc, self._secure, self._mtls):
            if server is not None:
                await server.stop(grace)
        if self.ca is not None:
            await self.ca.close()
        await self._monitoring.stop()
        self.ads.stop_monitoring()

    def _start_leader_election(self) -> None:
        """Cluster mode with several replicas: gate the writers on the Lease (docs/kubernetes.md)."""
        opts = self.options.leader_election
        if opts is None or self.options.kube is None:
            return
        self.elector = LeaderElector(api_client_for(self.options.kube), opts, on_started=self._on_elected,
                                     on_stopped=self._on_deposed, registry=self.ads.metrics.registry)
        if self._controller is not None:
            self._controller.may_write = lambda: self._may_write
        for reporter in self._status_reporters():
            reporter.set_write_gate(lambda: self._may_write)
        if self.ambient_status is not None:
            self.ambient_status.set_write_gate(lambda: self._may_write)
        self._supervisor.spawn(self.elector.run(), "leader-election", long_running=False)

    @property
    def _may_write(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def _status_reporters(self) -> list[StatusReporter]:
        sources = [self.source, *getattr(self.source, "sources", ())]
        return [s.status_reporter for s in sources if isinstance(s, KubeSource) and s.status_reporter is not None]

    def _on_elected(self) -> None:
        """Leader now: what the previous leader left is not known, so re-apply the current snapshot."""
        if self._controller is not None:
            self._controller.invalidate()
        for reporter in self._status_reporters():
            reporter.resume()
        if self.ambient_status is not None:
            self.ambient_status.resume()
        self._reconcile_soon(self.config)

    def _on_deposed(self) -> None:
        """Not the leader any more: no new reconcile (the writes of one in flight are refused)."""
        self._pending_reconcile = None
        if self._reconcile_task is not None:
            self._reconcile_task.cancel()

    def _reconcile_soon(self, snapshot: ConfigSnapshot) -> None:
        """Hand the snapshot to the waypoint controller (cluster mode): it applies off the loop,
        one reconcile at a time, always with the newest snapshot; only on the leader."""
        if self._controller is None or not self._may_write:
            return
        self._pending_reconcile = snapshot
        if self._reconcile_task is None or self._reconcile_task.done():
            self._reconcile_task = self._supervisor.spawn(self._reconcile_loop(), "reconcile", long_running=False)

    async def _reconcile_loop(self) -> None:
        assert self._controller is not None
        while self._pending_reconcile is not None and self._may_write:
            snapshot, self._pending_reconcile = self._pending_reconcile, None
            try:
                result = await asyncio.to_thread(self._controller.reconcile, snapshot)
            except Exception:  # the cluster's problem must never stop serving config
                log.exception("waypoint controller failed; retrying with the next change")
                continue
            for err in result.errors:
                log.warning("waypoint controller: %s", err)

    async def _check_stream(self, conn: Connection, context: grpc.aio.ServicerContext) -> bool:
        """Streams on the TLS port must authenticate (see ``secure.py``); the plaintext port, when
        enabled, is trusted like istiod's 15010 but vouched for by nobody: True only for a stream
        that authenticated (admitted before plaintext ones when the server is busy)."""
        if context.auth_context().get("transport_security_type") != [b"ssl"]:
            return False
        if self._xds_auth is None:
            raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, "authentication failure")
        await self._xds_auth(conn, context)
        return True

    @property
    def ready(self) -> bool:
        """Serving a complete config, every background task it needs is alive, and not shutting
        down (``/ready``)."""
        return self.cache.ready and self._supervisor.healthy and not self._draining

    async def config_dump(self, proxy_id: str) -> dict[str, Any] | None:
        """``/debug/config_dump``: the streams ``proxy_id`` names (``controlplane/config_dump.py``),
        taken on the loop (consistent with the streams' state), decoded in a thread; None = no match."""
        chosen = config_dump.select(self.ads.connections.values(), proxy_id)
        if not chosen:
            return None
        taken = [config_dump.take(c, self.ads.dump(c)) for c in chosen]
        return await asyncio.to_thread(config_dump.render, taken)

    @property
    def monitoring_port(self) -> int:
        return self._monitoring.port

    # -- config flow -----------------------------------------------------------------------------
    async def _on_source_update(self, update: SourceUpdate) -> None:
        self._debouncer.add(update, settled=update.settled)

    async def _apply_update(self, update: SourceUpdate, first_at: float) -> None:
        metrics = self.ads.metrics
        metrics.debounce_time.observe(max(0.0, time.monotonic() - first_at))
        if update.changed and not affected_types(update.changed):
            self._observe(update)
            self.config = update.snapshot  # e.g. only ServiceAccounts changed: no resource can differ
            if self.ambient_status is not None:
                self.ambient_status.update(self.config)  # a status-only change, e.g. our own write
            self.errors = update.errors
            self.config_metrics.set_errors(self.errors)
            return
        metrics.push_triggers.labels(type=push_reason(update.changed)).inc()
        try:
            self._install(update, trigger_time=first_at)
        except Exception:  # never let one bad rebuild kill the loop: the last good config stays
            self.pilot_metrics.internal_errors.inc()
            log.exception("rebuild failed; keeping the previous config")

    def _observe(self, update: SourceUpdate) -> None:
        """Config/registry events and totals (``pilot_k8s_*_events``, ``pilot_services`` ...)."""
        self.pilot_metrics.observe(self.config if self._loaded else None, update.snapshot, update.changed)
        self._loaded = True

    def _install(self, update: SourceUpdate, trigger_time: float | None = None) -> None:
        self._observe(update)
        self._reconcile_soon(update.snapshot)
        self.config = update.snapshot
        if self.ambient_status is not None:
            self.ambient_status.update(self.config)  # evaluated and written in its own thread
        self.errors = update.errors  # each error was logged once, by the source that found it
        self.config_metrics.set_errors(self.errors)
        with gc_paused():  # translation builds long-lived, acyclic objects (see gcpause)
            self._regenerate(update, trigger_time)
        # The config and its translation are long-lived and acyclic: move them out of the cyclic
        # collector's generations so later collections do not rescan them (refcounting frees
        # them when replaced).
        gc.freeze()

    def _regenerate(self, update: SourceUpdate, trigger_time: float | None = None) -> None:
        # No changed keys (the first load): every kind reads the new config.
        changed = {key.kind for key in update.changed} if update.changed else None
        self.proxies.update(self.config, changed)
        found = diagnose(self.config, self.options.mesh, self.options.dynamic_dns)
        problems = set(found.binding)
        for p in sorted(problems - self._binding_problems):
            log.warning("binding: %s", p)
        self._binding_problems = problems
        route, authz, telemetry = set(found.routes), set(found.authorization), set(found.telemetry)
        self.config_metrics.set_warnings(binding=problems, route=route, authorization=authz, telemetry=telemetry)
        warnings = route | authz | telemetry
        for w in sorted(warnings - self._route_warnings):
            log.warning("ignored: %s", w)
        self._route_warnings = warnings
        self.proxies.publish(self.cache, trigger_time)

    def _on_demand(self, group: Hashable) -> None:
        self.proxies.on_demand(self.cache, group)


def _merge_updates(old: SourceUpdate, new: SourceUpdate) -> SourceUpdate:
    """Updates coalesced by the debouncer: the newest snapshot, and every key changed since the last push."""
    return dataclasses.replace(new, changed=old.changed | new.changed)
