"""A DestinationRule traffic policy applied to one service cluster (inbound-vip or outbound).

Facts: docs/istio-waypoint-shape.md §3 "DR -> cluster mapping"; Istio's
``buildWaypointInboundVIPCluster`` and ``cluster_traffic_policy.go``.  The order of the steps is
Istio's and matters: the connection pool is applied before the h2 upgrade (so
``maxConcurrentStreams`` reaches only ports that are HTTP/2 by protocol), outlier detection before
the load balancer, and TLS last (its ALPN and auto-SNI depend on the protocol options).

Why a separate module from ``clusters``: the plain case (no policy) is a template copy and stays
there; this module runs only for clusters a DestinationRule touches.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.common.matcher.v3 import matcher_pb2
from envoy.config.core.v3 import base_pb2, proxy_protocol_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2 as pp_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, struct_pb2

from istiod_lite.model.networking import ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection
from istiod_lite.model.types import Duration
from istiod_lite.translator.clusters import upstream_tls
from istiod_lite.translator.clusters.policy_select import Policy
from istiod_lite.translator.core.names import ORIGINAL_DST_KEY
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.shape import cluster_templates

_PROXY_PROTOCOL = "envoy.transport_sockets.upstream_proxy_protocol"
_RAW_BUFFER = base_pb2.TransportSocket(name="raw_buffer", typed_config=packed(raw_buffer_pb2.RawBuffer()))
_LB = cluster_pb2.Cluster


def set_duration(field: duration_pb2.Duration, d: Duration) -> None:
    """Copy a model duration into a protobuf one (present even when zero: ``0s`` disables)."""
    field.seconds = d.seconds
    field.nanos = d.subsecond_nanos
    field.SetInParent()


def internal_upstream(inner: base_pb2.TransportSocket) -> base_pb2.TransportSocket:
    """``WaypointInternalUpstreamTransportSocket``: the pod's original_dst and ``istio`` host
    metadata pass to ``connect_originate``; ``inner`` (TLS, PROXY) runs inside the HBONE tunnel."""
    iu = internal_upstream_pb2.InternalUpstreamTransport()
    for name in (ORIGINAL_DST_KEY, "istio"):
        iu.passthrough_metadata.add(name=name).kind.host.SetInParent()
    iu.transport_socket.CopyFrom(inner)
    return base_pb2.TransportSocket(name="internal_upstream", typed_config=packed(iu))


def service_cluster(
    name: str, services: struct_pb2.Struct, policy: Policy | None, *, h2: bool, auto: bool,
    plain_transport: base_pb2.TransportSocket, subset: str = "", config: str = "", alpn_override: bool = False,
    connect_timeout: Duration | None = None,
) -> cluster_pb2.Cluster:
    """One service cluster: the template, then ``policy`` (None: Istio's defaults only).

    ``plain_transport``: the transport socket used when the policy sets no TLS/PROXY (prebuilt by
    the caller, so the common case is a copy).  ``alpn_override``: outbound clusters get Istio's
    ``istio.alpn_override: "false"`` metadata when they originate TLS.  ``connect_timeout``: the
    mesh's ``connectTimeout`` (None: istiod's default 10s); a DestinationRule's own overrides it."""
    if policy is None:
        c = cluster_templates.eds_cluster(name, services, transport_socket=plain_transport, h2=h2, auto=auto,
                                          subset=subset, config=config)
        if connect_timeout is not None:
            set_duration(c.connect_timeout, connect_timeout)
        return c
    c = cluster_templates.eds_cluster(name, services, subset=subset, config=config)
    if connect_timeout is not None:
        set_duration(c.connect_timeout, connect_timeout)
    opts: hpo_pb2.HttpProtocolOptions | None = None
    if h2:
        opts = cluster_templates.h2_protocol_options()
    elif auto:
        opts = cluster_templates.downstream_protocol_options()
    cp = policy.connection_pool
    http = cp.http if cp is not None else None
    if http is not None and http.h2_upgrade_policy == "UPGRADE" and not http.use_client_protocol:
        # Before the pool settings, as Istio's applyH2Upgrade: HTTP/2-only options then apply.
        opts = opts or hpo_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.SetInParent()
    opts = _apply_connection_pool(c, cp, policy, opts)
    if policy.outlier_detection is not None:
        _apply_outlier_detection(c, policy.outlier_detection)
        if policy.outlier_detection.outlier_detection_http_error_codes:
            opts = opts or hpo_pb2.HttpProtocolOptions()
            _apply_outlier_error_codes(opts, policy.outlier_detection.outlier_detection_http_error_codes)
    if policy.load_balancer is not None:
        _apply_load_balancer(c, policy.load_balancer)
    tls = policy.tls
    inner = _RAW_BUFFER
    if tls is not None and tls.mode in ("SIMPLE", "MUTUAL"):
        is_h2 = opts is not None and opts.explicit_http_config.HasField("http2_protocol_options")
        ctx = upstream_tls.upstream_tls_context(tls, h2=is_h2)
        inner = base_pb2.TransportSocket(name=upstream_tls.TLS_SOCKET, typed_config=packed(ctx))
        auto_sni, auto_san = upstream_tls.auto_sni_san(tls)
        if auto_sni or auto_san:
            opts = opts or hpo_pb2.HttpProtocolOptions()
            if auto_sni:
                opts.upstream_http_protocol_options.auto_sni = True
            if auto_san:
                opts.upstream_http_protocol_options.auto_san_validation = True
        if alpn_override:
            c.metadata.filter_metadata["istio"].fields["alpn_override"].string_value = "false"
    if policy.proxy_protocol is not None:
        ppt = pp_pb2.ProxyProtocolUpstreamTransport(transport_socket=inner)
        ppt.config.version = proxy_protocol_pb2.ProxyProtocolConfig.Version.Value(policy.proxy_protocol.version)
        inner = base_pb2.TransportSocket(name=_PROXY_PROTOCOL, typed_config=packed(ppt))
    c.transport_socket.CopyFrom(plain_transport if inner is _RAW_BUFFER else internal_upstream(inner))
    if opts is not None:
        if opts.WhichOneof("upstream_protocol_options") is None:
            # Envoy requires an upstream protocol; Istio's clusterWrapper.build() adds HTTP/1.
            opts.explicit_http_config.http_protocol_options.SetInParent()
        c.typed_extension_protocol_options[cluster_templates.HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(opts))
    if c.type == _LB.ORIGINAL_DST:
        c.lb_policy = _LB.CLUSTER_PROVIDED
        c.ClearField("eds_cluster_config")  # only EDS clusters get the EDS config (maybeApplyEdsConfig)
    return c


