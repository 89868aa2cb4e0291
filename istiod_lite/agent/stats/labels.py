"""Istio's standard labels for one access-log entry of a waypoint (``reporter="waypoint"``).

What the waypoint really knows, and where each label comes from (the rest is Istio's ``unknown``):

* ``source_principal``: the HBONE peer's SPIFFE id (filter state ``io.istio.peer_principal``, from
  the client certificate on ``connect_terminate``); ``source_workload_namespace``: its ``ns`` part.
* ``source_workload``, ``source_canonical_service``/``_revision``, ``source_app``,
  ``source_version``, ``source_cluster``: **unknown**.  Upstream Envoy has no peer-metadata
  exchange and ztunnel sends no workload metadata; the caller's certificate names only its
  namespace and service account.
* ``destination_service``: the host of the upstream cluster the route chose
  (``inbound-vip|P|http|H``, ``outbound|P|S|H``), else the chain's own service;
  ``destination_service_name``/``_namespace``: the chain's Service for its own host, the two first
  labels of a ``name.ns.svc.*`` host, else the host and ``unknown``.
* ``destination_workload``, ``_workload_namespace``, ``destination_canonical_service``/``_revision``,
  ``destination_cluster``: the chosen endpoint's ``istio.workload`` metadata
  (``name;namespace;canonical name;revision;cluster``, Istio's EDS form); ``destination_app`` /
  ``destination_version``: the canonical service / revision (what Istio's proxy derives from that
  same metadata).  No endpoint (no route, DNS host): ``unknown``.
* ``destination_principal``: **unknown**.  The pod's certificate is checked on
  ``connect_originate``, a later hop whose peer the service chain's logger does not see.
* ``request_protocol``: ``grpc`` for ``content-type: application/grpc*``, else ``http``; ``tcp`` on
  TCP chains.  ``response_code``: the code sent downstream (``0`` when none was).
  ``grpc_response_status``: ``grpc-status`` of the trailers (or headers, trailers-only), gRPC only.
* ``response_flags``: Envoy's short flags (``UH``, ``NR``, ...), ``-`` when none.
* ``connection_security_policy``: ``mutual_tls`` (HBONE is mTLS with a client certificate),
  ``none`` without a peer identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from google.protobuf import wrappers_pb2

from istiod_lite.translator.telemetry.metrics import (
    CUSTOM_TAG_OVERRIDE_PREFIX,
    CUSTOM_TAG_WORKLOAD,
    PEER_PRINCIPAL_KEY,
    LogConfig,
)

UNKNOWN: Final = "unknown"
REPORTER: Final = "waypoint"

#: Istio's label order for HTTP metrics; TCP metrics have the same without the two response labels.
HTTP_LABELS: Final = (
    "reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_canonical_service",
    "destination_canonical_revision", "destination_service_name", "destination_service_namespace",
    "destination_cluster", "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
)
TCP_LABELS: Final = tuple(n for n in HTTP_LABELS if n not in ("response_code", "grpc_response_status"))

#: ``ResponseFlags`` fields in Envoy's order, with ``%RESPONSE_FLAGS%``'s short names.
_FLAGS: Final = (
    ("failed_local_healthcheck", "LH"), ("no_healthy_upstream", "UH"), ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"), ("upstream_remote_reset", "UR"), ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"), ("upstream_overflow", "UO"), ("no_route_found", "NR"),
    ("delay_injected", "DI"), ("fault_injected", "FI"), ("rate_limited", "RL"),
    ("unauthorized_details", "UAEX"), ("rate_limit_service_error", "RLSE"),
    ("downstream_connection_termination", "DC"), ("upstream_retry_limit_exceeded", "URX"),
    ("stream_idle_timeout", "SI"), ("invalid_envoy_request_headers", "IH"),
    ("downstream_protocol_error", "DPE"), ("upstream_max_stream_duration_reached", "UMSDR"),
    ("response_from_cache_filter", "RFCF"), ("no_filter_config_found", "NFCF"), ("duration_timeout", "DT"),
    ("upstream_protocol_error", "UPE"), ("no_cluster_found", "NC"), ("overload_manager", "OM"),
    ("dns_resolution_failure", "DF"), ("downstream_remote_reset", "DR"),
)

Labels = tuple[tuple[str, str], ...]


def response_flags(flags: data_pb2.ResponseFlags) -> str:
    names = []
    for field, short in _FLAGS:
        if field == "unauthorized_details":
            if flags.HasField(field):
                names.append(short)
        elif getattr(flags, field):
            names.append(short)
    return ",".join(names) or "-"


def spiffe_namespace(principal: str) -> str:
    """``ns`` of ``spiffe://<td>/ns/<ns>/sa/<sa>``, else ``unknown``."""
    parts = principal.split("/")
    if len(parts) == 7 and parts[0] == "spiffe:" and parts[3] == "ns" and parts[5] == "sa" and parts[4]:
        return parts[4]
    return UNKNOWN


