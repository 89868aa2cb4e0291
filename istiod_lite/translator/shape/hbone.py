"""The fixed HBONE plumbing of every waypoint: ``connect_terminate``, ``connect_originate`` and the
``main_internal``/``encap``/``connect_originate`` clusters.

Facts: docs/istio-waypoint-shape.md §2.1, §2.3, §3 and docs/upstream-envoy.md (what was
verified on upstream Envoy 1.40).  Deviations from istio-proxy, all forced by upstream Envoy
(docs/upstream-envoy.md): filter-state objects use the ``envoy.string`` factory instead of
``istio.hashable_string``, and the peer-metadata filters are left out.

Only ``connect_terminate`` depends on the proxy (it binds the proxy's own address, so several
waypoints can share one host); everything else is shared by all replicas of a waypoint.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2 as http_sfs_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from envoy.type.matcher.v3 import string_pb2

from istiod_lite.model.types import Duration
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.shape.cluster_templates import DEFAULT_CONNECT_TIMEOUT_S, default_circuit_breakers
from istiod_lite.translator.shape.proxy_headers import DEFAULT_HEADERS, HeaderSettings, apply_to_connect_terminate

CONNECT_TERMINATE = "connect_terminate"
CONNECT_ORIGINATE = "connect_originate"
MAIN_INTERNAL = "main_internal"
ENCAP = "encap"
HBONE_PORT = 15008
#: MeshConfig ``hboneIdleTimeout`` default: idle HBONE connections to ztunnel are closed after 1h.
HBONE_IDLE_TIMEOUT_S = 3600
SDS_CLUSTER = "sds-grpc"
SECRET_DEFAULT = "default"
SECRET_ROOTCA = "ROOTCA"
ORIGINAL_DST_KEY = "envoy.filters.listener.original_dst"
LOCAL_IP_KEY = "envoy.filters.listener.original_dst.local_ip"
REMOTE_IP_KEY = "envoy.filters.listener.original_dst.remote_ip"
PEER_PRINCIPAL_KEY = "io.istio.peer_principal"
LOCAL_PRINCIPAL_KEY = "io.istio.local_principal"
CONNECT_AUTHORITY_KEY = "io.istio.connect_authority"
#: Upstream Envoy's string filter-state factory (istio-proxy: ``istio.hashable_string``).
STRING_FACTORY = "envoy.string"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"


def sds_config() -> config_source_pb2.ConfigSource:
    """Secrets come from the agent's SDS server (cluster ``sds-grpc``), as in Istio."""
    api = config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.GRPC,
        set_node_on_first_message_only=True,
        transport_api_version=config_source_pb2.V3,
        grpc_services=[grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER))],
    )
    cs = config_source_pb2.ConfigSource(api_config_source=api, resource_api_version=config_source_pb2.V3)
    cs.initial_fetch_timeout.SetInParent()
    return cs


def common_tls_context(trust_domain: str, extra_san_prefixes: tuple[str, ...] = (),
                       aliases: tuple[str, ...] = ()) -> tls_pb2.CommonTlsContext:
    """Istio's HBONE TLS: workload cert ``default``, root ``ROOTCA``, peer SAN in the trust domain
    or one of its ``aliases`` (MeshConfig ``trustDomainAliases``: istiod's
    ``TrustDomainsForValidation``, trust domain first, duplicates dropped), ALPN h2, TLS 1.3 only."""
    ctx = tls_pb2.CommonTlsContext(alpn_protocols=["h2"])
    ctx.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    ctx.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    ctx.tls_certificate_sds_secret_configs.add(name=SECRET_DEFAULT, sds_config=sds_config())
    combined = ctx.combined_validation_context
    domains = tuple(dict.fromkeys((trust_domain, *aliases)))
    for prefix in (*(f"spiffe://{td}/" for td in domains), *extra_san_prefixes):
        combined.default_validation_context.match_typed_subject_alt_names.add(
            san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(prefix=prefix))
    combined.validation_context_sds_secret_config.name = SECRET_ROOTCA
    combined.validation_context_sds_secret_config.sds_config.CopyFrom(sds_config())
    return ctx


def _sfs_http(key: str, fmt: str, factory: str = "") -> value_pb2.FilterStateValue:
    v = value_pb2.FilterStateValue(object_key=key, shared_with_upstream=value_pb2.FilterStateValue.ONCE)
    if factory:
        v.factory_key = factory
    v.format_string.text_format_source.inline_string = fmt
    return v


