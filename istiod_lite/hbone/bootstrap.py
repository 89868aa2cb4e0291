"""The static Envoy bootstrap of an HBONE proxy: pure, ``HboneConfig`` + secret file paths in, JSON dict out.

Outbound (what the client ztunnel does)::

    listener hbone_out_<i> (plain TCP on --listen)
      tcp_proxy, tunneling_config.hostname = <destination>      -> HTTP/2 CONNECT <destination>
    cluster waypoint_<ip>_<port>: STATIC, HTTP/2, mTLS (TLS 1.3, ALPN h2, our SPIFFE certificate)

Inbound (what the destination ztunnel does)::

    listener hbone_in_<i> (mTLS on <podIP>:15008, client certificate required)
      HCM, [ext_authz: the node's L4 policy check, when ``authorizer`` is set],
      route {connect_matcher} -> upgrade CONNECT with connect_config (terminate: the payload
      becomes a plain TCP stream to the cluster)
    cluster hbone_in_<i>_app (STATIC --forward) or hbone_in_authority (ORIGINAL_DST on :authority)

Both directions share Istio's TLS shape (``buildCommonConnectTLSContext``, see
docs/istio-waypoint-shape.md §2.1): certificate from secret ``default``, trust anchors from
secret ``ROOTCA``, peer URI SAN prefix ``spiffe://<td>/``.  The secrets are file-based SDS
resources, so renewing a certificate is an atomic file rename that Envoy picks up without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from istiod_lite.hbone.config import Endpoint, HboneConfig, InboundTerminator, OutboundTunnel

JsonDict = dict[str, Any]

CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
AUTHORITY_CLUSTER = "hbone_in_authority"
AUTHORIZER_CLUSTER = "hbone_in_authorizer"
#: How long a CONNECT waits for the authorization answer before it is refused (fail closed).
AUTHORIZER_TIMEOUT = "2s"
EGRESS_LISTENER = "hbone_egress"
EGRESS_CLUSTER = "hbone_egress_peer"
MAX_DOWNSTREAM_CONNECTIONS = 100_000

_TLS_SOCKET = "envoy.transport_sockets.tls"
_TYPES = "type.googleapis.com/envoy.extensions"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: Istio's HBONE keepalive (connect_terminate): dead peers are noticed within half a minute.
_KEEPALIVE = {"interval": "10s", "timeout": "20s"}


@dataclass(frozen=True, slots=True)
class SecretFiles:
    """The two file-based SDS resources (each a JSON ``DiscoveryResponse``-like document)."""

    certificate: Path
    roots: Path


def outbound_listener_name(index: int) -> str:
    return f"hbone_out_{index}"


def inbound_listener_name(index: int) -> str:
    return f"hbone_in_{index}"


def waypoint_cluster_name(waypoint: Endpoint) -> str:
    return f"waypoint_{waypoint.host}_{waypoint.port}"


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _sds(name: str, path: Path) -> JsonDict:
    # No watched_directory: Envoy then watches the file itself for a rename onto it (IN_MOVED_TO),
    # which is exactly how the secret writer replaces it.
    return {"name": name, "sds_config": {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"}}


def common_tls_context(config: HboneConfig, secrets: SecretFiles) -> JsonDict:
    """TLS 1.3 only, ALPN h2, our certificate, and peers verified against the mesh roots + SAN prefix."""
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [_sds(CERT_SECRET, secrets.certificate)],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": config.peer_san_prefix}},
                ],
            },
            "validation_context_sds_secret_config": _sds(ROOT_SECRET, secrets.roots),
        },
    }


def _http2_options(*, server: bool) -> JsonDict:
    # Envoy's default flow-control windows (256 KiB per stream, 1 MiB per connection).  4/16 MiB
    # windows gave no measurable gain in bench/bench_hbone.py on loopback, and made the terminator's
    # reset-on-app-close (docs/hbone.md, Limits) truncate far smaller responses.
    options: JsonDict = {"allow_connect": True, "connection_keepalive": dict(_KEEPALIVE)}
    if server:
        options["max_concurrent_streams"] = 100  # Istio's value on connect_terminate
    return options


def _static_cluster(name: str, endpoint: Endpoint, config: HboneConfig) -> JsonDict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": _seconds(config.connect_timeout_s),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": endpoint.socket_address()}}]}],
        },
    }


def waypoint_cluster(waypoint: Endpoint, config: HboneConfig, secrets: SecretFiles) -> JsonDict:
    """HTTP/2 over mTLS towards a waypoint (or any HBONE server); tunnels are multiplexed on it."""
    cluster = _static_cluster(waypoint_cluster_name(waypoint), waypoint, config)
    cluster["typed_extension_protocol_options"] = {
        _HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": _http2_options(server=False)},
        }
    }
    cluster["transport_socket"] = {
        "name": _TLS_SOCKET,
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common_tls_context(config, secrets),
        },
    }
    return cluster


def outbound_listener(index: int, tunnel: OutboundTunnel) -> JsonDict:
    name = outbound_listener_name(index)
    return {
        "name": name,
        "address": tunnel.listen.socket_address(),
        "enable_reuse_port": False,  # see inbound_listener
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name,
                    "cluster": waypoint_cluster_name(tunnel.waypoint),
                    "tunneling_config": {"hostname": str(tunnel.destination)},
                },
            }],
        }],
    }


def _connect_route(index: int, terminator: InboundTerminator) -> JsonDict:
    match: JsonDict = {"connect_matcher": {}}
    if terminator.forward is None:
        # Deliver only to this "pod": the authority must name the listening IP (any port).
        host = f"[{terminator.listen.host}]" if terminator.listen.is_ipv6 else terminator.listen.host
        match["headers"] = [{"name": ":authority", "string_match": {"prefix": f"{host}:"}}]
        cluster = AUTHORITY_CLUSTER
    else:
        cluster = f"{inbound_listener_name(index)}_app"
    return {
        "match": match,
        "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
    }


def _authz_filters(terminator: InboundTerminator, config: HboneConfig) -> list[JsonDict]:
    """The L4 policy check before a CONNECT to a pod is answered (only for terminators that deliver
    to the CONNECT authority: a ``forward`` terminator stands in for a waypoint, which ztunnel's
    inbound rules do not cover).  Fails closed; the peer's URI SAN reaches the check as
    ``source.principal``, the authority as ``request.http.host``."""
    if config.authorizer is None or terminator.forward is not None:
        return []
    return [{
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": f"{_TYPES}.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "grpc_service": {"envoy_grpc": {"cluster_name": AUTHORIZER_CLUSTER}, "timeout": AUTHORIZER_TIMEOUT},
        },
    }]


def authorizer_cluster(config: HboneConfig) -> JsonDict:
    """Plain HTTP/2 (gRPC) to the node's authorization service on loopback."""
    assert config.authorizer is not None
    cluster = _static_cluster(AUTHORIZER_CLUSTER, config.authorizer, config)
    cluster["typed_extension_protocol_options"] = {
        _HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return cluster


def inbound_listener(index: int, terminator: InboundTerminator, config: HboneConfig,
                     secrets: SecretFiles) -> JsonDict:
    name = inbound_listener_name(index)
    return {
        "name": name,
        "address": terminator.listen.socket_address(),
        # Envoy's default SO_REUSEPORT would let a second process bind the same <podIP>:15008 and
        # silently take half of its connections (two "pods" with one address, each with its own
        # certificates); without it the second bind fails loudly.
        "enable_reuse_port": False,
        "filter_chains": [{
            "transport_socket": {
                "name": _TLS_SOCKET,
                "typed_config": {
                    "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": common_tls_context(config, secrets),
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "codec_type": "HTTP2",
                    "route_config": {
                        "name": name,
                        "virtual_hosts": [{"name": name, "domains": ["*"],
                                           "routes": [_connect_route(index, terminator)]}],
                    },
                    "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                    "http2_protocol_options": _http2_options(server=True),
                    # A tunnel is a TCP connection: it may sit idle for as long as the app likes.
                    "stream_idle_timeout": "0s",
                    "http_filters": [*_authz_filters(terminator, config), {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
                    }],
                },
            }],
        }],
    }


