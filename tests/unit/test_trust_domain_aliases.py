"""MeshConfig trustDomain/trustDomainAliases on the waypoint: policy principals expand to every
domain of the bundle (istiod's trust-domain bundle) and the HBONE SAN checks accept peers of every
domain; Telemetry naming the built-in ``prometheus`` provider is not reported."""

from __future__ import annotations

import pytest

from istiod_lite.model.meshconfig import parse_mesh_config
from istiod_lite.translator.authz.trustdomain import (
    bundle_of,
    expand_principal,
    expand_principals,
    expand_trust_domains,
)
from istiod_lite.translator.shape import hbone

BUNDLE = ("td2", "td1")


@pytest.mark.parametrize(("principal", "expected"), [
    ("td2/ns/foo/sa/bar", ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),
    ("td1/ns/foo/sa/bar", ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),
    ("cluster.local/ns/foo/sa/bar", ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),  # the local domain
    ("other/ns/foo/sa/bar", ["other/ns/foo/sa/bar"]),  # not in the bundle: as written
    ("*/ns/foo/sa/bar", ["*/ns/foo/sa/bar"]),  # trust domain not enforced
    ("sa/bar", ["sa/bar"]),  # not a SPIFFE principal
    ("*2/ns/foo/sa/bar", ["*2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]),  # suffix pattern kept for the domain it matches
])
def test_expand_principal(principal: str, expected: list[str]) -> None:
    assert expand_principal(principal, BUNDLE) == expected


def test_trust_domains_values_expand_to_the_bundle() -> None:
    assert expand_trust_domains(("td1", "other"), BUNDLE) == ("td2", "td1", "other")
    assert expand_trust_domains(("other",), BUNDLE) == ("other",)
    assert expand_trust_domains(("td1",), ()) == ("td1",)


def test_no_mesh_config_keeps_principals() -> None:
    assert expand_principals(("cluster.local/ns/a/sa/b",), bundle_of(None)) == ("cluster.local/ns/a/sa/b",)
    assert bundle_of(parse_mesh_config({})) == ("cluster.local",)
    assert bundle_of({"trustDomain": "td2", "trustDomainAliases": ["td1", "td2"]}) == ("td2", "td1")


def _uri_prefixes(ctx: object) -> list[str]:
    vc = ctx.combined_validation_context.default_validation_context  # type: ignore[attr-defined]
    return [m.matcher.prefix for m in vc.match_typed_subject_alt_names]


def test_connect_terminate_accepts_every_trust_domain_of_the_bundle() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    lst = hbone.connect_terminate("127.0.0.1", "td2", ("td1", "td2"))
    tls = tls_pb2.DownstreamTlsContext()
    lst.filter_chains[0].transport_socket.typed_config.Unpack(tls)
    assert _uri_prefixes(tls.common_tls_context) == ["spiffe://td2/", "spiffe://td1/"]
    assert tls.require_client_certificate.value


def test_connect_originate_accepts_aliases_and_takes_the_mesh_connect_timeout() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

    mesh = parse_mesh_config({"connectTimeout": "1.5s", "hboneIdleTimeout": "15s"})
    c = hbone.connect_originate_cluster("td2", "shop", ("td1",), mesh.connect_timeout, mesh.hbone_idle_timeout)
    assert (c.connect_timeout.seconds, c.connect_timeout.nanos) == (1, 500_000_000)
    opts = hpo_pb2.HttpProtocolOptions()
    c.typed_extension_protocol_options[hbone.HTTP_PROTOCOL_OPTIONS].Unpack(opts)
    assert opts.common_http_protocol_options.idle_timeout.seconds == 15
    tls = tls_pb2.UpstreamTlsContext()
    c.transport_socket.typed_config.Unpack(tls)
    assert _uri_prefixes(tls.common_tls_context) == ["spiffe://td2/", "spiffe://td1/", "spiffe://td2/ns/shop/sa/"]


def test_telemetry_naming_the_builtin_prometheus_is_not_reported() -> None:
    from istiod_lite.model.telemetry import Telemetry
    from istiod_lite.translator.telemetry import telemetry_warnings
    from tests.unit.test_translator_telemetry import snapshot, telemetry_doc

    snap = snapshot(telemetry_doc("mesh", "istio-system", "{metrics: [{providers: [{name: prometheus}]}]}"),
                    telemetry_doc("sd", "app", "{metrics: [{providers: [{name: stackdriver}]}]}"))
    assert len(snap.of_kind(Telemetry)) == 2
    warnings = telemetry_warnings(snap, parse_mesh_config({}))
    assert not [w for w in warnings if "'prometheus'" in w], warnings
    assert [w for w in warnings if "'stackdriver'" in w and "not a prometheus provider" in w], warnings


def test_proxy_headers_mapping() -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    from istiod_lite.translator.shape.proxy_headers import DEFAULT_HEADERS, header_settings

    assert header_settings(None) == DEFAULT_HEADERS
    assert header_settings(parse_mesh_config({"defaultConfig": {"proxyHeaders": {}}})) == DEFAULT_HEADERS
    off = header_settings(parse_mesh_config({"defaultConfig": {"proxyHeaders": {
        "server": {"disabled": True}, "forwardedClientCert": "FORWARD_ONLY"}}}))
    assert (off.server_name, off.pass_through_server) == ("", True)
    assert off.forward_client_cert == hcm_pb2.HttpConnectionManager.FORWARD_ONLY
    lst = hbone.connect_terminate("127.0.0.1", "td", (), off)
    hcm = hcm_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.server_header_transformation == hcm_pb2.HttpConnectionManager.PASS_THROUGH
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.FORWARD_ONLY
    assert hcm.server_name == ""
