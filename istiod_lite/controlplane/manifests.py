"""What istiod-lite creates for a waypoint Gateway: a pure renderer from the model to API objects.

For every Gateway of class ``istio-waypoint`` istiod renders a ServiceAccount, a Deployment and a
Service (docs/istio-waypoint-shape.md §1.1, Istio's ``files/waypoint.yaml``).  Here the pod
runs ``istiod-lite waypoint run`` (our pilot-agent) instead of ``pilot-agent proxy waypoint``.

Everything is built as dicts: user strings (names, labels, namespaces) are values in the tree and
are never pasted into YAML or JSON text, so a hostile name cannot inject fields.  The objects are
complete "apply configurations" for server-side apply (``waypoint_controller``).

Ownership (``is_ours``): the controller writes only objects it created.  A Gateway's name is chosen
by whoever may create Gateways; without this check a Gateway named like an application's Service or
ServiceAccount would have the controller rewrite that object and hang it off the Gateway, whose
deletion then garbage-collects it.  As Istio's deployment controller, "ours" is marked by the label
``gateway.istio.io/managed`` (Istio checks only that the label is there; here its value must be ours,
so an object of Istio's other gateway controller is not taken over either).
"""

from __future__ import annotations

from typing import Any

from istiod_lite.model.gateway import Gateway
from istiod_lite.model.meshconfig_proxy import ProxyConfig

WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-mesh-controller"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"

ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
TOKEN_AUDIENCE = "istio-ca"
TOKEN_EXPIRATION_SECONDS = 43200
TOKEN_DIR = "/var/run/secrets/tokens"
TOKEN_PATH = f"{TOKEN_DIR}/istio-token"
ROOT_CERT_DIR = "/var/run/secrets/istio"
ROOT_CERT_PATH = f"{ROOT_CERT_DIR}/{ROOT_CERT_KEY}"
#: istiod's secure gRPC port: xDS over TLS with a bearer token, and the CA.
ISTIOD_SECURE_PORT = 15012
HBONE_PORT = 15008
STATUS_PORT = 15021
#: Istio's ``http-envoy-prom`` port: Envoy's stats for Prometheus (``/stats/prometheus``).
PROMETHEUS_PORT = 15090
ENVOY_ADMIN_PORT = 15000
#: Istio's ProxyConfig defaults, passed explicitly so the pod spec says how the waypoint drains:
#: a replaced listener keeps its connections up to ``drainDuration``, each told at once to close
#: (pilot-agent's immediate strategy); on termination the listeners drain for
#: ``terminationDrainDuration`` before Envoy is stopped.
DRAIN_DURATION = "45s"
DRAIN_STRATEGY = "immediate"
TERMINATION_DRAIN_DURATION = "5s"
#: Covers the termination drain (5 s) plus Envoy's exit after SIGTERM (``--drain-timeout``, 5 s).
TERMINATION_GRACE_PERIOD_SECONDS = 30

#: Readiness as Istio's: ``GET /healthz/ready`` on the status port of the pod IP, served by the
#: waypoint's Envoy (``waypoint run --status-port``), answered by its admin ``/ready`` (200 once
#: the config from istiod-lite is initialised).
READY_PATH = "/healthz/ready"


def is_waypoint(gateway: Gateway) -> bool:
    """Whether the Gateway is one istiod-lite deploys (class ``istio-waypoint``)."""
    return gateway.spec.gateway_class_name == WAYPOINT_CLASS


def owner_reference(gateway: Gateway) -> dict[str, Any]:
    """The Gateway as controller owner: its objects are garbage-collected with it."""
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway", "name": gateway.name,
            "uid": gateway.metadata.uid, "controller": True}