def _apply_connection_pool(
    c: cluster_pb2.Cluster, cp: ConnectionPoolSettings | None, policy: Policy,
    opts: hpo_pb2.HttpProtocolOptions | None,
) -> hpo_pb2.HttpProtocolOptions | None:
    """``applyConnectionPool``: circuit-breaker thresholds, connect timeout, keepalive and the
    HTTP protocol options (idle timeout, requests per connection, connection duration)."""
    t = c.circuit_breakers.thresholds[0]
    if policy.retry_budget is not None:
        rb = policy.retry_budget
        # Istio's default is 20 (%) (docs/istio-waypoint-shape.md §3, DR -> cluster mapping).
        t.retry_budget.budget_percent.value = rb.percent if rb.percent is not None else 20.0
        t.retry_budget.min_retry_concurrency.value = rb.min_retry_concurrency or 3
    if cp is None:
        return opts
    http, tcp = cp.http, cp.tcp
    idle: Duration | None = None
    max_per_conn = streams = 0
    keepalive_h2 = http.http2_keep_alive if http is not None else None
    if http is not None:
        if http.http2_max_requests:
            t.max_requests.value = http.http2_max_requests
        if http.http1_max_pending_requests:
            t.max_pending_requests.value = http.http1_max_pending_requests
        if http.max_retries:
            t.max_retries.value = http.max_retries
        idle = http.idle_timeout
        max_per_conn = http.max_requests_per_connection or 0
        streams = http.max_concurrent_streams or 0
    conn_duration: Duration | None = None
    if tcp is not None:
        if tcp.connect_timeout is not None:
            set_duration(c.connect_timeout, tcp.connect_timeout)
        if tcp.max_connections:
            t.max_connections.value = tcp.max_connections
        conn_duration = tcp.max_connection_duration
        if idle is None:
            idle = tcp.idle_timeout
        ka = tcp.tcp_keepalive
        if ka is not None:
            keepalive = c.upstream_connection_options.tcp_keepalive
            keepalive.SetInParent()
            if ka.probes:
                keepalive.keepalive_probes.value = ka.probes
            if ka.time is not None:
                keepalive.keepalive_time.value = ka.time.seconds
                keepalive.keepalive_time.SetInParent()
            if ka.interval is not None:
                keepalive.keepalive_interval.value = ka.interval.seconds
                keepalive.keepalive_interval.SetInParent()
    if conn_duration is not None or idle is not None or max_per_conn or streams or keepalive_h2 is not None:
        opts = opts or hpo_pb2.HttpProtocolOptions()
        common = opts.common_http_protocol_options
        common.SetInParent()
        if idle is not None:
            set_duration(common.idle_timeout, idle)
        if max_per_conn:
            common.max_requests_per_connection.value = max_per_conn
        if conn_duration is not None:
            set_duration(common.max_connection_duration, conn_duration)
        if streams and opts.explicit_http_config.HasField("http2_protocol_options"):
            opts.explicit_http_config.http2_protocol_options.max_concurrent_streams.value = streams
        if keepalive_h2 is not None and opts.explicit_http_config.HasField("http2_protocol_options"):
            # Only an HTTP/2 cluster pings, as in Istio; an HTTP/1 one keeps no PING settings.
            ka_h2 = opts.explicit_http_config.http2_protocol_options.connection_keepalive
            set_duration(ka_h2.interval, keepalive_h2.interval)
            set_duration(ka_h2.timeout, keepalive_h2.timeout)
    if http is not None and http.use_client_protocol:
        # Istio keeps explicit HTTP/1 options here; it sets none (no header-case preservation).
        opts = opts or hpo_pb2.HttpProtocolOptions()
        opts.use_downstream_protocol_config.http_protocol_options.SetInParent()
        opts.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    return opts


