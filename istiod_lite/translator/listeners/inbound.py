"""``main_internal``: where HBONE traffic lands after ``connect_terminate``, and its filter chains.

Facts: docs/istio-waypoint-shape.md §2.2 and §4.  One chain per service port, named like its
cluster (``inbound-vip|P|http|H`` / ``inbound-vip|P|tcp|H``), selected by a unified filter-chain
matcher on destination IP (the service VIPs), then port, then (for ports whose protocol is not
declared) the sniffed application protocol; plus ``direct-http``/``direct-tcp`` for traffic
addressed to a bound workload's own IP.  HTTP chains carry Istio's waypoint filter order, with
the authorization slot filled by the authorization issue.

Routes come over RDS (a deviation from Istio's inline waypoint routes, docs/upstream-envoy.md):
each HTTP chain's connection manager names one RouteConfiguration, called like the chain, so the
chains - and ``main_internal`` - do not depend on any route.  A VirtualService edit then changes
only route configurations: no listener update, no drain, and connections already open use the
new routes on their next request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2 as net_sfs_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2 as inputs
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from envoy.type.v3 import range_pb2
from xds.core.v3 import cidr_pb2, extension_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from istiod_lite.model.meshconfig import PathNormalizationType
from istiod_lite.translator.core.protos import packed, string_value
from istiod_lite.translator.routing import routes
from istiod_lite.translator.shape import hbone
from istiod_lite.translator.shape.proxy_headers import DEFAULT_HEADERS, HeaderSettings, apply_to_chain_hcm

MAIN_INTERNAL = hbone.MAIN_INTERNAL
DIRECT_HTTP = "direct-http"
DIRECT_TCP = "direct-tcp"
#: Application protocols the HTTP inspector reports for plaintext HTTP (Istio matches these keys).
HTTP_APP_PROTOCOLS = ("'h2c'", "'http/1.1'")

@dataclass(frozen=True)
class PortChains:
    """The chains of one service port and how the matcher reaches them."""

    port: int
    http_chain: listener_components_pb2.FilterChain | None
    tcp_chain: listener_components_pb2.FilterChain | None
    #: A TLS port (``tls``/``https``): the TLS inspector, when there is one, reads its ClientHello.
    tls: bool = False
    #: Its TCP chain reads the SNI (SNI dynamic forward proxy): ``main_internal`` needs the TLS inspector.
    sni: bool = False


@dataclass(frozen=True)
class ServiceChains:
    vips: tuple[str, ...]
    ports: tuple[PortChains, ...]


def http_filters(authz: Sequence[hcm_pb2.HttpFilter] = (),
                 before_router: Sequence[hcm_pb2.HttpFilter] = (), suppress_envoy_headers: bool = False
                 ) -> list[hcm_pb2.HttpFilter]:
    """Istio's waypoint HTTP filter order (upstream-Envoy subset): authorization, grpc_stats, fault,
    cors, [``before_router``: the dynamic forward proxy of a wildcard host], router.  Fault and
    CORS are empty here; routes configure them per route."""
    gs = grpc_stats_pb2.FilterConfig(emit_filter_state=True)
    gs.stats_for_all_methods.value = False
    gs.stats_for_all_methods.SetInParent()
    return [
        *authz,
        hcm_pb2.HttpFilter(name="envoy.filters.http.grpc_stats", typed_config=packed(gs)),
        hcm_pb2.HttpFilter(name="envoy.filters.http.fault", typed_config=packed(fault_pb2.HTTPFault())),
        hcm_pb2.HttpFilter(name="envoy.filters.http.cors", typed_config=packed(cors_pb2.Cors())),
        *before_router,
        hbone.router_filter(suppress_envoy_headers),
    ]


def rds(route_config_name: str) -> hcm_pb2.Rds:
    """Routes by name over ADS, as istiod configures RDS (``buildHTTPConnectionManager``: ADS, V3,
    ``initial_fetch_timeout`` 0s, i.e. the listener waits for its routes however long it takes)."""
    out = hcm_pb2.Rds(route_config_name=route_config_name)
    out.config_source.ads.SetInParent()
    out.config_source.resource_api_version = config_source_pb2.V3
    out.config_source.initial_fetch_timeout.SetInParent()
    return out


def _hcm_template(path_normalization: PathNormalizationType = "BASE") -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager(
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        server_name="istio-envoy",
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED,
    )
    hcm.use_remote_address.value = False
    hcm.use_remote_address.SetInParent()
    # Istio's mapping of MeshConfig.pathNormalization (listener_builder.go): BASE (the default) is
    # normalize_path; MERGE_SLASHES adds merge_slashes; DECODE_AND_MERGE_SLASHES also unescapes
    # %2F/%5C; NONE turns normalize_path off.
    hcm.normalize_path.value = path_normalization != "NONE"
    hcm.normalize_path.SetInParent()
    if path_normalization in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"):
        hcm.merge_slashes = True
    if path_normalization == "DECODE_AND_MERGE_SLASHES":
        hcm.path_with_escaped_slashes_action = hcm_pb2.HttpConnectionManager.UNESCAPE_AND_FORWARD
    hcm.stream_idle_timeout.SetInParent()
    hcm.rds.CopyFrom(rds(""))
    hcm.upgrade_configs.add(upgrade_type="websocket")
    hcm.request_id_extension.typed_config.CopyFrom(packed(uuid_pb2.UuidRequestIdConfig()))
    return hcm


_HCM_TEMPLATES: dict[str, hcm_pb2.HttpConnectionManager] = {"BASE": _hcm_template()}
_DEFAULT_FILTERS: list[hcm_pb2.HttpFilter] = []


def _template(path_normalization: PathNormalizationType) -> hcm_pb2.HttpConnectionManager:
    mode = "BASE" if path_normalization == "DEFAULT" else path_normalization
    tpl = _HCM_TEMPLATES.get(mode)
    if tpl is None:
        tpl = _HCM_TEMPLATES[mode] = _hcm_template(path_normalization)
    return tpl


def http_connection_manager(
    port: int, route_config_name: str, h2: bool, authz: Sequence[hcm_pb2.HttpFilter] = (),
    access_logs: Sequence[accesslog_pb2.AccessLog] = (), path_normalization: PathNormalizationType = "BASE",
    before_router: Sequence[hcm_pb2.HttpFilter] = (),
    headers: HeaderSettings = DEFAULT_HEADERS,
) -> hcm_pb2.HttpConnectionManager:
    """The chain's HCM, taking its routes over RDS (``route_config_name``); ``access_logs`` (from
    ``telemetry.access_logs_for``) are added as given.  ``path_normalization``: MeshConfig
    ``pathNormalization.normalization`` (default BASE); ``headers``: MeshConfig proxyHeaders."""
    hcm = hcm_pb2.HttpConnectionManager()
    hcm.CopyFrom(_template(path_normalization))  # a C-level copy of the fixed part: far cheaper than rebuilding it
    hcm.stat_prefix = f"inbound_0.0.0.0_{port};"
    hcm.rds.route_config_name = route_config_name  # the template holds the config source
    if not _DEFAULT_FILTERS:
        _DEFAULT_FILTERS.extend(http_filters())
    if headers.suppress_envoy_headers:
        hcm.http_filters.extend(http_filters(authz, before_router, suppress_envoy_headers=True))
    else:
        hcm.http_filters.extend(http_filters(authz, before_router) if authz or before_router
                                else _DEFAULT_FILTERS)
    apply_to_chain_hcm(hcm, headers)
    if h2:
        hcm.http2_protocol_options.SetInParent()
    if access_logs:
        hcm.access_log.extend(access_logs)
    return hcm


def http_chain(name: str, port: int, h2: bool,
               authz: Sequence[hcm_pb2.HttpFilter] = (), prefix: Sequence[listener_components_pb2.Filter] = (),
               access_logs: Sequence[accesslog_pb2.AccessLog] = (),
               path_normalization: PathNormalizationType = "BASE",
               before_router: Sequence[hcm_pb2.HttpFilter] = (),
               headers: HeaderSettings = DEFAULT_HEADERS,
               ) -> listener_components_pb2.FilterChain:
    """An HTTP chain named ``name`` whose routes are the RouteConfiguration of the same name (RDS)."""
    chain = listener_components_pb2.FilterChain(name=name)
    chain.filters.extend(prefix)
    chain.filters.add(name=hbone.HCM, typed_config=packed(
        http_connection_manager(port, name, h2, authz, access_logs, path_normalization, before_router,
                                headers)))
    return chain


def tcp_chain(name: str, cluster: str, prefix: Sequence[listener_components_pb2.Filter] = (),
              access_logs: Sequence[accesslog_pb2.AccessLog] = ()
              ) -> listener_components_pb2.FilterChain:
    chain = listener_components_pb2.FilterChain(name=name)
    chain.filters.extend(prefix)
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    proxy.access_log.extend(access_logs)
    chain.filters.add(name=hbone.TCP_PROXY, typed_config=packed(proxy))
    return chain


def _reexport_original_dst() -> listener_components_pb2.Filter:
    """Direct chains forward to ``connect_originate``: pass the original destination on."""
    v = value_pb2.FilterStateValue(object_key=hbone.LOCAL_IP_KEY,
                                   shared_with_upstream=value_pb2.FilterStateValue.ONCE)
    v.format_string.text_format_source.inline_string = f"%FILTER_STATE({hbone.LOCAL_IP_KEY}:PLAIN)%"
    return listener_components_pb2.Filter(name="connect_authority",
                                          typed_config=packed(net_sfs_pb2.Config(on_new_connection=[v])))


def with_network_filters(chain: listener_components_pb2.FilterChain,
                         filters: Sequence[listener_components_pb2.Filter]) -> listener_components_pb2.FilterChain:
    """``chain`` with ``filters`` (network RBAC) placed before its terminal filter (tcp_proxy)."""
    if not filters:
        return chain
    out = listener_components_pb2.FilterChain()
    out.CopyFrom(chain)
    existing = list(chain.filters)
    del out.filters[:]
    out.filters.extend([*existing[:-1], *filters, existing[-1]])
    return out


def direct_route_configuration() -> route_pb2.RouteConfiguration:
    """The routes of ``direct-http`` (workload-addressed HTTP): everything to ``encap``."""
    return routes.route_configuration(DIRECT_HTTP, "inbound|http|0", [routes.default_route(hbone.ENCAP, "*", 0)])


def direct_chains(
    authz: Sequence[hcm_pb2.HttpFilter] = (), tcp_authz: Sequence[listener_components_pb2.Filter] = (),
    path_normalization: PathNormalizationType = "BASE", headers: HeaderSettings = DEFAULT_HEADERS,
) -> tuple[listener_components_pb2.FilterChain, ...]:
    """``direct-tcp`` and ``direct-http``; the latter's routes are ``direct_route_configuration``."""
    return (
        with_network_filters(tcp_chain(DIRECT_TCP, hbone.ENCAP, prefix=[_reexport_original_dst()]), tcp_authz),
        http_chain(DIRECT_HTTP, 0, h2=False, authz=authz, prefix=[_reexport_original_dst()],
                   path_normalization=path_normalization, headers=headers),
    )