def connect_authority_filter() -> hcm_pb2.HttpFilter:
    """Carry the CONNECT target and the peer's identity into ``main_internal`` (filter state,
    shared with the internal upstream connection once)."""
    cfg = http_sfs_pb2.Config(on_request_headers=[
        _sfs_http(LOCAL_IP_KEY, "%REQ(:AUTHORITY)%"),
        _sfs_http(CONNECT_AUTHORITY_KEY, "%REQ(:AUTHORITY)%", STRING_FACTORY),
        _sfs_http(REMOTE_IP_KEY, "%DOWNSTREAM_REMOTE_ADDRESS%"),
        _sfs_http(PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", STRING_FACTORY),
        _sfs_http(LOCAL_PRINCIPAL_KEY, "%DOWNSTREAM_LOCAL_URI_SAN%", STRING_FACTORY),
    ])
    return hcm_pb2.HttpFilter(name="connect_authority", typed_config=packed(cfg))


def router_filter(suppress_envoy_headers: bool = False) -> hcm_pb2.HttpFilter:
    router = router_pb2.Router(start_child_span=False, suppress_envoy_headers=suppress_envoy_headers)
    return hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router))


def connect_terminate(bind_ip: str, trust_domain: str, aliases: tuple[str, ...] = (),
                      headers: HeaderSettings = DEFAULT_HEADERS) -> listener_pb2.Listener:
    """HBONE termination on ``bind_ip:15008``: mTLS required (a peer of the trust domain or one of
    its ``aliases``), CONNECT routed to ``main_internal``; ``headers``: MeshConfig proxyHeaders."""
    lst = listener_pb2.Listener(
        name=CONNECT_TERMINATE,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=bind_ip, port_value=HBONE_PORT)),
    )
    lst.connection_balance_config.exact_balance.SetInParent()
    tls = tls_pb2.DownstreamTlsContext(common_tls_context=common_tls_context(trust_domain, aliases=aliases))
    tls.require_client_certificate.value = True
    chain = lst.filter_chains.add(name="default")
    chain.transport_socket.name = "tls"
    chain.transport_socket.typed_config.CopyFrom(packed(tls))

    route_cfg = route_pb2.RouteConfiguration(name="default")
    vh = route_cfg.virtual_hosts.add(name="default", domains=["*"])
    r = vh.routes.add()
    r.match.connect_matcher.SetInParent()
    r.route.cluster = MAIN_INTERNAL
    up = r.route.upgrade_configs.add(upgrade_type="CONNECT")
    up.connect_config.SetInParent()

    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=CONNECT_TERMINATE,
        route_config=route_cfg,
        server_name="istio-envoy",
        server_header_transformation=hcm_pb2.HttpConnectionManager.OVERWRITE,
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.APPEND_FORWARD,
        http_filters=[connect_authority_filter(), router_filter()],
    )
    hcm.upgrade_configs.add(upgrade_type="CONNECT")
    hcm.stream_idle_timeout.SetInParent()
    hcm.use_remote_address.value = False
    hcm.use_remote_address.SetInParent()
    hcm.set_current_client_cert_details.subject.value = True
    hcm.set_current_client_cert_details.uri = True
    hcm.set_current_client_cert_details.dns = True
    apply_to_connect_terminate(hcm, headers)
    h2 = hcm.http2_protocol_options
    h2.allow_connect = True
    h2.max_concurrent_streams.value = 100
    h2.connection_keepalive.interval.seconds = 10
    h2.connection_keepalive.timeout.seconds = 20
    chain.filters.add(name=HCM, typed_config=packed(hcm))
    return lst


def _original_dst_listener_filter() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(name=ORIGINAL_DST_KEY,
                                                  typed_config=packed(original_dst_pb2.OriginalDst()))


def connect_originate_listener() -> listener_pb2.Listener:
    """Internal listener that tunnels each connection as ``CONNECT <podIP>:<port>`` (HBONE out)."""
    lst = listener_pb2.Listener(name=CONNECT_ORIGINATE, listener_filters=[_original_dst_listener_filter()])
    lst.internal_listener.SetInParent()
    lst.use_original_dst.value = False
    lst.use_original_dst.SetInParent()
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=CONNECT_ORIGINATE, cluster=CONNECT_ORIGINATE)
    proxy.tunneling_config.hostname = "%DOWNSTREAM_LOCAL_ADDRESS%"
    lst.filter_chains.add().filters.add(name=TCP_PROXY, typed_config=packed(proxy))
    return lst