def _apply_outlier_detection(c: cluster_pb2.Cluster, o: OutlierDetection) -> None:
    """``applyOutlierDetection``: success-rate ejection off; a consecutive-error count is enforced
    at 100% when it is above 0; ``minHealthPercent`` becomes the panic threshold."""
    od = c.outlier_detection
    od.enforcing_success_rate.SetInParent()
    if o.consecutive_5xx_errors is not None:
        od.consecutive_5xx.value = o.consecutive_5xx_errors
        od.consecutive_5xx.SetInParent()
        od.enforcing_consecutive_5xx.value = 100 if o.consecutive_5xx_errors > 0 else 0
        od.enforcing_consecutive_5xx.SetInParent()
    if o.consecutive_gateway_errors is not None:
        od.consecutive_gateway_failure.value = o.consecutive_gateway_errors
        od.consecutive_gateway_failure.SetInParent()
        od.enforcing_consecutive_gateway_failure.value = 100 if o.consecutive_gateway_errors > 0 else 0
        od.enforcing_consecutive_gateway_failure.SetInParent()
    if o.interval is not None:
        set_duration(od.interval, o.interval)
    if o.base_ejection_time is not None:
        set_duration(od.base_ejection_time, o.base_ejection_time)
    if o.max_ejection_percent > 0:
        od.max_ejection_percent.value = o.max_ejection_percent
    if o.split_external_local_origin_errors:
        od.split_external_local_origin_errors = True
        if o.consecutive_local_origin_failures:
            od.consecutive_local_origin_failure.value = o.consecutive_local_origin_failures
            od.enforcing_consecutive_local_origin_failure.value = 100
        od.enforcing_local_origin_success_rate.SetInParent()
    c.common_lb_config.healthy_panic_threshold.value = o.min_health_percent