def _peer_principal(common: data_pb2.AccessLogCommon) -> str:
    obj = common.filter_state_objects.get(PEER_PRINCIPAL_KEY)
    if obj is None:
        return ""
    value = wrappers_pb2.StringValue()
    if obj.Is(wrappers_pb2.StringValue.DESCRIPTOR) and obj.Unpack(value):
        return str(value.value)
    return ""


def cluster_host(cluster: str) -> str:
    """The service host of a route target cluster: ``inbound-vip|P|KIND[/S]|H`` or
    ``outbound|P|S|H``; ``""`` for anything else."""
    parts = cluster.split("|")
    if len(parts) == 4 and parts[0] in ("inbound-vip", "outbound") and parts[3]:
        return parts[3]
    return ""


@dataclass(frozen=True)
class _Destination:
    service: str
    name: str
    namespace: str


def _destination(config: LogConfig, cluster: str) -> _Destination:
    host = cluster_host(cluster) or config.host
    if host == config.host:
        return _Destination(host, config.name, config.namespace)
    parts = host.split(".")
    if len(parts) >= 4 and parts[2] == "svc":
        return _Destination(host, parts[0], parts[1])
    return _Destination(host, host, UNKNOWN)


def _workload(tags: Mapping[str, str]) -> dict[str, str]:
    fields = tags.get(CUSTOM_TAG_WORKLOAD, "").split(";")
    if len(fields) != 5 or not fields[0]:
        return {k: UNKNOWN for k in ("destination_workload", "destination_workload_namespace",
                                     "destination_canonical_service", "destination_canonical_revision",
                                     "destination_app", "destination_version", "destination_cluster")}
    name, namespace, canonical, revision, cluster = fields
    revision = revision or "latest"
    return {
        "destination_workload": name, "destination_workload_namespace": namespace or UNKNOWN,
        "destination_canonical_service": canonical or UNKNOWN, "destination_canonical_revision": revision,
        "destination_app": canonical or UNKNOWN, "destination_version": revision,
        "destination_cluster": cluster or UNKNOWN,
    }


def base_labels(config: LogConfig, common: data_pb2.AccessLogCommon, protocol: str) -> dict[str, str]:
    """The labels every metric of one entry shares (the HTTP response labels are added by the caller)."""
    peer = _peer_principal(common)
    dest = _destination(config, common.upstream_cluster)
    out = {
        "reporter": REPORTER,
        "source_workload": UNKNOWN, "source_canonical_service": UNKNOWN, "source_canonical_revision": UNKNOWN,
        "source_workload_namespace": spiffe_namespace(peer) if peer else UNKNOWN,
        "source_principal": peer or UNKNOWN, "source_app": UNKNOWN, "source_version": UNKNOWN,
        "source_cluster": UNKNOWN,
        "destination_principal": UNKNOWN,
        "destination_service": dest.service, "destination_service_name": dest.name,
        "destination_service_namespace": dest.namespace,
        "request_protocol": protocol,
        "response_flags": response_flags(common.response_flags),
        "connection_security_policy": "mutual_tls" if peer else "none",
    }
    out.update(_workload(common.custom_tags))
    return out


def for_metric(config: LogConfig, metric: str, labels: Mapping[str, str], order: tuple[str, ...],
               tags: Mapping[str, str]) -> Labels:
    """``labels`` in Istio's order with ``metric``'s tag overrides applied (added labels last, by name)."""
    values = dict(labels)
    for i, rule in enumerate(config.tags):
        if rule.metric != metric:
            continue
        if rule.source == "remove":
            values.pop(rule.label, None)
        elif rule.source == "literal":
            values[rule.label] = rule.value
        else:
            values[rule.label] = tags.get(f"{CUSTOM_TAG_OVERRIDE_PREFIX}{i}", UNKNOWN)
    ordered = [(n, values.pop(n)) for n in order if n in values]
    return (*ordered, *sorted(values.items()))


def http_protocol(request: data_pb2.HTTPRequestProperties) -> str:
    ctype = request.request_headers.get("content-type", "")
    return "grpc" if ctype.startswith("application/grpc") else "http"


def grpc_status(response: data_pb2.HTTPResponseProperties, protocol: str) -> str:
    if protocol != "grpc":
        return ""
    return response.response_trailers.get("grpc-status") or response.response_headers.get("grpc-status") or ""


__all__ = [
    "HTTP_LABELS",
    "REPORTER",
    "TCP_LABELS",
    "UNKNOWN",
    "Labels",
    "base_labels",
    "cluster_host",
    "for_metric",
    "grpc_status",
    "http_protocol",
    "response_flags",
    "spiffe_namespace",
]