def _passthrough_options(idle_seconds: int) -> hpo_pb2.HttpProtocolOptions:
    opts = hpo_pb2.HttpProtocolOptions()
    opts.common_http_protocol_options.idle_timeout.seconds = idle_seconds
    opts.use_downstream_protocol_config.http_protocol_options.SetInParent()
    opts.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    return opts


def internal_upstream(passthrough: bool) -> base_pb2.TransportSocket:
    """``internal_upstream`` around raw_buffer; for service clusters, the host metadata that names
    the pod (``original_dst``) and ``istio`` are passed to the internal listener."""
    iu = internal_upstream_pb2.InternalUpstreamTransport()
    if passthrough:
        for name in (ORIGINAL_DST_KEY, "istio"):
            iu.passthrough_metadata.add(name=name).kind.host.SetInParent()
    iu.transport_socket.name = "raw_buffer"
    iu.transport_socket.typed_config.CopyFrom(packed(raw_buffer_pb2.RawBuffer()))
    return base_pb2.TransportSocket(name="internal_upstream", typed_config=packed(iu))


def _internal_cluster(name: str, listener: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC, alt_stat_name=f"{name};",
                            circuit_breakers=default_circuit_breakers(),
                            transport_socket=internal_upstream(passthrough=False))
    c.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
        endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=address_pb2.Address(
                envoy_internal_address=address_pb2.EnvoyInternalAddress(server_listener_name=listener))))])]))
    c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(_passthrough_options(300)))
    return c


def main_internal_cluster() -> cluster_pb2.Cluster:
    return _internal_cluster(MAIN_INTERNAL, MAIN_INTERNAL)


def encap_cluster() -> cluster_pb2.Cluster:
    return _internal_cluster(ENCAP, CONNECT_ORIGINATE)


def connect_originate_cluster(trust_domain: str, waypoint_namespace: str, aliases: tuple[str, ...] = (),
                              connect_timeout: Duration | None = None,
                              idle_timeout: Duration | None = None) -> cluster_pb2.Cluster:
    """HBONE to the destination pod's port 15008, mTLS with the waypoint's own certificate; the
    destination may be in the trust domain or one of its ``aliases``.  ``connect_timeout``: the
    mesh's ``connectTimeout`` (istiod's default 10s when None); ``idle_timeout``: the mesh's
    ``hboneIdleTimeout``, how long idle HBONE connections to ztunnel are kept (default 1h)."""
    c = cluster_pb2.Cluster(name=CONNECT_ORIGINATE, type=cluster_pb2.Cluster.ORIGINAL_DST,
                            lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED, alt_stat_name=f"{CONNECT_ORIGINATE};",
                            circuit_breakers=default_circuit_breakers())
    if connect_timeout is None:
        c.connect_timeout.seconds = DEFAULT_CONNECT_TIMEOUT_S
    else:
        c.connect_timeout.seconds, c.connect_timeout.nanos = divmod(connect_timeout.nanos, 1_000_000_000)
    c.cleanup_interval.seconds = 60
    c.original_dst_lb_config.upstream_port_override.value = HBONE_PORT
    c.original_dst_lb_config.metadata_key.key = ORIGINAL_DST_KEY
    c.original_dst_lb_config.metadata_key.path.add(key="waypoint")
    opts = hpo_pb2.HttpProtocolOptions()
    if idle_timeout is None:
        opts.common_http_protocol_options.idle_timeout.seconds = HBONE_IDLE_TIMEOUT_S
    else:
        idle = opts.common_http_protocol_options.idle_timeout
        idle.seconds, idle.nanos = divmod(idle_timeout.nanos, 1_000_000_000)
        idle.SetInParent()
    opts.explicit_http_config.http2_protocol_options.allow_connect = True
    c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(opts))
    tls = tls_pb2.UpstreamTlsContext(common_tls_context=common_tls_context(
        trust_domain, (f"spiffe://{trust_domain}/ns/{waypoint_namespace}/sa/",), aliases))
    c.transport_socket.name = "tls"
    c.transport_socket.typed_config.CopyFrom(packed(tls))
    return c
