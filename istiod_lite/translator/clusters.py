"""Clusters for the services a waypoint serves (Istio's inbound-vip shape and defaults)."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import config_source_pb2

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


def eds_cluster(name: str, metadata_services: list[dict[str, str]] | None = None) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        circuit_breakers=default_circuit_breakers(),
    )
    c.connect_timeout.seconds = DEFAULT_CONNECT_TIMEOUT_S
    c.eds_cluster_config.service_name = name
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
    if metadata_services:
        services = c.metadata.filter_metadata["istio"].fields["services"].list_value
        for svc in metadata_services:
            entry = services.values.add().struct_value
            for k, v in sorted(svc.items()):
                entry.fields[k].string_value = v
    return c