def _action(chain: str) -> matcher_pb2.Matcher.OnMatch:
    return matcher_pb2.Matcher.OnMatch(action=extension_pb2.TypedExtensionConfig(
        name=chain, typed_config=packed(string_value(chain))))


def _app_protocol_matcher(http: str, tcp: str) -> matcher_pb2.Matcher:
    m = matcher_pb2.Matcher()
    m.matcher_tree.input.name = "application-protocol"
    m.matcher_tree.input.typed_config.CopyFrom(packed(inputs.ApplicationProtocolInput()))
    for key in HTTP_APP_PROTOCOLS:
        m.matcher_tree.exact_match_map.map[key].CopyFrom(_action(http))
    m.on_no_match.CopyFrom(_action(tcp))
    return m


def _port_target(pc: PortChains) -> matcher_pb2.Matcher.OnMatch:
    if pc.http_chain is not None and pc.tcp_chain is not None:
        return matcher_pb2.Matcher.OnMatch(matcher=_app_protocol_matcher(pc.http_chain.name, pc.tcp_chain.name))
    chain = pc.http_chain if pc.http_chain is not None else pc.tcp_chain
    assert chain is not None
    return _action(chain.name)


def _cidr(ip: str) -> cidr_pb2.CidrRange:
    """A VIP (``/32`` or ``/128``), or a ServiceEntry's CIDR address as given."""
    if "/" in ip:
        net = ipaddress.ip_network(ip, strict=False)
        r = cidr_pb2.CidrRange(address_prefix=str(net.network_address))
        r.prefix_len.value = net.prefixlen
        return r
    addr = ipaddress.ip_address(ip)
    r = cidr_pb2.CidrRange(address_prefix=str(addr))
    r.prefix_len.value = addr.max_prefixlen
    return r


