"""The HBONE bootstrap and its config: pure functions, checked without Envoy (the e2e tests run it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.hbone.bootstrap import AUTHORITY_CLUSTER, AUTHORIZER_CLUSTER, SecretFiles, hbone_bootstrap
from istiod_lite.hbone.config import (
    Endpoint,
    HboneConfig,
    InboundTerminator,
    OutboundTunnel,
    workload_spiffe_id,
)

SECRETS = SecretFiles(Path("/run/hbone/default.json"), Path("/run/hbone/ROOTCA.json"))
WP = Endpoint("127.0.1.1", 15008)


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in items}


def test_endpoint_parsing() -> None:
    assert Endpoint.parse("127.0.1.1:15008") == WP
    assert Endpoint.parse("127.0.1.1", default_port=15008) == WP
    assert str(Endpoint.parse("[::1]:80")) == "[::1]:80"
    assert Endpoint.parse("::1", default_port=15008) == Endpoint("::1", 15008)
    with pytest.raises(ValueError, match="not an IP"):
        Endpoint.parse("reviews.default:9080")
    with pytest.raises(ValueError):
        Endpoint.parse("127.0.0.1")  # no port and no default


def test_config_rules() -> None:
    with pytest.raises(ValueError, match="nothing to do"):
        HboneConfig()
    listen = Endpoint("127.0.0.1", 7000)
    with pytest.raises(ValueError, match="same address"):
        HboneConfig(outbound=(OutboundTunnel(listen, Endpoint("127.10.0.1", 80), WP),) * 2)
    with pytest.raises(ValueError, match="relay to any host"):
        InboundTerminator(Endpoint("0.0.0.0", 15008))
    assert InboundTerminator(Endpoint("0.0.0.0", 15008), Endpoint("127.0.0.1", 8080)).forward is not None
    # Port 0 twice is fine: the kernel picks two ports.
    any_port = Endpoint("127.0.0.1", 0)
    HboneConfig(outbound=(OutboundTunnel(any_port, Endpoint("127.10.0.1", 80), WP),) * 2)


def test_workload_spiffe_id() -> None:
    assert workload_spiffe_id("shop/reviews") == "spiffe://cluster.local/ns/shop/sa/reviews"
    assert workload_spiffe_id("a/b", "example.org") == "spiffe://example.org/ns/a/sa/b"
    for bad in ("shop", "Shop/reviews", "shop/", "shop/re/views"):
        with pytest.raises(ValueError):
            workload_spiffe_id(bad)


def test_outbound_tunnels_share_one_cluster_per_waypoint() -> None:
    tunnels = (OutboundTunnel(Endpoint("127.0.0.1", 7001), Endpoint("127.10.0.1", 9080), WP),
               OutboundTunnel(Endpoint("127.0.0.1", 7002), Endpoint("127.10.0.2", 80), WP))
    boot = hbone_bootstrap(HboneConfig(outbound=tunnels), SECRETS)
    listeners = by_name(boot["static_resources"]["listeners"])
    clusters = by_name(boot["static_resources"]["clusters"])
    assert list(clusters) == ["waypoint_127.0.1.1_15008"]
    proxy = listeners["hbone_out_1"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert proxy["tunneling_config"] == {"hostname": "127.10.0.2:80"}
    assert proxy["cluster"] == "waypoint_127.0.1.1_15008"
    cluster = clusters["waypoint_127.0.1.1_15008"]
    h2 = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in h2["explicit_http_config"]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext")
    check_istio_tls(tls["common_tls_context"], "spiffe://cluster.local/")


def check_istio_tls(ctx: dict[str, Any], san_prefix: str) -> None:
    """Istio's buildCommonConnectTLSContext shape (docs/istio-waypoint-shape.md §2.1), with file-based SDS."""
    assert ctx["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
    assert ctx["alpn_protocols"] == ["h2"]
    assert ctx["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    validation = ctx["combined_validation_context"]
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": san_prefix}}]
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert validation["validation_context_sds_secret_config"]["sds_config"]["path_config_source"]["path"] == \
        str(SECRETS.roots)


def test_inbound_terminates_connect_with_client_certificates_required() -> None:
    app = Endpoint("127.0.0.1", 8080)
    config = HboneConfig(inbound=(InboundTerminator(Endpoint("127.0.2.1", 15008), app),),
                         trust_domain="example.org")
    boot = hbone_bootstrap(config, SECRETS)
    listener = boot["static_resources"]["listeners"][0]
    chain = listener["filter_chains"][0]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    check_istio_tls(tls["common_tls_context"], "spiffe://example.org/")
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["upgrade_configs"] == [{"upgrade_type": "CONNECT"}]
    assert hcm["http2_protocol_options"]["allow_connect"] is True
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route == {"match": {"connect_matcher": {}},
                     "route": {"cluster": "hbone_in_0_app",
                               "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}
    clusters = by_name(boot["static_resources"]["clusters"])
    assert clusters["hbone_in_0_app"]["type"] == "STATIC"
    assert AUTHORITY_CLUSTER not in clusters


@pytest.mark.parametrize(("pod_ip", "prefix"), [("127.0.2.1", "127.0.2.1:"), ("::1", "[::1]:")])
def test_inbound_without_forward_delivers_only_to_its_own_ip(pod_ip: str, prefix: str) -> None:
    boot = hbone_bootstrap(HboneConfig(inbound=(InboundTerminator(Endpoint(pod_ip, 15008)),)), SECRETS)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["match"]["headers"] == [{"name": ":authority", "string_match": {"prefix": prefix}}]
    assert route["route"]["cluster"] == AUTHORITY_CLUSTER
    cluster = by_name(boot["static_resources"]["clusters"])[AUTHORITY_CLUSTER]
    assert cluster["type"] == "ORIGINAL_DST"
    assert cluster["original_dst_lb_config"] == {"use_http_header": True, "http_header_name": ":authority"}


def test_authorizer_checks_connects_to_pods_only_and_fails_closed() -> None:
    checker = Endpoint("127.0.0.1", 4567)
    pod = InboundTerminator(Endpoint("127.0.2.1", 15008))
    waypoint_like = InboundTerminator(Endpoint("127.0.2.2", 15008), Endpoint("127.0.0.1", 8080))
    boot = hbone_bootstrap(HboneConfig(inbound=(pod, waypoint_like), authorizer=checker), SECRETS)

    def filters(i: int) -> list[str]:
        hcm = boot["static_resources"]["listeners"][i]["filter_chains"][0]["filters"][0]["typed_config"]
        return [f["name"] for f in hcm["http_filters"]]

    assert filters(0) == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    assert filters(1) == ["envoy.filters.http.router"]  # a forward terminator is not a pod
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = hcm["http_filters"][0]["typed_config"]
    assert authz["failure_mode_allow"] is False
    assert authz["grpc_service"]["envoy_grpc"] == {"cluster_name": AUTHORIZER_CLUSTER}
    cluster = by_name(boot["static_resources"]["clusters"])[AUTHORIZER_CLUSTER]
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == \
        checker.socket_address()
    assert "http2_protocol_options" in cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
    # Without an authorizer: no filter, no cluster (the plain HboneProxy is unchanged).
    plain = hbone_bootstrap(HboneConfig(inbound=(pod,)), SECRETS)
    assert AUTHORIZER_CLUSTER not in by_name(plain["static_resources"]["clusters"])


def test_bootstrap_is_deterministic() -> None:
    def build() -> str:
        tunnels = tuple(OutboundTunnel(Endpoint("127.0.0.1", 7000 + i), Endpoint("127.10.0.1", 80),
                                       Endpoint(f"127.0.1.{i % 3 + 1}", 15008)) for i in range(6))
        return json.dumps(hbone_bootstrap(HboneConfig(outbound=tunnels), SECRETS), sort_keys=False)

    assert build() == build()
