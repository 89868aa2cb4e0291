"""Clusters for the services a waypoint serves (Istio's inbound-vip/outbound shape and defaults).

This module holds the prebuilt parts every service cluster is copied from; what a
DestinationRule changes on top is ``cluster_policy``'s job.  Facts: docs/istio-waypoint-shape.md
§3 (``buildCluster``, ``setUpstreamProtocol``, ``AddConfigInfoMetadata``).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from google.protobuf import any_pb2, struct_pb2

#: Istio's mesh default ``connectTimeout``.
DEFAULT_CONNECT_TIMEOUT_S = 10
_MAX = 4294967295
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: ``/apis/<group>/<version>/namespaces/<ns>/<kind>/<name>``: Istio's ``config`` metadata of a resource.
DR_PATH = "/apis/networking.istio.io/v1/namespaces/{}/destination-rule/{}"


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


def h2_protocol_options() -> hpo_pb2.HttpProtocolOptions:
    """``setH2Options``: HTTP/2 to the upstream (http2/grpc ports, or an h2 upgrade)."""
    opts = hpo_pb2.HttpProtocolOptions()
    opts.explicit_http_config.http2_protocol_options.SetInParent()
    return opts


def downstream_protocol_options() -> hpo_pb2.HttpProtocolOptions:
    """``setUseDownstreamProtocol``: the upstream speaks what the client spoke (sniffed ports,
    ``useClientProtocol``)."""
    opts = hpo_pb2.HttpProtocolOptions()
    opts.use_downstream_protocol_config.http_protocol_options.SetInParent()
    opts.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    return opts


def _packed(msg: hpo_pb2.HttpProtocolOptions) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


# Built once and copied (a C-level deep copy): building nested messages field by field in Python
# is what translation time is made of.
_EDS_TEMPLATE = _eds_template()
_H2_OPTIONS = _packed(h2_protocol_options())
_DOWNSTREAM_OPTIONS = _packed(downstream_protocol_options())


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
    transport_socket: base_pb2.TransportSocket | None = None, h2: bool = False, auto: bool = False,
    subset: str = "", config: str = "",
) -> cluster_pb2.Cluster:
    """An EDS cluster with Istio's defaults.

    ``h2``: an HTTP/2 port; ``auto``: a port whose protocol is sniffed (the upstream follows the
    client).  ``subset``/``config``: Istio's ``istio.subset`` and ``istio.config`` metadata (the
    DestinationRule's path, set only when a traffic policy applies)."""
    c = cluster_pb2.Cluster()
    c.CopyFrom(_EDS_TEMPLATE)
    c.name = name
    c.eds_cluster_config.service_name = name
    if transport_socket is not None:
        c.transport_socket.CopyFrom(transport_socket)
    if h2:
        c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(_H2_OPTIONS)
    elif auto:
        c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(_DOWNSTREAM_OPTIONS)
    if metadata_services:
        meta = metadata_services if isinstance(metadata_services, struct_pb2.Struct) \
            else service_metadata(metadata_services)
        istio = c.metadata.filter_metadata["istio"]
        istio.CopyFrom(meta)
        if config:
            istio.fields["config"].string_value = config
        if subset:
            istio.fields["subset"].string_value = subset
    return c