def _apply_outlier_error_codes(opts: hpo_pb2.HttpProtocolOptions, codes: tuple[int, ...]) -> None:
    """``outlierDetectionHttpErrorCodes``: responses whose ``:status`` is one of ``codes`` count as
    errors for outlier detection (one predicate, or an OR of them, as Istio builds it)."""
    rules = [matcher_pb2.MatchPredicate(http_response_headers_match=matcher_pb2.HttpHeadersMatch(
        headers=[route_components_pb2.HeaderMatcher(
            name=":status", string_match=string_pb2.StringMatcher(exact=str(code)))]))
        for code in codes]
    em = opts.outlier_detection.error_matcher
    if len(rules) == 1:
        em.CopyFrom(rules[0])
    else:
        em.or_match.rules.extend(rules)


def _apply_load_balancer(c: cluster_pb2.Cluster, lb: LoadBalancerSettings) -> None:
    """``applyLoadBalancer`` + ``ApplyRingHashLoadBalancer`` (locality settings are not applied)."""
    simple = lb.simple
    if simple == "RANDOM":
        c.lb_policy = _LB.RANDOM
    elif simple == "PASSTHROUGH":
        c.type = _LB.ORIGINAL_DST
        c.lb_policy = _LB.CLUSTER_PROVIDED
    elif simple == "ROUND_ROBIN":
        c.lb_policy = _LB.ROUND_ROBIN
        _slow_start(c.round_robin_lb_config.slow_start_config, lb, c.round_robin_lb_config)
    else:  # LEAST_CONN, LEAST_REQUEST and the default
        c.lb_policy = _LB.LEAST_REQUEST
        _slow_start(c.least_request_lb_config.slow_start_config, lb, c.least_request_lb_config)
    ch = lb.consistent_hash
    if ch is None:
        return
    if ch.maglev is not None:
        c.lb_policy = _LB.MAGLEV
        if ch.maglev.table_size:
            c.maglev_lb_config.table_size.value = ch.maglev.table_size
    elif ch.ring_hash is not None:
        c.lb_policy = _LB.RING_HASH
        if ch.ring_hash.minimum_ring_size:
            c.ring_hash_lb_config.minimum_ring_size.value = ch.ring_hash.minimum_ring_size
    else:
        c.lb_policy = _LB.RING_HASH
        c.ring_hash_lb_config.minimum_ring_size.value = ch.minimum_ring_size or 1024


def _slow_start(ss: cluster_pb2.Cluster.SlowStartConfig, lb: LoadBalancerSettings,
                parent: cluster_pb2.Cluster.RoundRobinLbConfig | cluster_pb2.Cluster.LeastRequestLbConfig) -> None:
    """``setWarmup`` (aggression 1 and minimum 10% by default), else the deprecated
    ``warmupDurationSecs``; nothing when neither is set."""
    if lb.warmup is not None:
        w = lb.warmup
        set_duration(ss.slow_start_window, w.duration)
        ss.aggression.default_value = w.aggression if w.aggression is not None else 1.0
        ss.aggression.runtime_key = "("  # Istio's fixed, unexposed runtime key
        ss.min_weight_percent.value = w.minimum_percent if w.minimum_percent is not None else 10.0
        ss.min_weight_percent.SetInParent()
    elif lb.warmup_duration_secs is not None:
        set_duration(ss.slow_start_window, lb.warmup_duration_secs)
    else:
        return
    parent.SetInParent()
