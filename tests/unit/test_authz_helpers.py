"""Helpers shared by the authorization tests (no tests here): snapshots from YAML, filters as
Envoy JSON, and a bootstrap that embeds generated filters in real waypoint chains for
``envoy --mode validate``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.translator.authz import AuthzFilters, ClusterRequest
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.listeners import inbound
from istiod_lite.translator.routing import routes
from tests.support.envoy import inline_rds

WP = WaypointRef("shop", "waypoint")
BASE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop}
spec: {clusterIP: 10.0.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: authz}
spec: {clusterIP: 10.0.0.9, ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]}
"""


def snapshot(*yaml_texts: str, base: bool = True) -> ConfigSnapshot:
    docs = [d for text in ((BASE,) if base else ()) + yaml_texts for d in yaml.safe_load_all(text) if d]
    return ConfigSnapshot.build([parse_object(d) for d in docs])


def ap(name: str, spec: str, *, namespace: str = "shop", annotations: dict[str, str] | None = None,
       target: str | None = "service:cart") -> str:
    """An AuthorizationPolicy document; ``target`` ``kind:name`` (``None``: as written in ``spec``)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    body: dict[str, Any] = yaml.safe_load(spec) or {}
    if target is not None:
        kind, _, tname = target.partition(":")
        group = {"service": "", "serviceentry": "networking.istio.io", "gateway": "gateway.networking.k8s.io",
                 "gatewayclass": "gateway.networking.k8s.io"}[kind]
        kinds = {"service": "Service", "serviceentry": "ServiceEntry", "gateway": "Gateway",
                 "gatewayclass": "GatewayClass"}
        body["targetRefs"] = [{"group": group, "kind": kinds[kind], "name": tname}]
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": meta, "spec": body})


def ra(name: str, rules: list[dict[str, Any]], *, namespace: str = "shop", target: str = "cart") -> str:
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": target}],
                                    "jwtRules": rules}})


def as_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def filters_json(filters: Sequence[Message]) -> list[dict[str, Any]]:
    return [as_dict(f) for f in filters]


def rbac_configs(filters: Sequence[Message]) -> list[dict[str, Any]]:
    """The typed configs of the RBAC filters, in order (``@type`` removed)."""
    out = []
    for f in filters_json(filters):
        if f["name"] in ("envoy.filters.http.rbac", "envoy.filters.network.rbac"):
            cfg = dict(f["typed_config"])
            cfg.pop("@type")
            out.append(cfg)
    return out


def only_policy(filters: AuthzFilters, *, tcp: bool = False, shadow: bool = False) -> dict[str, Any]:
    """The single policy of the single RBAC filter."""
    cfgs = rbac_configs(filters.tcp if tcp else filters.http)
    assert len(cfgs) == 1, cfgs
    policies = cfgs[0]["shadow_rules" if shadow else "rules"]["policies"]
    assert len(policies) == 1, policies
    return next(iter(policies.values()))  # type: ignore[no-any-return]


def first_permission_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return policy["permissions"][0]["and_rules"]["rules"]  # type: ignore[no-any-return]


def first_principal_ids(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return policy["principals"][0]["and_ids"]["ids"]  # type: ignore[no-any-return]


def peer(match: dict[str, Any]) -> dict[str, Any]:
    return {"filter_state": {"key": "io.istio.peer_principal", "string_match": match}}


# --- envoy --mode validate ------------------------------------------------------------------------


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "@type"}


def validation_bootstrap(filter_sets: Iterable[AuthzFilters], *, runtime: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
    """Each filter set in the project's own waypoint chains (``inbound.http_chain`` and a TCP chain
    with the network filters before ``tcp_proxy``), one listener per set; every requested cluster
    exists as a static cluster (HTTP/2 for gRPC services)."""
    listeners = []
    clusters: dict[str, ClusterRequest] = {}
    for i, fs in enumerate(filter_sets):
        rcfg = routes.route_configuration(f"http-{i}", "inbound|http|80", [routes.default_route("backend", "*", 80)])
        http = inbound.http_chain(f"http-{i}", 80, h2=False, authz=fs.http)
        tcp = inbound.tcp_chain(f"tcp-{i}", "backend", prefix=fs.tcp)
        for n, chain in (("h", http), ("t", tcp)):
            listeners.append({"name": f"l{i}{n}", "address": {"socket_address": {"address": "127.0.0.1",
                                                                                  "port_value": 0}},
                              "filter_chains": [inline_rds(as_dict(chain), {rcfg.name: as_dict(rcfg)})]})
        for c in fs.clusters:
            clusters[c.name] = c
    static = [{"name": "backend", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 9}}}}]}]}}]
    for c in clusters.values():
        cluster: dict[str, Any] = {"name": c.name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": c.name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": c.port}}}}]}]}}
        if "grpc" in c.purpose or c.port == 9000:
            cluster["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}}
        static.append(cluster)
    boot: dict[str, Any] = {"static_resources": {"listeners": listeners, "clusters": static}}
    if runtime:
        boot["layered_runtime"] = {"layers": [{"name": "static", "static_layer": runtime}]}
    return boot
