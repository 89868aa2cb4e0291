"""Builders shared by the xDS unit tests: tiny snapshots of real Envoy messages."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from istiod_lite.xds import typeurls
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.resources import ResourceSnapshot


def snap(clusters: dict[str, int] | None = None, endpoints: dict[str, int] | None = None) -> ResourceSnapshot:
    """Clusters named by key with connect_timeout = value seconds; endpoints likewise (a marker)."""
    cl = {n: cluster_pb2.Cluster(name=n, connect_timeout={"seconds": v}) for n, v in (clusters or {}).items()}
    ep = {
        n: endpoint_pb2.ClusterLoadAssignment(cluster_name=n, policy={"overprovisioning_factor": {"value": v}})
        for n, v in (endpoints or {}).items()
    }
    return ResourceSnapshot.from_messages({typeurls.CLUSTER: cl, typeurls.ENDPOINT: ep})


def conn(variant: str = "sotw") -> Connection:
    return Connection(conn_id="c1", variant=variant, peer="test", node=base_pb2.Node(id="n1"), group="g")
