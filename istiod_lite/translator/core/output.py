"""The translator's product: Envoy resources for one waypoint, by kind and name.

Plain protobuf messages, no versions or bytes: serialising and versioning is the xDS layer's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2


@dataclass
class EnvoyResources:
    listeners: dict[str, listener_pb2.Listener] = field(default_factory=dict)
    routes: dict[str, route_pb2.RouteConfiguration] = field(default_factory=dict)
    clusters: dict[str, cluster_pb2.Cluster] = field(default_factory=dict)
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = field(default_factory=dict)
    secrets: dict[str, secret_pb2.Secret] = field(default_factory=dict)

    def merge(self, other: EnvoyResources) -> None:
        """Add ``other``'s resources (later fragments win on a name clash)."""
        self.listeners.update(other.listeners)
        self.routes.update(other.routes)
        self.clusters.update(other.clusters)
        self.endpoints.update(other.endpoints)
        self.secrets.update(other.secrets)

    def sorted(self) -> EnvoyResources:
        """Same resources, each kind ordered by name (deterministic output)."""
        return EnvoyResources(
            listeners=dict(sorted(self.listeners.items())),
            routes=dict(sorted(self.routes.items())),
            clusters=dict(sorted(self.clusters.items())),
            endpoints=dict(sorted(self.endpoints.items())),
            secrets=dict(sorted(self.secrets.items())),
        )