def foreign_reason(live: dict[str, Any], gateway: Gateway) -> str:
    """Why the existing object ``live`` (as the API server answers a GET) may not be written for
    ``gateway``; empty when it is ours: it carries our managed label, and no controller other than a
    Gateway of that name owns it.  A controller reference to a Gateway of the same name but another uid
    is an earlier Gateway of that name, whose objects ours were: applying by the same field manager
    moves the reference over."""
    meta = live.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_LABEL) != MANAGED_VALUE:
        return f"no label {MANAGED_LABEL}={MANAGED_VALUE}"
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        group = str(ref.get("apiVersion") or "").split("/")[0]
        if (group, ref.get("kind"), ref.get("name")) != (GATEWAY_API_VERSION.split("/")[0], "Gateway", gateway.name):
            return f"controlled by {ref.get('kind')} {ref.get('name')}"
    return ""


def is_ours(live: dict[str, Any], gateway: Gateway) -> bool:
    """Whether the existing object ``live`` may be written for ``gateway`` (see ``foreign_reason``)."""
    return not foreign_reason(live, gateway)


def conflict_message(kind: str, namespace: str, name: str, why: str) -> str:
    """What the Gateway's ``Programmed`` condition says about an object that is not ours."""
    return (f"{kind} {namespace}/{name} already exists and is not managed by istiod-lite ({why}): nothing was "
            f"deployed for this Gateway; rename the Gateway or remove the {kind}")


def _labels(gateway: Gateway) -> dict[str, str]:
    return {GATEWAY_NAME_LABEL: gateway.name, GATEWAY_CLASS_LABEL: WAYPOINT_CLASS, MANAGED_LABEL: MANAGED_VALUE}


def _metadata(gateway: Gateway, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": gateway.name, "namespace": gateway.namespace, "labels": dict(labels)}
    if gateway.metadata.uid:  # a Gateway from a YAML directory has none: no owner to point at
        meta["ownerReferences"] = [owner_reference(gateway)]
    return meta


def _proxy_args(proxy: ProxyConfig | None) -> tuple[str, str, list[str]]:
    """MeshConfig ``defaultConfig`` fields the agent takes as flags: drain duration, termination
    drain duration, and ``--concurrency`` (0: Envoy's default, one worker per hardware thread)."""
    drain, termination, extra = DRAIN_DURATION, TERMINATION_DRAIN_DURATION, []
    if proxy is not None:
        if proxy.drain_duration is not None and proxy.drain_duration.nanos > 0:
            drain = str(proxy.drain_duration)
        if proxy.termination_drain_duration is not None:
            termination = str(proxy.termination_drain_duration)
        if proxy.concurrency is not None:
            extra = ["--concurrency", str(max(0, proxy.concurrency))]
    return drain, termination, extra


def waypoint_args(gateway: Gateway, *, istiod_address: str, trust_domain: str,
                  proxy: ProxyConfig | None = None) -> list[str]:
    """The agent's command line (``istiod-lite waypoint run ...``); one argv element per value.
    ``proxy``: MeshConfig ``defaultConfig`` (drainDuration, terminationDrainDuration, concurrency)."""
    istiod = f"{istiod_address}:{ISTIOD_SECURE_PORT}"
    drain, termination, extra = _proxy_args(proxy)
    return ["waypoint", "run",
            "--name", gateway.name, "--namespace", gateway.namespace, "--service-account", gateway.name,
            "--token-file", TOKEN_PATH, "--xds-address", istiod, "--ca-address", istiod,
            "--root-cert", ROOT_CERT_PATH, "--ip", "$(INSTANCE_IP)", "--trust-domain", trust_domain,
            "--admin-port", str(ENVOY_ADMIN_PORT), "--status-port", str(STATUS_PORT),
            "--prometheus-port", str(PROMETHEUS_PORT),
            "--drain-duration", drain, "--drain-strategy", DRAIN_STRATEGY,
            "--termination-drain-duration", termination, *extra]


def render_service_account(gateway: Gateway) -> dict[str, Any]:
    """The waypoint's identity (``spiffe://<td>/ns/<ns>/sa/<gateway name>``)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(gateway, _labels(gateway))}


def render_deployment(gateway: Gateway, *, image: str, istiod_address: str, trust_domain: str,
                      proxy: ProxyConfig | None = None) -> dict[str, Any]:
    """One ``istio-proxy`` container running the waypoint agent with a projected ``istio-ca`` token."""
    labels = _labels(gateway)
    pod_labels = {**labels, DATAPLANE_MODE_LABEL: "none", "sidecar.istio.io/inject": "false",
                  "service.istio.io/canonical-name": gateway.name,
                  "service.istio.io/canonical-revision": "latest"}
    container: dict[str, Any] = {
        "name": "istio-proxy",
        "image": image,
        "args": waypoint_args(gateway, istiod_address=istiod_address, trust_domain=trust_domain, proxy=proxy),
        "env": [
            {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
        ],
        "ports": [{"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
                  {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
                  {"name": "http-envoy-prom", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": READY_PATH, "port": STATUS_PORT},
                           "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 4},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": 1337, "runAsGroup": 1337,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "istiod-ca-cert", "mountPath": ROOT_CERT_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(gateway, labels),
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: gateway.name}},
            "template": {
                # Istio's scrape annotations for its waypoints.
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PROMETHEUS_PORT),
                    "prometheus.io/path": "/stats/prometheus"}},
                "spec": {
                    "serviceAccountName": gateway.name,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_PERIOD_SECONDS,
                    "containers": [container],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                            "path": "istio-token"}}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def render_service(gateway: Gateway) -> dict[str, Any]:
    """ClusterIP Service: ``mesh`` 15008 (HBONE) and ``status-port`` 15021, selecting the pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(gateway, _labels(gateway)),
        "spec": {
            "type": "ClusterIP",
            "selector": {GATEWAY_NAME_LABEL: gateway.name},
            "ports": [
                {"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT, "protocol": "TCP",
                 "appProtocol": "tcp"},
                {"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT, "protocol": "TCP",
                 "appProtocol": "all"},
            ],
        },
    }