def egress_listener(listen: Endpoint) -> JsonDict:
    """Per-connection tunnels: the PROXY header names the peer (its destination) and the CONNECT
    authority (its source); the tunnel is ``CONNECT <source>`` to ``<destination>`` over mTLS.

    This is how a caller that decides per connection (the xDS-driven node: waypoint, or the pod's
    own 15008) uses one static Envoy for any peer, without a restart when the mesh changes.
    """
    return {
        "name": EGRESS_LISTENER,
        "address": listen.socket_address(),
        "enable_reuse_port": False,
        "listener_filters": [{
            "name": "envoy.filters.listener.proxy_protocol",
            "typed_config": {"@type": f"{_TYPES}.filters.listener.proxy_protocol.v3.ProxyProtocol"},
        }],
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": EGRESS_LISTENER,
                    "cluster": EGRESS_CLUSTER,
                    "tunneling_config": {"hostname": "%DOWNSTREAM_REMOTE_ADDRESS%"},
                },
            }],
        }],
    }


def egress_cluster(config: HboneConfig, secrets: SecretFiles) -> JsonDict:
    """HTTP/2 over mTLS to whatever peer the PROXY header named (restored as the local address)."""
    return {
        "name": EGRESS_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": _seconds(config.connect_timeout_s),
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": _http2_options(server=False)},
            }
        },
        "transport_socket": {
            "name": _TLS_SOCKET,
            "typed_config": {
                "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls_context(config, secrets),
            },
        },
    }


def authority_cluster(config: HboneConfig) -> JsonDict:
    """Connects to whatever ``IP:port`` the CONNECT ``:authority`` names (checked by the route first)."""
    return {
        "name": AUTHORITY_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": _seconds(config.connect_timeout_s),
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": ":authority"},
    }


def hbone_bootstrap(config: HboneConfig, secrets: SecretFiles) -> JsonDict:
    """The complete static bootstrap; identical input gives identical output."""
    listeners: list[JsonDict] = [outbound_listener(i, t) for i, t in enumerate(config.outbound)]
    listeners += [inbound_listener(i, t, config, secrets) for i, t in enumerate(config.inbound)]
    clusters = [waypoint_cluster(w, config, secrets) for w in sorted({t.waypoint for t in config.outbound})]
    clusters += [_static_cluster(f"{inbound_listener_name(i)}_app", t.forward, config)
                 for i, t in enumerate(config.inbound) if t.forward is not None]
    if any(t.forward is None for t in config.inbound):
        clusters.append(authority_cluster(config))
        if config.authorizer is not None:
            clusters.append(authorizer_cluster(config))
    if config.egress is not None:
        listeners.append(egress_listener(config.egress))
        clusters.append(egress_cluster(config, secrets))
    return {
        "node": {"id": "hbone~istiod-lite", "cluster": "hbone"},
        "admin": {"address": config.admin.socket_address()},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        # Without a limit Envoy warns at start-up that downstream connections are unbounded; this
        # one is far above what a test or a demo opens, and keeps a runaway client from exhausting
        # file descriptors.
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": f"{_TYPES}.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
            },
        }]},
    }
