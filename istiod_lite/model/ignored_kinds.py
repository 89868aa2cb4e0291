"""Kinds a real installation's manifests carry that have no meaning for a waypoint control plane.

A directory of real manifests (Istio's own samples, a Helm chart's output) holds Deployments,
ConfigMaps, ingress ``networking.istio.io`` Gateways, Sidecars and the like next to the policies
istiod-lite serves.  Refusing them as "unsupported kind" would make every such directory fail
``validate``; dropping them without a word would hide, say, an EnvoyFilter the operator expects to
take effect.  So each is recognised here by API group and kind, and reported as *ignored* (a
notice with kind, namespace/name and the reason), never as an error and never silently.

Only kinds listed here are ignored: an unknown group or kind is still an error, so a typo in
``kind:`` is caught.  A kind that is registered as a model (``registry.register``) always wins, so
a kind moved from this table into the model needs no change here beyond removing its line.
"""

from __future__ import annotations

from typing import Final

_K8S_WORKLOADS = "a Kubernetes workload controller; waypoints read the Pods it creates, not it"
_K8S_UNUSED = "not read by istiod-lite"
_SIDECAR_ONLY = "configures sidecar proxies; a waypoint has no sidecar"
_INGRESS_ONLY = ("an Istio ingress/egress Gateway (networking.istio.io); waypoints are "
                 "gateway.networking.k8s.io Gateways of class istio-waypoint")
_UNSUPPORTED = "not supported by istiod-lite (upstream Envoy, no Istio extensions)"

#: (API group, kind) -> why a waypoint control plane ignores it.  "" is the core group.
IGNORED_KINDS: Final[dict[tuple[str, str], str]] = {
    ("apps", "Deployment"): _K8S_WORKLOADS,
    ("apps", "StatefulSet"): _K8S_WORKLOADS,
    ("apps", "DaemonSet"): _K8S_WORKLOADS,
    ("apps", "ReplicaSet"): _K8S_WORKLOADS,
    ("batch", "Job"): _K8S_WORKLOADS,
    ("batch", "CronJob"): _K8S_WORKLOADS,
    ("", "ReplicationController"): _K8S_WORKLOADS,
    ("", "ConfigMap"): _K8S_UNUSED,
    ("", "Secret"): "not read by istiod-lite (DestinationRule credentialName secrets are not served)",
    ("", "PersistentVolumeClaim"): _K8S_UNUSED,
    ("", "Endpoints"): "not read by istiod-lite (EndpointSlices and Pods are)",
    ("policy", "PodDisruptionBudget"): _K8S_UNUSED,
    ("autoscaling", "HorizontalPodAutoscaler"): _K8S_UNUSED,
    ("networking.k8s.io", "NetworkPolicy"): _K8S_UNUSED,
    ("networking.k8s.io", "Ingress"): "Kubernetes Ingress is served by ingress gateways, not waypoints",
    ("rbac.authorization.k8s.io", "Role"): _K8S_UNUSED,
    ("rbac.authorization.k8s.io", "RoleBinding"): _K8S_UNUSED,
    ("rbac.authorization.k8s.io", "ClusterRole"): _K8S_UNUSED,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): _K8S_UNUSED,
    ("networking.istio.io", "Gateway"): _INGRESS_ONLY,
    ("networking.istio.io", "Sidecar"): _SIDECAR_ONLY,
    ("networking.istio.io", "WorkloadGroup"): "templates WorkloadEntries for VM auto-registration, which "
                                              "istiod-lite does not do (WorkloadEntries are read)",
    ("networking.istio.io", "ProxyConfig"): _UNSUPPORTED,
    ("networking.istio.io", "EnvoyFilter"): _UNSUPPORTED,
    ("extensions.istio.io", "WasmPlugin"): _UNSUPPORTED,
    ("extensions.istio.io", "TrafficExtension"): _UNSUPPORTED,
    ("gateway.networking.k8s.io", "ReferenceGrant"): "not evaluated: istiod-lite's mesh routes do not "
                                                     "check cross-namespace grants (docs/istio-compat.md)",
    ("gateway.networking.k8s.io", "BackendTLSPolicy"): _UNSUPPORTED + "; use a DestinationRule's tls",
    ("gateway.networking.k8s.io", "ListenerSet"): "attaches listeners to ingress Gateways, not waypoints",
    ("gateway.networking.k8s.io", "UDPRoute"): "not implemented by Istio (waypoints carry no UDP)",
}


#: Ignored kinds that are not namespaced (every other one defaults to ``default``, as on apply).
CLUSTER_SCOPED: Final = frozenset({"ClusterRole", "ClusterRoleBinding"})


def ignored_reason(api_version: str, kind: str) -> str | None:
    """Why ``apiVersion``/``kind`` is ignored, or None when it is not an ignored kind (any version
    of the group counts: these kinds are never parsed, so their version does not matter)."""
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    return IGNORED_KINDS.get((group, kind))


__all__ = ["CLUSTER_SCOPED", "IGNORED_KINDS", "ignored_reason"]
