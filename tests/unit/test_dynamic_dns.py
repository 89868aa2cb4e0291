"""DYNAMIC_DNS ServiceEntries: Istio's validation rules, the server options, the translator's
pieces (one DNS cache config everywhere, wildcard-only routes, TLS behind its flag) and the test
DNS server.  Real traffic: tests/e2e/test_se_dynamic_dns.py; full output: the golden cases
``se-dynamic-dns-http`` and ``se-dynamic-dns-tls``."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import sni_dynamic_forward_proxy_pb2 as sni_pb2

from istiod_lite.cli.main import build_parser
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.model.registry import ResourceInvalid
from istiod_lite.translator import WaypointAssembly, WaypointRef
from istiod_lite.translator.clusters.dynamic_dns import DynamicDnsOptions, dns_cache_config, parse_resolver
from istiod_lite.translator.diagnostics import diagnose
from tests.support.dnsserver import TYPE_A, answer

WP = WaypointRef("egress", "waypoint")
BASE = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "egress"}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
     "metadata": {"name": "waypoint", "namespace": "egress"},
     "spec": {"gatewayClassName": "istio-waypoint", "addresses": [{"type": "IPAddress", "value": "127.0.1.1"}],
              "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
]


def _se_doc(spec: dict[str, Any], labels: dict[str, str] | None = None,
            status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                           "metadata": {"name": "ext", "namespace": "egress",
                                        "labels": labels or {"istio.io/use-waypoint": "waypoint"}},
                           "spec": spec}
    if status is not None:
        doc["status"] = status
    return doc


def _spec(**kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": ["*.ext.test"], "resolution": "DYNAMIC_DNS",
                            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                                      {"number": 443, "name": "tls", "protocol": "TLS"}]}
    spec.update(kw)
    return spec


ALLOCATED = {"addresses": [{"value": "240.240.0.9", "host": "*.ext.test"}]}


def _snapshot(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = ALLOCATED) -> ConfigSnapshot:
    return ConfigSnapshot.build(parse_object(d) for d in [*BASE, _se_doc(spec or _spec(), status=status)])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("spec", "labels", "message"), [
    (_spec(hosts=["api.ext.test"]), None, "host must be wildcarded"),
    (_spec(addresses=["240.240.0.1"]), None, "addresses cannot be set"),
    (_spec(endpoints=[{"address": "1.2.3.4"}]), None, "endpoints cannot be set"),
    (_spec(ports=[{"number": 5432, "name": "tcp", "protocol": "TCP"}]), None, "only HTTP, TLS, GRPC, and HTTP2"),
    (_spec(location="MESH_INTERNAL"), {"istio.io/use-waypoint": "waypoint"}, "MESH_INTERNAL"),
])
def test_istio_rules_for_dynamic_dns(spec: dict[str, Any], labels: dict[str, str] | None, message: str) -> None:
    with pytest.raises(ResourceInvalid) as err:
        parse_object(_se_doc(spec, labels))
    assert message in str(err.value) and "ServiceEntry" in str(err.value) and "egress/ext" in str(err.value)


def test_valid_dynamic_dns_entries() -> None:
    assert isinstance(parse_object(_se_doc(_spec())), ServiceEntry)
    grpc = _spec(ports=[{"number": 8080, "name": "grpc", "protocol": "GRPC"}])
    assert isinstance(parse_object(_se_doc(grpc)), ServiceEntry)  # valid, but a waypoint does not serve it
    # MESH_INTERNAL is refused only for an entry that uses a waypoint.
    assert isinstance(parse_object(_se_doc(_spec(location="MESH_INTERNAL"), {"istio.io/use-waypoint": "none"})),
                      ServiceEntry)


# --------------------------------------------------------------------------- options


def test_parse_resolver_and_options() -> None:
    assert parse_resolver("127.0.0.53") == ("127.0.0.53", 53)
    assert parse_resolver("127.0.0.53:5353") == ("127.0.0.53", 5353)
    assert parse_resolver("[::1]:5353") == ("::1", 5353)
    for bad in ("dns.example.com", "127.0.0.1:0", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            parse_resolver(bad)
    with pytest.raises(ValueError):
        DynamicDnsOptions(resolvers=(("not-an-ip", 53),))


def test_cli_flags_and_istio_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["translate", "--config", "d", "--waypoint", "a/b"])
    assert (args.wildcard_tls, args.dynamic_dns_resolver) == (False, [])
    monkeypatch.setenv("ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS", "true")
    args = build_parser().parse_args(["serve", "--config", "d", "--dynamic-dns-resolver", "127.0.0.53:5353"])
    assert (args.wildcard_tls, args.dynamic_dns_resolver) == (True, ["127.0.0.53:5353"])
    args = build_parser().parse_args(["serve", "--config", "d", "--no-enable-wildcard-host-service-entries-for-tls"])
    assert args.wildcard_tls is False


# --------------------------------------------------------------------------- translation


def _unpack(any_msg: Any, cls: Any) -> Any:
    out = cls()
    assert any_msg.Unpack(out)
    return out


def test_http_port_dfp_cluster_filter_and_wildcard_routes() -> None:
    options = DynamicDnsOptions(resolvers=(("127.0.0.53", 5353),))
    res = WaypointAssembly(WP, dynamic_dns=options).proxy_resources(_snapshot())
    name = "inbound-vip|80|http|*.ext.test"
    cluster = res.clusters[name]
    assert cluster.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    assert not cluster.HasField("load_assignment") and not cluster.HasField("eds_cluster_config")
    cache = _unpack(cluster.cluster_type.typed_config, dfp_cluster_pb2.ClusterConfig).dns_cache_config
    assert cache == dns_cache_config("*.ext.test", options)
    assert cache.name == "*.ext.test_dfp_dns_cache"
    route = res.routes[name]
    assert isinstance(route, route_pb2.RouteConfiguration)
    assert [list(vh.domains) for vh in route.virtual_hosts] == [["*.ext.test"]]
    main = res.listeners["main_internal"]
    assert isinstance(main, listener_pb2.Listener)
    chain = next(fc for fc in main.filter_chains if fc.name == name)
    hcm = _unpack(chain.filters[-1].typed_config, hcm_pb2.HttpConnectionManager)
    names = [f.name for f in hcm.http_filters]
    assert names[-2:] == ["envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.router"]
    # The TLS port is off by default (Istio's flag), and no TLS inspector is needed then.
    assert "inbound-vip|443|tcp|*.ext.test" not in res.clusters
    assert all(f.name != "envoy.filters.listener.tls_inspector" for f in main.listener_filters)


def test_tls_port_sni_dfp_behind_its_flag() -> None:
    res = WaypointAssembly(WP, dynamic_dns=DynamicDnsOptions(wildcard_tls=True)).proxy_resources(_snapshot())
    name = "inbound-vip|443|tcp|*.ext.test"
    assert res.clusters[name].cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    main = res.listeners["main_internal"]
    assert isinstance(main, listener_pb2.Listener)
    chain = next(fc for fc in main.filter_chains if fc.name == name)
    names = [f.name for f in chain.filters]
    assert names[-2:] == ["envoy.filters.network.sni_dynamic_forward_proxy", "envoy.filters.network.tcp_proxy"]
    sni = _unpack(chain.filters[-2].typed_config, sni_pb2.FilterConfig)
    assert (sni.port_value, sni.dns_cache_config) == (443, dns_cache_config("*.ext.test"))
    inspector = next(f for f in main.listener_filters if f.name == "envoy.filters.listener.tls_inspector")
    assert inspector.filter_disabled.destination_port_range.start == 80  # the HTTP port is not inspected


def test_warnings_follow_the_options() -> None:
    snap = _snapshot(_spec(ports=[{"number": 80, "name": "http", "protocol": "HTTP"},
                                  {"number": 443, "name": "tls", "protocol": "TLS"},
                                  {"number": 8080, "name": "h2", "protocol": "HTTP2"}]))
    default = diagnose(snap).routes
    assert any("TLS port 443" in m for m in default)
    assert any("port 8080 (HTTP2)" in m for m in default)
    with_tls = diagnose(snap, dynamic_dns=DynamicDnsOptions(wildcard_tls=True)).routes
    assert not any("TLS port 443" in m for m in with_tls) and any("port 8080" in m for m in with_tls)
    # Without an allocated address nothing can reach the host: nothing is built, and it is reported.
    bare = _snapshot(status=None)
    res = WaypointAssembly(WP).proxy_resources(bare)
    assert not any("ext.test" in n for n in res.clusters)
    assert any("no address allocated" in m for m in diagnose(bare).routes)


# --------------------------------------------------------------------------- the test DNS server


def _query(name: str, qtype: int = TYPE_A, ident: int = 0x1234) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def test_dns_server_answers() -> None:
    records = {"api.ext.test": "127.0.0.7"}
    found = answer(_query("API.ext.test"), records)
    assert found is not None
    packet, question = found
    assert question == ("api.ext.test", TYPE_A)
    ident, flags, _, ancount = struct.unpack("!HHHH", packet[:8])
    assert (ident, flags & 0x800F, ancount) == (0x1234, 0x8000, 1)
    assert packet[-4:] == bytes([127, 0, 0, 7])
    missing = answer(_query("nope.ext.test"), records)
    assert missing is not None and missing[0][3] & 0x0F == 3  # NXDOMAIN
    aaaa = answer(_query("api.ext.test", qtype=28), records)
    assert aaaa is not None and struct.unpack("!H", aaaa[0][6:8])[0] == 0  # NOERROR, no answer
    assert answer(b"\x00\x01", records) is None  # malformed: dropped
