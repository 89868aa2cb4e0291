"""Which AuthorizationPolicies and RequestAuthentications apply to which waypoint chain.

Facts: shared/reference/istio-waypoint.md §5.1 (``policyattachment.go`` ``ShouldAttachPolicy``):

* ``targetRefs`` kind ``Service`` (core group) attaches to that service's chains, kind
  ``ServiceEntry`` (networking.istio.io) to that ServiceEntry's; the policy's namespace is the
  service's (cross-namespace references are rejected at load time);
* kind ``Gateway`` (gateway.networking.k8s.io) attaches to every chain of the waypoint of that
  name, the policy being in the waypoint's namespace;
* kind ``GatewayClass`` named ``istio-waypoint`` attaches to every waypoint, but only from the root
  namespace;
* the deprecated single ``targetRef`` is a one-element ``targetRefs``;
* ``selector`` and namespace-wide policies never attach to waypoints (ztunnel enforces their L4
  part): they are reported, so nobody expects a waypoint to enforce them.

Per-service chains get Service/ServiceEntry- plus Gateway/GatewayClass-targeted policies;
``direct-*`` chains only the latter.  The index is built once per distinct map of each kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.security import AuthorizationPolicy, PolicyTargetReference, RequestAuthentication
from istiod_lite.translator.index import derived_from_kinds

WAYPOINT_CLASS: Final = "istio-waypoint"
DEFAULT_ROOT_NAMESPACE: Final = "istio-system"
P = TypeVar("P", AuthorizationPolicy, RequestAuthentication)
_Key = tuple[str, str]
_TARGET_KINDS: Final = {("core", "Service"): "Service", ("networking.istio.io", "ServiceEntry"): "ServiceEntry",
                        ("gateway.networking.k8s.io", "Gateway"): "Gateway",
                        ("gateway.networking.k8s.io", "GatewayClass"): "GatewayClass"}


@dataclass(frozen=True)
class AttachIndex(Generic[P]):
    """Policies of one kind by what they target: (target kind, namespace, name) -> policies in
    (namespace, name) order; ``untargeted`` holds the selector and namespace-wide ones."""

    targeted: Mapping[tuple[str, str, str], tuple[P, ...]]
    untargeted: tuple[P, ...]

    def get(self, kind: str, namespace: str, name: str) -> tuple[P, ...]:
        return self.targeted.get((kind, namespace, name), ())


def target_kind(ref: PolicyTargetReference) -> str:
    return _TARGET_KINDS.get((ref.canonical_group, ref.kind), ref.kind)


def _build(policies: list[P]) -> AttachIndex[P]:
    targeted: dict[tuple[str, str, str], list[P]] = {}
    untargeted: list[P] = []
    for pol in policies:
        refs = pol.spec.targets
        if not refs:
            untargeted.append(pol)
            continue
        for ref in refs:
            lst = targeted.setdefault((target_kind(ref), pol.namespace, ref.name), [])
            if not lst or lst[-1] is not pol:  # the same target listed twice
                lst.append(pol)
    return AttachIndex({k: tuple(v) for k, v in targeted.items()}, tuple(untargeted))


def ap_index(snapshot: ConfigSnapshot) -> AttachIndex[AuthorizationPolicy]:
    return derived_from_kinds(snapshot, "authz-ap-attach", ("AuthorizationPolicy",),
                              lambda s: _build(s.of_kind(AuthorizationPolicy)))


def ra_index(snapshot: ConfigSnapshot) -> AttachIndex[RequestAuthentication]:
    return derived_from_kinds(snapshot, "authz-ra-attach", ("RequestAuthentication",),
                              lambda s: _build(s.of_kind(RequestAuthentication)))


def _ordered(*groups: tuple[P, ...]) -> tuple[P, ...]:
    seen: dict[_Key, P] = {}
    for group in groups:
        for pol in group:
            seen.setdefault((pol.namespace, pol.name), pol)
    return tuple(seen[k] for k in sorted(seen))


def for_waypoint(index: AttachIndex[P], waypoint_namespace: str, waypoint_name: str,
                 root_namespace: str) -> tuple[P, ...]:
    """Gateway- and GatewayClass-targeted policies: what the ``direct-*`` chains get."""
    return _ordered(index.get("Gateway", waypoint_namespace, waypoint_name),
                    index.get("GatewayClass", root_namespace, WAYPOINT_CLASS))


def for_service(index: AttachIndex[P], kind: str, namespace: str, name: str, waypoint_namespace: str,
                waypoint_name: str, root_namespace: str) -> tuple[P, ...]:
    """What one service's chains get: its own (``kind`` Service or ServiceEntry) plus the waypoint's."""
    return _ordered(index.get(kind, namespace, name), for_waypoint(index, waypoint_namespace, waypoint_name,
                                                                   root_namespace))