def render_waypoint(gateway: Gateway, *, image: str, istiod_address: str, trust_domain: str,
                    proxy: ProxyConfig | None = None) -> list[dict[str, Any]]:
    """ServiceAccount, Deployment and Service for a waypoint Gateway (empty for any other class);
    ``proxy``: MeshConfig ``defaultConfig`` for the agent's flags."""
    if not is_waypoint(gateway):
        return []
    return [render_service_account(gateway),
            render_deployment(gateway, image=image, istiod_address=istiod_address, trust_domain=trust_domain,
                              proxy=proxy),
            render_service(gateway)]


def render_root_cert_configmap(namespace: str, root_cert_pem: str) -> dict[str, Any]:
    """ConfigMap ``istio-ca-root-cert`` (key ``root-cert.pem``), as istiod publishes in every namespace."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": namespace,
                         "labels": {"istio.io/config": "true"}},
            "data": {ROOT_CERT_KEY: root_cert_pem}}


def render_gateway_status(gateway: Gateway, cluster_ip: str, *, transition_time: str,
                          conflict: str = "") -> dict[str, Any]:
    """The status apply configuration: ``addresses`` = the Service's clusterIP once it has one;
    Accepted is True, Programmed is True once the address is known.  ``conflict`` (a
    ``conflict_message``) makes Programmed False with reason ``Invalid`` (Gateway API's reason for a
    Gateway that cannot be programmed as specified: its name is taken) and no address."""
    generation = gateway.metadata.generation
    programmed = bool(cluster_ip) and not conflict
    if conflict:
        reason, message = "Invalid", conflict
    elif programmed:
        reason, message = "Programmed", "Resource programmed, assigned to service(s)"
    else:
        reason, message = "Pending", "Waiting for the waypoint Service to get an address"
    conditions = [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Resource accepted",
         "observedGeneration": generation, "lastTransitionTime": transition_time},
        {"type": "Programmed", "status": "True" if programmed else "False", "reason": reason, "message": message,
         "observedGeneration": generation, "lastTransitionTime": transition_time},
    ]
    status: dict[str, Any] = {"conditions": conditions}
    if programmed:
        status["addresses"] = [{"type": "IPAddress", "value": cluster_ip}]
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway",
            "metadata": {"name": gateway.name, "namespace": gateway.namespace},
            "status": status}
