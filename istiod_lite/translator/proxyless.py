"""Config for proxyless gRPC clients (``xds:///HOST:PORT``), as Istio's grpcgen serves it.

A gRPC client subscribes by exact name: Listener ``HOST:PORT`` (an API listener whose HTTP
connection manager points at RouteConfiguration ``HOST:PORT`` over ADS, with the router filter),
then the cluster ``outbound|PORT||HOST`` and its endpoints.  gRPC's xDS load balancing is
weighted-target over localities, so every locality carries a weight.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service
from istiod_lite.translator.clusters.endpoints import load_assignment
from istiod_lite.translator.core import names
from istiod_lite.translator.core.output import EnvoyResources


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _api_listener(name: str) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = name
    hcm.rds.config_source.CopyFrom(_ads())
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=router)
    lst = listener_pb2.Listener(name=name)
    lst.api_listener.api_listener.Pack(hcm)
    return lst


def _route(name: str, host: str, cluster: str) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name=name, domains=[name, host, "*"])
    r = vh.routes.add(name="default")
    r.match.prefix = ""
    r.route.cluster = cluster
    return rc


def _cluster(name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
    c.eds_cluster_config.service_name = name
    c.eds_cluster_config.eds_config.CopyFrom(_ads())
    c.connect_timeout.seconds = 10
    return c


def _with_locality_weights(cla: endpoint_pb2.ClusterLoadAssignment) -> endpoint_pb2.ClusterLoadAssignment:
    for loc in cla.endpoints:
        loc.locality.SetInParent()  # gRPC rejects an EDS entry whose locality field is absent
        loc.load_balancing_weight.value = max(1, len(loc.lb_endpoints))
    return cla


def translate_proxyless(snapshot: ConfigSnapshot) -> EnvoyResources:
    """Resources for every Service port; a client only receives the names it subscribes to."""
    out = EnvoyResources()
    for svc in snapshot.of_kind(Service):
        host = names.service_fqdn(svc.name, svc.namespace)
        for port in svc.spec.ports:
            if port.protocol != "TCP":
                continue
            name = f"{host}:{port.port}"
            cluster = names.outbound_cluster(port.port, host)
            out.listeners[name] = _api_listener(name)
            out.routes[name] = _route(name, host, cluster)
            out.clusters[cluster] = _cluster(cluster)
            out.endpoints[cluster] = _with_locality_weights(load_assignment(cluster, snapshot, svc, port))
    return out.sorted()
