"""The bootstrap's agent additions (SDS socket, xDS proxy socket); the plaintext bootstrap stays what it was."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2  # noqa: F401 (Any type)
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (Any type)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (Any type)
from google.protobuf import json_format

from istiod_lite.agent.bootstrap import (
    SDS_CLUSTER,
    XDS_CLUSTER,
    WaypointIdentity,
    sds_secret_config,
    waypoint_bootstrap,
)

IDENTITY = WaypointIdentity(name="waypoint", namespace="ns1")
HTTP2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def clusters(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in boot["static_resources"]["clusters"]}


def as_proto(boot: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    """Parsing with the real protos catches misspelt fields (Envoy would refuse them too)."""
    return json_format.ParseDict(boot, bootstrap_pb2.Bootstrap())


def pipe(cluster: dict[str, Any]) -> str:
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return str(endpoint["address"]["pipe"]["path"])


#: ``xds-grpc`` as the plaintext bootstrap (``istiod-lite waypoint bootstrap``, demos) always had it.
PLAINTEXT_XDS = {
    "name": XDS_CLUSTER,
    "type": "STATIC",
    "connect_timeout": "1s",
    "load_assignment": {
        "cluster_name": XDS_CLUSTER,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}],
    },
    "typed_extension_protocol_options": {HTTP2: {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {"connection_keepalive": {"interval": "30s",
                                                                                     "timeout": "10s"}}},
    }},
    "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
}


def test_plaintext_bootstrap_is_unchanged() -> None:
    boot = waypoint_bootstrap(IDENTITY, "127.0.0.1:15010", admin_port=0)
    assert boot["static_resources"]["clusters"] == [PLAINTEXT_XDS]
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    as_proto(boot)


def test_agent_bootstrap_points_both_clusters_at_the_agents_sockets() -> None:
    boot = waypoint_bootstrap(IDENTITY, None, sds_socket="/run/wp/sds/socket", xds_socket="/run/wp/proxy/XDS")
    proto = as_proto(boot)
    by_name = clusters(boot)
    assert set(by_name) == {XDS_CLUSTER, SDS_CLUSTER}
    assert pipe(by_name[SDS_CLUSTER]) == "/run/wp/sds/socket"
    # Istio's xds-grpc under pilot-agent: plaintext HTTP/2 to the agent's proxy, no TLS in Envoy.
    xds = by_name[XDS_CLUSTER]
    assert pipe(xds) == "/run/wp/proxy/XDS"
    assert xds["type"] == "STATIC"
    assert "transport_socket" not in xds
    assert "http2_protocol_options" in xds["typed_extension_protocol_options"][HTTP2]["explicit_http_config"]
    for c in proto.static_resources.clusters:
        assert not c.HasField("transport_socket")
    ads = proto.dynamic_resources.ads_config
    assert ads.grpc_services[0].envoy_grpc.cluster_name == XDS_CLUSTER


def test_status_port_listener_routes_only_readiness_to_the_admin() -> None:
    boot = waypoint_bootstrap(IDENTITY, None, xds_socket="/x", admin_port=15000, status_port=15021)
    proto = as_proto(boot)
    [listener] = proto.static_resources.listeners
    assert listener.address.socket_address.address == IDENTITY.ip
    assert listener.address.socket_address.port_value == 15021
    admin = clusters(boot)["envoy-admin"]
    assert admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 15000}}
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [route] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["match"]["path"] == "/healthz/ready" and route["route"]["prefix_rewrite"] == "/ready"
    assert hcm["normalize_path"] is True
    assert "listeners" not in waypoint_bootstrap(IDENTITY, None, xds_socket="/x")["static_resources"]
    with pytest.raises(ValueError, match="fixed admin port"):
        waypoint_bootstrap(IDENTITY, None, xds_socket="/x", admin_port=0, status_port=15021)


def test_node_metadata_names_the_tokens_identity() -> None:
    """istiod's secure port compares these two with the token's namespace and service account."""
    meta = waypoint_bootstrap(IDENTITY, None, xds_socket="/x")["node"]["metadata"]
    assert meta["NAMESPACE"] == "ns1" and meta["SERVICE_ACCOUNT"] == "waypoint"  # the SA defaults to the name
    other = WaypointIdentity(name="waypoint", namespace="ns1", service_account="sa1")
    meta = waypoint_bootstrap(other, None, xds_socket="/x")["node"]["metadata"]
    assert meta["NAMESPACE"] == "ns1" and meta["SERVICE_ACCOUNT"] == "sa1"


@pytest.mark.parametrize("where", [{"xds_address": None}, {"xds_address": "127.0.0.1:15010", "xds_socket": "/x"}])
def test_exactly_one_xds_destination(where: dict[str, Any]) -> None:
    address = where.pop("xds_address")
    with pytest.raises(ValueError, match="exactly one"):
        waypoint_bootstrap(IDENTITY, address, **where)


def test_sds_secret_config_is_istios() -> None:
    config = sds_secret_config("default")
    source = config["sds_config"]
    assert source["initial_fetch_timeout"] == "0s"
    assert source["api_config_source"]["api_type"] == "GRPC"


def test_node_locality_from_the_locality_label_or_set() -> None:
    """Istio's agent sends ``node.locality`` from the pod's locality label; istiod uses it only when
    it cannot find the proxy's pod and node itself."""
    assert "locality" not in waypoint_bootstrap(IDENTITY, "127.0.0.1:15010")["node"]
    labelled = WaypointIdentity(name="waypoint", namespace="ns1", extra_labels={"istio-locality": "eu.eu-a"})
    boot = waypoint_bootstrap(labelled, "127.0.0.1:15010")
    assert boot["node"]["locality"] == {"region": "eu", "zone": "eu-a"}
    assert as_proto(boot).node.locality.zone == "eu-a"
    explicit = WaypointIdentity(name="waypoint", namespace="ns1", locality="us/us-1/rack4",
                                extra_labels={"istio-locality": "eu.eu-a"})
    assert waypoint_bootstrap(explicit, "127.0.0.1:15010")["node"]["locality"] == {
        "region": "us", "zone": "us-1", "sub_zone": "rack4"}
