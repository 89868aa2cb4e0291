"""Envoy bootstrap for a waypoint, with the node identity Istio's pilot-agent would send.

Node id: ``waypoint~<IP>~<pod>.<ns>~<ns>.svc.cluster.local``; metadata carries NAMESPACE,
SERVICE_ACCOUNT, CLUSTER_ID, INSTANCE_IPS and LABELS (with the Gateway name), which is how the
server knows which waypoint connected (shared/reference/istio-waypoint.md §1.4).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from istiod_lite.addresses import is_ip, split_host_port

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
DEFAULT_CLUSTER_ID = "Kubernetes"
XDS_CLUSTER = "xds-grpc"


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


def waypoint_bootstrap(
    identity: WaypointIdentity,
    xds_address: str,
    *,
    admin_port: int = 15000,
    admin_address: str = "127.0.0.1",
    delta: bool = True,
) -> dict[str, Any]:
    """A complete bootstrap (as a dict, Envoy's JSON form).

    Waypoints use Delta xDS by default, as Istio forces for them; ``delta=False`` selects SotW.
    """
    host, port = split_host_port(xds_address)
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "10s"}}
                },
            }
        },
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
    }
    return {
        "node": {
            "id": identity.node_id,
            "cluster": f"{identity.name}.{identity.namespace}",
            "metadata": identity.metadata(),
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
        "static_resources": {"clusters": [xds_cluster]},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "buffer_size_kb": 64,
                },
            }
        ],
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": {"overload.global_downstream_max_connections": 2147483647}}
            ]
        },
    }
