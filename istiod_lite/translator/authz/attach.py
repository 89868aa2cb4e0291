"""Which AuthorizationPolicies and RequestAuthentications apply to which waypoint chain.

Facts: docs/istio-waypoint-shape.md §5.1 (``policyattachment.go`` ``ShouldAttachPolicy``):

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
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.security import AuthorizationPolicy, PolicyTargetReference, RequestAuthentication
from istiod_lite.translator.core import tables

WAYPOINT_CLASS: Final = "istio-waypoint"
DEFAULT_ROOT_NAMESPACE: Final = "istio-system"
P = TypeVar("P", AuthorizationPolicy, RequestAuthentication)
_TARGET_KINDS: Final = {("core", "Service"): "Service", ("networking.istio.io", "ServiceEntry"): "ServiceEntry",
                        ("gateway.networking.k8s.io", "Gateway"): "Gateway",
                        ("gateway.networking.k8s.io", "GatewayClass"): "GatewayClass"}


@dataclass(frozen=True)
class AttachIndex(Generic[P]):
    """Policies of one kind by what they target: (target kind, namespace, name) -> policies in
    (namespace, name) order; ``untargeted`` holds the selector and namespace-wide ones."""

    targeted: Mapping[tuple[str, str, str], tuple[P, ...]]
    untargeted: tuple[P, ...]
    #: (waypoint namespace, name, root namespace) -> ``for_waypoint`` (filled lazily: every chain of
    #: a waypoint asks the same question).
    _per_waypoint: dict[tuple[str, str, str], tuple[P, ...]] = field(default_factory=dict, compare=False, repr=False)

    def get(self, kind: str, namespace: str, name: str) -> tuple[P, ...]:
        return self.targeted.get((kind, namespace, name), ())


def changed_targets(old: AttachIndex[P], new: AttachIndex[P]) -> frozenset[tuple[str, str, str]]:
    """The targets whose attached policies differ (by identity) between two indexes: a chain none of
    whose targets is in here attaches exactly the same policies as before."""
    out = set()
    for k in old.targeted.keys() | new.targeted.keys():
        a, b = old.targeted.get(k, ()), new.targeted.get(k, ())
        if len(a) != len(b) or any(x is not y for x, y in zip(a, b, strict=True)):
            out.add(k)
    return frozenset(out)


def chain_targets(kind: str, namespace: str, name: str, waypoint_namespace: str, waypoint_name: str,
                  root_namespace: str) -> tuple[tuple[str, str, str], ...]:
    """Every target key a chain's attachments are read from (``kind == ""``: a direct chain)."""
    own = ((kind, namespace, name),) if kind else ()
    return (*own, ("Gateway", waypoint_namespace, waypoint_name), ("GatewayClass", root_namespace, WAYPOINT_CLASS))


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
    return tables.AP_ATTACHMENTS.of(snapshot)


def ra_index(snapshot: ConfigSnapshot) -> AttachIndex[RequestAuthentication]:
    return tables.RA_ATTACHMENTS.of(snapshot)


@tables.AP_ATTACHMENTS.computed_by
def _ap_attachments(snapshot: ConfigSnapshot) -> AttachIndex[AuthorizationPolicy]:
    return _build(snapshot.of_kind(AuthorizationPolicy))


@tables.RA_ATTACHMENTS.computed_by
def _ra_attachments(snapshot: ConfigSnapshot) -> AttachIndex[RequestAuthentication]:
    return _build(snapshot.of_kind(RequestAuthentication))


def _ordered(a: tuple[P, ...], b: tuple[P, ...]) -> tuple[P, ...]:
    """``a`` then what ``b`` adds (a policy may target both the service and the waypoint).  Each
    group is in (namespace, name) order, so the result is deterministic; callers sort keys."""
    if not a:
        return b
    if not b:
        return a
    return a + tuple(p for p in b if not any(p is q for q in a))


def for_waypoint(index: AttachIndex[P], waypoint_namespace: str, waypoint_name: str,
                 root_namespace: str) -> tuple[P, ...]:
    """Gateway- and GatewayClass-targeted policies: what the ``direct-*`` chains get."""
    key = (waypoint_namespace, waypoint_name, root_namespace)
    hit = index._per_waypoint.get(key)
    if hit is None:
        hit = index._per_waypoint[key] = _ordered(index.get("Gateway", waypoint_namespace, waypoint_name),
                                                  index.get("GatewayClass", root_namespace, WAYPOINT_CLASS))
    return hit


def for_service(index: AttachIndex[P], kind: str, namespace: str, name: str, waypoint_namespace: str,
                waypoint_name: str, root_namespace: str) -> tuple[P, ...]:
    """What one service's chains get: its own (``kind`` Service or ServiceEntry) plus the waypoint's."""
    return _ordered(index.get(kind, namespace, name), for_waypoint(index, waypoint_namespace, waypoint_name,
                                                                   root_namespace))
