"""The generated Envoy configuration of one waypoint, as typed protobufs, with the lookups the
evaluator needs (a listener's chain by name, an ECDS filter config by name, a cluster's endpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from istiod_lite.translator.core.output import MESSAGE_TYPES, EnvoyResources, as_message


def unpack(packed: any_pb2.Any) -> Message | None:
    """An ``Any`` as its message, or ``None`` for a type this process does not know."""
    url = packed.type_url
    cls = MESSAGE_TYPES.get(url)
    if cls is None:
        from google.protobuf import symbol_database

        try:
            cls = symbol_database.Default().GetSymbol(url.rsplit("/", 1)[-1])
        except KeyError:
            return None
    msg: Message = cls()
    packed.Unpack(msg)
    return msg


def type_name(packed: any_pb2.Any) -> str:
    return str(packed.type_url).rsplit("/", 1)[-1]


@dataclass(frozen=True)
class EnvoyConfig:
    """Envoy's resources for one proxy: name -> message, per type."""

    listeners: dict[str, listener_pb2.Listener]
    routes: dict[str, route_pb2.RouteConfiguration]
    clusters: dict[str, cluster_pb2.Cluster]
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment]
    extension_configs: dict[str, extension_pb2.TypedExtensionConfig]

    @classmethod
    def of(cls, res: EnvoyResources) -> EnvoyConfig:
        def typed(section: dict[str, Any]) -> dict[str, Any]:
            return {name: as_message(m) for name, m in section.items()}

        return cls(typed(res.listeners), typed(res.routes), typed(res.clusters), typed(res.endpoints),
                   typed(res.extension_configs))

    def endpoint_addresses(self, cluster: str) -> list[str]:
        """``ip:port`` of each endpoint of ``cluster``: the pod an internal (HBONE) endpoint reaches
        (its ``endpoint_id``) or the socket address."""
        cla = self.endpoints.get(cluster)
        if cla is None:
            c = self.clusters.get(cluster)
            cla = c.load_assignment if c is not None and c.HasField("load_assignment") else None
        if cla is None:
            return []
        out: list[str] = []
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                addr = lb.endpoint.address
                if addr.HasField("envoy_internal_address"):
                    out.append(addr.envoy_internal_address.endpoint_id)
                elif addr.HasField("socket_address"):
                    sa = addr.socket_address
                    out.append(f"{sa.address}:{sa.port_value}")
        return out
