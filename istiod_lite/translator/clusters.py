"""Clusters for the services a waypoint serves (Istio's inbound-vip shape and defaults)."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from google.protobuf import any_pb2, struct_pb2

#: Istio's mesh default ``connectTimeout``.
DEFAULT_CONNECT_TIMEOUT_S = 10
_MAX = 4294967295


def default_circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    """Istio's defaults: effectively unlimited, with remaining-capacity gauges."""
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds(track_remaining=True)
    t.max_connections.value = _MAX
    t.max_pending_requests.value = _MAX
    t.max_requests.value = _MAX
    t.max_retries.value = _MAX
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[t])


def _eds_template() -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        type=cluster_pb2.Cluster.EDS,
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        circuit_breakers=default_circuit_breakers(),
    )
    c.connect_timeout.seconds = DEFAULT_CONNECT_TIMEOUT_S
    c.eds_cluster_config.eds_config.CopyFrom(
        config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        )
    )
    c.eds_cluster_config.eds_config.initial_fetch_timeout.SetInParent()
    # Istio sends unhealthy endpoints and disables panic mode (healthy_panic_threshold 0).
    c.common_lb_config.healthy_panic_threshold.value = 0
    c.common_lb_config.healthy_panic_threshold.SetInParent()
    return c


def _h2_options() -> any_pb2.Any:
    opts = hpo_pb2.HttpProtocolOptions()
    opts.explicit_http_config.http2_protocol_options.SetInParent()
    a = any_pb2.Any()
    a.Pack(opts)
    return a


# Built once and copied (a C-level deep copy): building nested messages field by field in Python
# is what translation time is made of.
_EDS_TEMPLATE = _eds_template()
_H2_OPTIONS = _h2_options()
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def service_metadata(services: list[dict[str, str]]) -> struct_pb2.Struct:
    """``filter_metadata.istio`` of a service's clusters: ``services: [{host, name, namespace}]``."""
    st = struct_pb2.Struct()
    lst = st.fields["services"].list_value
    for svc in services:
        entry = lst.values.add().struct_value
        for k, v in sorted(svc.items()):
            entry.fields[k].string_value = v
    return st


def eds_cluster(
    name: str, metadata_services: list[dict[str, str]] | struct_pb2.Struct | None = None, *,
    transport_socket: base_pb2.TransportSocket | None = None, h2: bool = False,
) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster()
    c.CopyFrom(_EDS_TEMPLATE)
    c.name = name
    c.eds_cluster_config.service_name = name
    if transport_socket is not None:
        c.transport_socket.CopyFrom(transport_socket)
    if h2:
        c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(_H2_OPTIONS)
    if metadata_services:
        meta = metadata_services if isinstance(metadata_services, struct_pb2.Struct) \
            else service_metadata(metadata_services)
        c.metadata.filter_metadata["istio"].CopyFrom(meta)
    return c
