"""Envoy bootstrap for a waypoint, with the node identity Istio's pilot-agent would send.

Node id: ``waypoint~<IP>~<pod>.<ns>~<ns>.svc.cluster.local``; metadata carries NAMESPACE,
SERVICE_ACCOUNT, CLUSTER_ID, INSTANCE_IPS and LABELS (with the Gateway name), which is how the
server knows which waypoint connected (docs/istio-waypoint-shape.md §1.4).

With ``sds_socket`` the bootstrap also has Istio's ``sds-grpc`` cluster (HTTP/2 over the agent's Unix
socket).  With ``xds_socket`` the ``xds-grpc`` cluster is, as in Istio, plaintext HTTP/2 to the
agent's xDS proxy on a Unix socket; the agent forwards to istiod over TLS with the waypoint's bearer
token (``xdsproxy.py``).  Envoy itself never dials istiod then, and needs no TLS settings for it.
Given ``xds_address`` instead, ``xds-grpc`` is plaintext TCP to that address (tests, demos, 15010).

The node metadata's ``NAMESPACE`` and ``SERVICE_ACCOUNT`` are the identity's namespace and
(effective) service account, the same two names the agent's SPIFFE ID and token carry: istiod's
secure port refuses a stream whose node claims anything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from istiod_lite.addresses import is_ip, split_host_port

#: The agent's access-log service, which the translator's metrics loggers name.
from istiod_lite.translator.telemetry.metrics import STATS_CLUSTER

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
DEFAULT_CLUSTER_ID = "Kubernetes"
XDS_CLUSTER = "xds-grpc"
SDS_CLUSTER = "sds-grpc"
#: Istio's secret names (``pkg/security/security.go``): the workload certificate and its trust root.
DEFAULT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
#: The DNS SAN on istiod's serving certificate (also ``ca.servercert.DEFAULT_SERVER_SANS``): the TLS
#: name verified when the CA or xDS server is addressed by IP.
ISTIOD_SAN = "istiod.istio-system.svc"

_HTTP2_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class WaypointIdentity:
    name: str
    namespace: str
    service_account: str = ""
    ip: str = "127.0.1.1"
    pod_name: str = ""
    cluster_id: str = DEFAULT_CLUSTER_ID
    domain: str = "cluster.local"
    extra_labels: dict[str, str] = field(default_factory=dict)
    #: ``region/zone/subzone`` sent as Envoy's ``node.locality``; unset: the pod's locality label
    #: (``topology.istio.io/locality``, else ``istio-locality``; dots for slashes), as Istio's agent
    #: does.  istiod prefers the locality of the proxy's pod's node when it knows the pod.
    locality: str = ""

    @property
    def effective_service_account(self) -> str:
        return self.service_account or self.name

    @property
    def effective_pod_name(self) -> str:
        if self.pod_name:
            return self.pod_name
        suffix = hashlib.sha256(f"{self.namespace}/{self.name}/{self.ip}".encode()).hexdigest()[:5]
        return f"{self.name}-{suffix}"

    @property
    def node_id(self) -> str:
        return f"waypoint~{self.ip}~{self.effective_pod_name}.{self.namespace}~{self.namespace}.svc.{self.domain}"

    def node_locality(self) -> dict[str, str]:
        """Envoy's ``node.locality`` (empty when unknown)."""
        label = self.locality or self.extra_labels.get("topology.istio.io/locality") \
            or self.extra_labels.get("istio-locality", "")
        if not label:
            return {}
        parts = [*(label.split("/") if "/" in label else label.split(".")), "", ""]
        return {k: v for k, v in zip(("region", "zone", "sub_zone"), parts, strict=False) if v}

    def metadata(self) -> dict[str, Any]:
        labels = {GATEWAY_NAME_LABEL: self.name, **self.extra_labels}
        return {
            "NAMESPACE": self.namespace,
            "NAME": self.effective_pod_name,
            "SERVICE_ACCOUNT": self.effective_service_account,
            "CLUSTER_ID": self.cluster_id,
            "INSTANCE_IPS": self.ip,
            "LABELS": labels,
            "WORKLOAD_NAME": self.name,
        }


def sds_config() -> dict[str, Any]:
    """A ``ConfigSource`` for secrets from the agent (Istio's: gRPC to ``sds-grpc``, no initial
    fetch timeout so a listener or cluster waits for its certificate instead of failing)."""
    return {
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "set_node_on_first_message_only": True,
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
        },
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s",
    }


def sds_secret_config(name: str) -> dict[str, Any]:
    """An ``SdsSecretConfig`` naming one of the agent's secrets (``default`` or ``ROOTCA``)."""
    return {"name": name, "sds_config": sds_config()}


