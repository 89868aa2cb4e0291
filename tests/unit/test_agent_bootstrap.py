"""The bootstrap's SDS and secure-xDS additions; the plaintext bootstrap stays what it was."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2  # noqa: F401 (Any type)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (Any type)
from google.protobuf import json_format

from istiod_lite.agent.bootstrap import (
    SDS_CLUSTER,
    XDS_CLUSTER,
    WaypointIdentity,
    XdsTls,
    sds_secret_config,
    waypoint_bootstrap,
)

IDENTITY = WaypointIdentity(name="waypoint", namespace="ns1")


def clusters(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in boot["static_resources"]["clusters"]}


def as_proto(boot: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    """Parsing with the real protos catches misspelt fields (Envoy would refuse them too)."""
    return json_format.ParseDict(boot, bootstrap_pb2.Bootstrap())


def test_plaintext_bootstrap_is_unchanged() -> None:
    boot = waypoint_bootstrap(IDENTITY, "127.0.0.1:15010", admin_port=0)
    assert set(clusters(boot)) == {XDS_CLUSTER}
    assert "transport_socket" not in clusters(boot)[XDS_CLUSTER]
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    as_proto(boot)


def test_sds_cluster_over_the_unix_socket() -> None:
    boot = waypoint_bootstrap(IDENTITY, "127.0.0.1:15010", sds_socket="/run/wp/sds/socket")
    sds = clusters(boot)[SDS_CLUSTER]
    endpoint = sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/run/wp/sds/socket"}}
    options = sds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert "transport_socket" not in clusters(boot)[XDS_CLUSTER]
    as_proto(boot)


def test_secure_xds_uses_sds_certificates_and_checks_istiod_san() -> None:
    boot = waypoint_bootstrap(IDENTITY, "127.0.0.1:15012", sds_socket="/run/wp/sds/socket", xds_tls=XdsTls())
    proto = as_proto(boot)
    xds = next(c for c in proto.static_resources.clusters if c.name == XDS_CLUSTER)
    assert xds.transport_socket.name == "envoy.transport_sockets.tls"
    tls = tls_pb2.UpstreamTlsContext()
    assert xds.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "istiod.istio-system.svc"
    ctx = tls.common_tls_context
    assert [s.name for s in ctx.tls_certificate_sds_secret_configs] == ["default"]
    assert ctx.tls_certificate_sds_secret_configs[0].sds_config.api_config_source.grpc_services[0] \
        .envoy_grpc.cluster_name == SDS_CLUSTER
    combined = ctx.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
    san = combined.default_validation_context.match_typed_subject_alt_names[0]
    assert san.san_type == san.DNS and san.matcher.exact == "istiod.istio-system.svc"


def test_secure_xds_needs_sds() -> None:
    with pytest.raises(ValueError, match="sds_socket"):
        waypoint_bootstrap(IDENTITY, "127.0.0.1:15012", xds_tls=XdsTls())


def test_sds_secret_config_is_istios() -> None:
    config = sds_secret_config("default")
    source = config["sds_config"]
    assert source["initial_fetch_timeout"] == "0s"
    assert source["api_config_source"]["api_type"] == "GRPC"
