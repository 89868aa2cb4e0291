"""Node proxies (Istio's ztunnel): one group for all of them, served workload addresses and L4 policies.

istiod serves every ztunnel the same Address and Authorization sets (a ztunnel filters by node
itself), so all node proxies share one translation; each subscribes wildcard, or by name for
on-demand lookups.  Recognised by the node id ztunnel sends: ``ztunnel~IP~POD.NS~NS.svc.<domain>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2

from istiod_lite.controlplane.proxykinds.base import Generator, KindContext, ProxyKind
from istiod_lite.controlplane.snapshots import VersionedCache
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import DEFAULT_ROOT_NAMESPACE
from istiod_lite.translator.ztunnel import ADDRESS, AUTHORIZATION, ZtunnelOptions, ZtunnelTranslator
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.typeurls import declare_wildcard_type

# ztunnel's first request for these types names nothing and means "everything" (istiod's rule).
declare_wildcard_type(ADDRESS)
declare_wildcard_type(AUTHORIZATION)

#: The config kinds the translation reads (anything else never changes what ztunnel is served).
ZTUNNEL_READS = frozenset({"Pod", "Service", "ServiceEntry", "WorkloadEntry", "EndpointSlice", "Namespace",
                           "AuthorizationPolicy", "PeerAuthentication", "Gateway", "GatewayClass", "Node"})


@dataclass(frozen=True)
class ZtunnelProxies:
    """The one group of every node proxy."""

    def __str__(self) -> str:
        return "ztunnel"


class ZtunnelGenerator(Generator[ZtunnelProxies]):
    """Translates when a node proxy needs it (once per config); re-serialises only changed addresses."""

    def __init__(self, context: KindContext) -> None:
        mesh = context.mesh
        self._opts = ZtunnelOptions(trust_domain=context.trust_domain,
                                    root_namespace=mesh.root_namespace if mesh is not None else DEFAULT_ROOT_NAMESPACE)
        self._translator = ZtunnelTranslator(self._opts)
        self._versions = VersionedCache()
        self._config = ConfigSnapshot()
        self._snapshot: ResourceSnapshot | None = None
        #: Warnings of the last translation (policies accepted in part or not served).
        self.warnings: list[str] = []

    def update(self, config: ConfigSnapshot) -> None:
        self._config = config
        self._snapshot = None

    def snapshot(self, group: ZtunnelProxies) -> ResourceSnapshot:
        if self._snapshot is None:
            result = self._translator.translate(self._config)
            self.warnings = result.warnings
            self._snapshot = ResourceSnapshot.build(self._versions.versioned(result.resources))
        return self._snapshot

    def release(self, group: ZtunnelProxies) -> None:
        # Nobody connected: drop the translation and its memo.
        self._snapshot = None
        self._translator = ZtunnelTranslator(self._opts)
        self._versions = VersionedCache()


def is_ztunnel(node: base_pb2.Node) -> bool:
    return str(node.id).startswith("ztunnel~")


class ZtunnelKind(ProxyKind[ZtunnelProxies]):
    """Nodes whose id has ztunnel's proxy type (``ztunnel~...``)."""

    name = "ztunnel"
    group_type = ZtunnelProxies
    reads = ZTUNNEL_READS

    def recognise(self, node: base_pb2.Node) -> ZtunnelProxies | None:
        return ZtunnelProxies() if is_ztunnel(node) else None

    def generator(self, context: KindContext) -> ZtunnelGenerator:
        return ZtunnelGenerator(context)