def _http2_options(keepalive: bool) -> dict[str, Any]:
    http2: dict[str, Any] = {"connection_keepalive": {"interval": "30s", "timeout": "10s"}} if keepalive else {}
    return {
        _HTTP2_OPTIONS_KEY: {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": http2},
        }
    }


def _pipe_cluster(name: str, socket_path: str) -> dict[str, Any]:
    """HTTP/2 (gRPC) to one of the agent's Unix sockets: local, so no keepalive and no TLS."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}],
        },
        "typed_extension_protocol_options": _http2_options(keepalive=False),
    }


def sds_cluster(socket_path: str) -> dict[str, Any]:
    """Istio's ``sds-grpc`` cluster: HTTP/2 (gRPC) to the agent's SDS socket."""
    return _pipe_cluster(SDS_CLUSTER, socket_path)


def xds_proxy_cluster(socket_path: str) -> dict[str, Any]:
    """Istio's ``xds-grpc`` cluster under pilot-agent: HTTP/2 to the agent's xDS proxy socket."""
    return _pipe_cluster(XDS_CLUSTER, socket_path)


def xds_tcp_cluster(xds_address: str) -> dict[str, Any]:
    """``xds-grpc`` straight to a plaintext xDS server (no agent in between)."""
    host, port = split_host_port(xds_address)
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
        "typed_extension_protocol_options": _http2_options(keepalive=True),
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
    }


#: Envoy stat tags for the waypoint's own names (``stats_config.stats_tags``).  Envoy matches every
#: regex against the *whole* stat name; each regex's first group is cut from the name and its inner
#: group is the tag's value.  Envoy's default tags are off: its ``cluster_name`` tag would cut the
#: name at the first dot, inside the service host.  Stats of ``inbound-vip|P|http[/subset]|HOST``
#: clusters get ``destination_port``, ``subset`` and ``destination_service`` (Istio's label names),
#: so ``/stats/prometheus`` reads e.g. ``envoy_cluster_inbound_vip_http_upstream_rq{response_code="200",
#: destination_port="9080",destination_service="reviews.shop.svc.cluster.local"}``.  The host ends
#: where the remainder is one of Envoy's cluster stat names (anchored at ``$``), since hosts have dots.
_CLUSTER_STAT = (r"(?:[a-z0-9_]+|circuit_breakers\.[a-z_]+\.[a-z0-9_]+|outlier_detection\.[a-z0-9_]+"
                 r"|(?:internal|external|canary)\.[a-z0-9_]+|http[123]\.[a-z0-9_]+|health_check\.[a-z0-9_]+"
                 r"|zone\.[^.]+\.[^.]+\.[a-z0-9_]+|default\.total_match_count|ssl\..+|tls\..+|lb_subsets_[a-z_]+)$")
_INBOUND_VIP = r"^cluster\.inbound-vip"
WAYPOINT_STATS_TAGS: tuple[tuple[str, str], ...] = (
    ("destination_port", _INBOUND_VIP + r"(\|(\d+))\|"),
    ("subset", _INBOUND_VIP + r"\|\d+\|(?:http|tcp)(/([^|]+))\|"),
    ("destination_service", _INBOUND_VIP + r"\|\d+\|(?:http|tcp)(?:/[^|]+)?\|((.+?)\.)" + _CLUSTER_STAT),
    # Every other cluster (connect_originate, outbound clusters, xds-grpc): its whole name.
    ("cluster_name", r"^cluster\.((?!inbound-vip\|)(.+?)\.)" + _CLUSTER_STAT),
    # The HCM of a waypoint chain (stat prefix ``inbound_0.0.0.0_<port>;``), also under its listener.
    ("destination_port", r"^http\.inbound_0\.0\.0\.0(_(\d+));\."),
    ("destination_port", r"^listener\..*?\.http\.inbound_0\.0\.0\.0(_(\d+));\."),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
)


def waypoint_stats_config() -> dict[str, Any]:
    """``stats_config`` turning the waypoint's cluster and HCM stat names into Istio-like labels
    (see ``docs/observability.md``)."""
    return {
        "use_all_default_tags": False,
        "stats_tags": [{"tag_name": name, "regex": regex} for name, regex in WAYPOINT_STATS_TAGS],
    }


#: Istio's readiness path on the status port (pilot-agent's ``/healthz/ready``).
READY_PATH = "/healthz/ready"
STATUS_LISTENER = "status"
#: Istio's Prometheus listener (``envoy-prometheus``, 15090): Envoy's stats for scraping.
PROMETHEUS_PATH = "/stats/prometheus"
PROMETHEUS_LISTENER = "envoy-prometheus"
ADMIN_CLUSTER = "envoy-admin"
#: The agent's merged Prometheus endpoint (Envoy's stats plus the Istio metrics) on a Unix socket.
AGENT_PROMETHEUS_CLUSTER = "agent-prometheus"


def _admin_route_listener(name: str, address: str, port: int, path: str, admin_path: str,
                          cluster: str = ADMIN_CLUSTER) -> dict[str, Any]:
    """A listener that forwards exactly ``GET <path>`` (after path normalisation) to Envoy's admin
    ``admin_path`` (or the same path on ``cluster``); everything else is a 404, so no other admin
    endpoint is reachable."""
    route = {"match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
             "route": {"cluster": cluster, "prefix_rewrite": admin_path, "timeout": "5s"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": name,
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }


def _admin_cluster(admin_address: str, admin_port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": ADMIN_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}}}]}]},
    }


def status_resources(address: str, port: int, admin_address: str, admin_port: int
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Istio's status port (15021) served by Envoy itself: ``GET /healthz/ready`` is answered by
    Envoy's admin ``/ready`` (200 once the xDS config is initialised), so the kubelet can probe
    the pod IP while the admin interface stays on loopback."""
    return (_admin_route_listener(STATUS_LISTENER, address, port, READY_PATH, "/ready"),
            _admin_cluster(admin_address, admin_port))