def _tls_inspector(services: Sequence[ServiceChains]) -> listener_components_pb2.ListenerFilter:
    """Istio's TLS inspector of ``main_internal``, off for ports no service declares TLS on.

    Deviation: Istio adds it whenever a service has a TLS port; here only when a chain reads the
    SNI (a ``DYNAMIC_DNS`` TLS port), the one case where something uses what it finds."""
    tls = {pc.port for s in services for pc in s.ports if pc.tls}
    others = sorted({pc.port for s in services for pc in s.ports} - tls)
    out = listener_components_pb2.ListenerFilter(name="envoy.filters.listener.tls_inspector",
                                                 typed_config=packed(tls_inspector_pb2.TlsInspector()))
    rules = [listener_components_pb2.ListenerFilterChainMatchPredicate(
        destination_port_range=range_pb2.Int32Range(start=p, end=p + 1)) for p in others]
    if len(rules) == 1:
        out.filter_disabled.CopyFrom(rules[0])
    elif rules:
        out.filter_disabled.or_match.rules.extend(rules)
    return out


def main_internal_listener(
    services: Sequence[ServiceChains], workload_ips: Sequence[str], authz: Sequence[hcm_pb2.HttpFilter] = (),
    tcp_authz: Sequence[listener_components_pb2.Filter] = (), path_normalization: PathNormalizationType = "BASE",
    headers: HeaderSettings = DEFAULT_HEADERS,
) -> listener_pb2.Listener:
    """The internal listener: services in the given order (Istio: by creation time)."""
    lst = listener_pb2.Listener(name=MAIN_INTERNAL, traffic_direction=base_pb2.INBOUND)
    lst.internal_listener.SetInParent()
    lst.listener_filters.add(name=hbone.ORIGINAL_DST_KEY, typed_config=packed(original_dst_pb2.OriginalDst()))
    # The HTTP inspector is needed only where protocol is sniffed: ports with both chains, and
    # workload-addressed traffic.
    if workload_ips or any(pc.http_chain and pc.tcp_chain for s in services for pc in s.ports):
        lst.listener_filters.add(name="envoy.filters.listener.http_inspector",
                                 typed_config=packed(http_inspector_pb2.HttpInspector()))
    if any(pc.sni for s in services for pc in s.ports):
        lst.listener_filters.append(_tls_inspector(services))
    ipm = ip_pb2.IPMatcher()
    for svc in services:
        if not svc.vips or not svc.ports:
            continue
        rm = ipm.range_matchers.add()
        rm.ranges.extend(_cidr(v) for v in svc.vips)
        port_matcher = rm.on_match.matcher
        port_matcher.matcher_tree.input.name = "port"
        port_matcher.matcher_tree.input.typed_config.CopyFrom(packed(inputs.DestinationPortInput()))
        for pc in svc.ports:
            port_matcher.matcher_tree.exact_match_map.map[str(pc.port)].CopyFrom(_port_target(pc))
            for chain in (pc.http_chain, pc.tcp_chain):
                if chain is not None:
                    lst.filter_chains.append(chain)
    if workload_ips:
        rm = ipm.range_matchers.add()
        rm.ranges.extend(_cidr(ip) for ip in sorted(set(workload_ips)))
        rm.on_match.matcher.CopyFrom(_app_protocol_matcher(DIRECT_HTTP, DIRECT_TCP))
    lst.filter_chains.extend(direct_chains(authz, tcp_authz, path_normalization, headers))
    tree = lst.filter_chain_matcher.matcher_tree
    tree.input.name = "ip"
    tree.input.typed_config.CopyFrom(packed(inputs.DestinationIPInput()))
    tree.custom_match.name = "ip"
    tree.custom_match.typed_config.CopyFrom(packed(ipm))
    return lst
