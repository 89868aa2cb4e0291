"""Everything the proxies of one waypoint receive, assembled one way for every caller.

translate (``WaypointTranslator``, memoised per service) -> telemetry (``TelemetryMemo``: access logs,
tracing and its collectors) -> ``connect_terminate`` for the proxy's own address.  The server, the
``translate`` command and the golden tests all go through ``WaypointAssembly``, so a golden file
states exactly what a waypoint proxy is served.

The server versions the two parts separately - ``shared`` once per config change for every
proxy of the waypoint, ``connect_terminate`` once per proxy address - because replicas differ only
in that one listener; ``proxy_resources`` is those very two parts joined, for one proxy.  Pure:
the memos inside only skip recomputing what would come out identical.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.listener.v3 import listener_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig, ProxyPathNormalization
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.translator.clusters.locality import ProxyLocality, proxy_locality
from istiod_lite.translator.clusters.locality_lb import failover_priority_labels
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.shape import hbone
from istiod_lite.translator.shape.proxy_headers import header_settings
from istiod_lite.translator.telemetry import TelemetryMemo
from istiod_lite.translator.waypoint.translator import DEFAULT_TRUST_DOMAIN, WaypointTranslator

#: Where ``connect_terminate`` listens when neither the proxy nor the Gateway names an address.
ANY_ADDRESS = "0.0.0.0"


class WaypointAssembly:
    """One waypoint's resources: the shared set every replica gets, plus its per-proxy listener.

    One instance per waypoint, kept across config changes (the memos are what make a change cost
    only the services it touches).  ``mesh`` is fixed for the instance; ``path_normalization``
    defaults to ``mesh.pathNormalization`` when ``mesh`` is given, else BASE.  ``encoded``: the
    per-service resources come out as ``Encoded`` bytes (the server; ``WaypointTranslator``).
    ``dynamic_dns``: how ``DYNAMIC_DNS`` entries are served (server options, default as istiod).
    ``proxy``: the proxies' locality (``proxy_locality_of`` finds it); one assembly per value.
    """

    def __init__(self, ref: WaypointRef, trust_domain: str | None = None, mesh: MeshConfig | None = None,
                 path_normalization: ProxyPathNormalization | None = None, encoded: bool = False,
                 proxy: ProxyLocality | None = None, dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS) -> None:
        if path_normalization is None and mesh is not None:
            path_normalization = mesh.path_normalization
        if trust_domain is None:
            trust_domain = mesh.trust_domain if mesh is not None else DEFAULT_TRUST_DOMAIN
        self.ref = ref
        self.trust_domain = trust_domain
        #: MeshConfig ``trustDomainAliases``: peers of these domains pass the HBONE SAN check too.
        self.aliases = mesh.trust_domain_aliases if mesh is not None else ()
        self.headers = header_settings(mesh)
        self.mesh = mesh
        self.proxy = proxy
        self.translator = WaypointTranslator(ref, trust_domain, path_normalization, mesh, encoded, proxy,
                                             dynamic_dns)
        self._telemetry = TelemetryMemo(ref)

    def shared(self, snapshot: ConfigSnapshot) -> EnvoyResources:
        """Everything but ``connect_terminate``: the same for every proxy of the waypoint.

        Returns the previous object itself when nothing it reads changed (callers must not mutate it).
        """
        return self._telemetry.apply(self.translator.translate(snapshot), snapshot, self.mesh)

    def connect_terminate(self, address: str) -> listener_pb2.Listener:
        """The per-proxy listener: HBONE termination on the proxy's own address (so several
        waypoints can share one host)."""
        return hbone.connect_terminate(address, self.trust_domain, self.aliases, self.headers)

    def default_address(self, snapshot: ConfigSnapshot) -> str:
        """The waypoint's first address (Gateway status, else spec), else ``0.0.0.0``."""
        wp = bindings_of(snapshot).waypoints.get(self.ref)
        return wp.addresses[0] if wp is not None and wp.addresses else ANY_ADDRESS

    def proxy_resources(self, snapshot: ConfigSnapshot, address: str | None = None) -> EnvoyResources:
        """Everything one proxy at ``address`` (default: ``default_address``) receives, sorted."""
        out = self.shared(snapshot).copy()
        out.listeners[hbone.CONNECT_TERMINATE] = self.connect_terminate(
            address if address is not None else self.default_address(snapshot))
        return out.sorted()


def proxy_locality_of(snapshot: ConfigSnapshot, ref: WaypointRef, address: str, mesh: MeshConfig | None = None,
                      node_labels: Mapping[str, str] | None = None, node_locality: str = "") -> ProxyLocality:
    """Where a proxy of ``ref`` at ``address`` is, as istiod finds it: the pod at that address
    and its node, else what the proxy's node metadata says (``locality.proxy_locality``); with
    only the labels some ``failoverPriority`` compares."""
    return proxy_locality(snapshot, address, node_labels or {}, node_locality, ref.namespace,
                          failover_priority_labels(snapshot, mesh))


def translate_waypoint(
    snapshot: ConfigSnapshot, ref: WaypointRef, bind_ip: str | None = None,
    trust_domain: str | None = None, mesh: MeshConfig | None = None,
    path_normalization: ProxyPathNormalization | None = None, dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS,
) -> EnvoyResources:
    """One-shot ``WaypointAssembly(...).proxy_resources(snapshot, bind_ip)`` (tests, offline use)."""
    return WaypointAssembly(ref, trust_domain, mesh, path_normalization,
                            dynamic_dns=dynamic_dns).proxy_resources(snapshot, bind_ip)