def waypoint_bootstrap(
    identity: WaypointIdentity,
    xds_address: str | None,
    *,
    admin_port: int = 15000,
    admin_address: str = "127.0.0.1",
    delta: bool = True,
    sds_socket: str | None = None,
    xds_socket: str | None = None,
    status_port: int = 0,
    status_address: str | None = None,
    prometheus_port: int = 0,
    stats_socket: str | None = None,
    prometheus_socket: str | None = None,
) -> dict[str, Any]:
    """A complete bootstrap (as a dict, Envoy's JSON form).

    Waypoints use Delta xDS by default, as Istio forces for them; ``delta=False`` selects SotW.
    Exactly one of ``xds_address`` (plaintext TCP to an xDS server) and ``xds_socket`` (the agent's
    xDS proxy) says where ``xds-grpc`` goes; ``sds_socket`` adds the ``sds-grpc`` cluster.
    ``status_port`` (Istio: 15021; 0: none) adds the readiness listener on ``status_address``
    (default: the proxy's own IP, which is what the kubelet probes); ``prometheus_port`` (Istio:
    15090; 0: none) adds ``GET /stats/prometheus`` there for scraping: Envoy's admin stats, or with
    ``prometheus_socket`` the agent's merged endpoint (Envoy's stats and the Istio metrics).
    ``stats_socket`` adds the agent's access-log service cluster the metrics loggers stream to.
    """
    if (xds_address is None) == (xds_socket is None):
        raise ValueError("give exactly one of xds_address and xds_socket")
    if (status_port or prometheus_port) and not admin_port:
        raise ValueError("the status and Prometheus ports need a fixed admin port")
    if xds_socket is not None:
        xds_cluster = xds_proxy_cluster(xds_socket)
    else:
        assert xds_address is not None
        xds_cluster = xds_tcp_cluster(xds_address)
    clusters = [xds_cluster]
    if sds_socket is not None:
        clusters.append(sds_cluster(sds_socket))
    if stats_socket is not None:
        clusters.append(_pipe_cluster(STATS_CLUSTER, stats_socket))
    static: dict[str, Any] = {"clusters": clusters}
    listeners = []
    if status_port:
        listeners.append(_admin_route_listener(STATUS_LISTENER, status_address or identity.ip, status_port,
                                               READY_PATH, "/ready"))
    if prometheus_port:
        listeners.append(_admin_route_listener(
            PROMETHEUS_LISTENER, status_address or identity.ip, prometheus_port, PROMETHEUS_PATH, PROMETHEUS_PATH,
            AGENT_PROMETHEUS_CLUSTER if prometheus_socket is not None else ADMIN_CLUSTER))
        if prometheus_socket is not None:
            endpoint = {"endpoint": {"address": {"pipe": {"path": prometheus_socket}}}}
            clusters.append({"name": AGENT_PROMETHEUS_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
                             "load_assignment": {"cluster_name": AGENT_PROMETHEUS_CLUSTER,
                                                 "endpoints": [{"lb_endpoints": [endpoint]}]}})
    if listeners:
        clusters.append(_admin_cluster(admin_address, admin_port))
        static["listeners"] = listeners
    return {
        "node": {
            "id": identity.node_id,
            "cluster": f"{identity.name}.{identity.namespace}",
            "metadata": identity.metadata(),
            **({"locality": loc} if (loc := identity.node_locality()) else {}),
        },
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
            "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
        },
        "static_resources": static,
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "buffer_size_kb": 64,
                },
            }
        ],
        "stats_config": waypoint_stats_config(),
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": {"overload.global_downstream_max_connections": 2147483647}}
            ]
        },
    }
