"""AuthorizationPolicy and PeerAuthentication as ztunnel's L4 ``istio.security.Authorization``.

Follows istiod's conversion for ambient:

* Only policies without ``targetRefs`` (those are for waypoints).  Scope: a selector makes it
  ``WORKLOAD_SELECTOR`` (workloads list it by name), else ``NAMESPACE``, or ``GLOBAL`` in the root
  namespace.  ALLOW and DENY only: CUSTOM and AUDIT are not served; a dry-run policy is not served
  either (istiod serves them only behind a feature flag that is off by default).
* Only L4 attributes are kept.  A rule with an HTTP attribute is accepted with a warning: under
  ALLOW the whole rule is dropped (it can never match, so the policy is stricter than asked); under
  DENY its L4 parts are kept and the HTTP parts left out (stricter too).
* PeerAuthentication: if any exists, the static STRICT policy ``<root>/istio_converted_static_strict``
  (DENY whoever has no mTLS identity) is served and every workload whose effective mode is STRICT
  lists it; a workload policy with port-level exceptions becomes its own DENY policy
  ``<ns>/converted_peer_authentication_<name>`` with the exceptions folded in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import empty_pb2

from istiod_lite._generated.istio.security import authorization_pb2 as pb
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.security import DRY_RUN_ANNOTATION, AuthorizationPolicy, PeerAuthentication, Rule
from istiod_lite.translator.ztunnel.names import CONVERTED_PEER_AUTHN_PREFIX, STATIC_STRICT, namespaced

#: ``when`` keys ztunnel can evaluate; any other is an HTTP attribute.
L4_WHEN_KEYS = frozenset({"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"})

_HTTP_RULE = ("ztunnel does not support HTTP attributes (found: {found}). In ambient mode you must use a "
              "waypoint proxy to enforce HTTP rules. {tail}")
_DENY_NO_EFFECT = ("After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at "
                   "ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce "
                   "this policy.")
_DENY_MIXED = "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive " \
              "than requested."
_ALLOW_DROPPED = "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more " \
                 "restrictive than requested."


@dataclass(frozen=True)
class SelectorPolicy:
    """A served policy that workloads list by name: its namespace, selector and resource name."""

    namespace: str
    match_labels: Mapping[str, str]
    name: str

    def selects(self, namespace: str, labels: Mapping[str, str], root_namespace: str) -> bool:
        if self.namespace not in (namespace, root_namespace):
            return False
        return all(labels.get(k) == v for k, v in self.match_labels.items())


@dataclass
class Authorizations:
    """Every Authorization served, by resource name, and what workloads need to list theirs."""

    policies: dict[str, pb.Authorization] = field(default_factory=dict)
    #: Converted AuthorizationPolicies with a selector (listed by the workloads they select).
    selector_policies: list[SelectorPolicy] = field(default_factory=list)
    #: PeerAuthentications by namespace (those a workload may inherit or be selected by).
    peer_authns: dict[str, list[PeerAuthentication]] = field(default_factory=dict)
    #: Accepted-with-warning and not-served reasons, as ``Kind ns/name: message``.
    warnings: list[str] = field(default_factory=list)


# --- L4 matches ----------------------------------------------------------------------------------


def _string_matches(values: Iterable[str]) -> list[pb.StringMatch]:
    out = []
    for v in values:
        if v == "*":
            out.append(pb.StringMatch(presence=empty_pb2.Empty()))
        elif v.startswith("*"):
            out.append(pb.StringMatch(suffix=v[1:]))
        elif v.endswith("*"):
            out.append(pb.StringMatch(prefix=v[:-1]))
        else:
            out.append(pb.StringMatch(exact=v))
    return out


def _ports(values: Iterable[str]) -> list[int]:
    return [int(v) for v in values if v.isdigit() and int(v) <= 65535]


def _addresses(values: Iterable[str]) -> list[pb.Address]:
    out = []
    for v in values:
        try:
            if "/" in v:
                net = ipaddress.ip_network(v, strict=False)
                # istiod keeps the address as written (not masked) with the prefix length.
                addr = ipaddress.ip_address(v.split("/", 1)[0])
                out.append(pb.Address(address=addr.packed, length=net.prefixlen))
            else:
                addr = ipaddress.ip_address(v)
                out.append(pb.Address(address=addr.packed, length=addr.max_prefixlen))
        except ValueError:
            continue
    return out


def _service_accounts(values: Iterable[str], namespace: str) -> list[pb.ServiceAccountMatch]:
    out = []
    for v in values:
        ns, sep, sa = v.partition("/")
        out.append(pb.ServiceAccountMatch(namespace=ns, serviceAccount=sa) if sep
                   else pb.ServiceAccountMatch(namespace=namespace, serviceAccount=v))
    return out


def _convert_rule(action: int, rule: Rule, namespace: str) -> tuple[list[pb.Rules] | None, set[str]]:
    """A rule's L4 clauses, and the HTTP attributes it uses.  None: the rule is dropped."""
    http: set[str] = set()
    to_matches = []
    for to in rule.to:
        op = to.operation
        if op is None:
            to_matches.append(pb.Match())
            continue
        http.update(n for n, v in (("hosts", op.hosts), ("notHosts", op.not_hosts), ("methods", op.methods),
                                   ("notMethods", op.not_methods), ("paths", op.paths),
                                   ("notPaths", op.not_paths)) if v)
        to_matches.append(pb.Match(destination_ports=_ports(op.ports), not_destination_ports=_ports(op.not_ports)))
    from_matches = []
    for fr in rule.from_:
        s = fr.source
        if s is None:
            from_matches.append(pb.Match())
            continue
        http.update(n for n, v in (("remoteIpBlocks", s.remote_ip_blocks),
                                   ("notRemoteIpBlocks", s.not_remote_ip_blocks),
                                   ("requestPrincipals", s.request_principals),
                                   ("notRequestPrincipals", s.not_request_principals)) if v)
        from_matches.append(pb.Match(
            source_ips=_addresses(s.ip_blocks), not_source_ips=_addresses(s.not_ip_blocks),
            namespaces=_string_matches(s.namespaces), not_namespaces=_string_matches(s.not_namespaces),
            service_accounts=_service_accounts(s.service_accounts, namespace),
            not_service_accounts=_service_accounts(s.not_service_accounts, namespace),
            principals=_string_matches(s.principals), not_principals=_string_matches(s.not_principals)))
    rules: list[pb.Rules] = []
    if to_matches:
        rules.append(pb.Rules(matches=to_matches))
    if from_matches:
        rules.append(pb.Rules(matches=from_matches))
    for when in rule.when:
        key = when.key
        if key not in L4_WHEN_KEYS:
            http.add(key)
        m = pb.Match()
        for values, negate in ((when.values, False), (when.not_values, True)):
            if key == "source.namespace":
                (m.not_namespaces if negate else m.namespaces).extend(_string_matches(values))
            elif key == "source.principal":
                (m.not_principals if negate else m.principals).extend(_string_matches(values))
            elif key == "source.ip":
                (m.not_source_ips if negate else m.source_ips).extend(_addresses(values))
            elif key == "destination.port":
                (m.not_destination_ports if negate else m.destination_ports).extend(_ports(values))
            elif key == "destination.ip":
                (m.not_destination_ips if negate else m.destination_ips).extend(_addresses(values))
        rules.append(pb.Rules(matches=[m]))
    if action == pb.ALLOW and http:
        return None, http  # an ALLOW rule that needs HTTP attributes never matches at L4
    return rules, http


def _has_effective_rules(groups: Sequence[pb.Group]) -> bool:
    """Whether any group can match at ztunnel (a clause of only empty matches matches nothing)."""
    empty = pb.Match()
    for g in groups:
        if not g.rules:
            return True
        if all(any(m != empty for m in clause.matches) for clause in g.rules):
            return True
    return False


def convert_authorization_policy(root_namespace: str, policy: AuthorizationPolicy
                                 ) -> tuple[pb.Authorization | None, str | None]:
    """The policy as ztunnel sees it (None: not served) and a warning (None: none)."""
    spec = policy.spec
    if spec.target_refs or spec.target_ref is not None:
        return None, None  # for waypoints, not ztunnel
    if policy.metadata.annotations.get(DRY_RUN_ANNOTATION, "").lower() in ("true", "1", "t"):
        return None, "uses the dry-run annotation; dry-run policies are not served to ztunnel"
    if spec.action not in ("ALLOW", "DENY"):
        return None, f"ztunnel does not support the {spec.action} action"
    if spec.selector is not None and spec.selector.match_labels:
        scope = pb.WORKLOAD_SELECTOR
    elif spec.selector is not None:
        scope = pb.WORKLOAD_SELECTOR  # an empty selector is still a selector (istiod: non-nil)
    else:
        scope = pb.GLOBAL if policy.namespace == root_namespace else pb.NAMESPACE
    action = pb.ALLOW if spec.action == "ALLOW" else pb.DENY
    out = pb.Authorization(name=policy.name, namespace=policy.namespace, scope=scope, action=action)
    http: set[str] = set()
    for rule in spec.rules:
        rules, found = _convert_rule(action, rule, policy.namespace)
        http |= found
        if rules is not None:
            out.groups.add().rules.extend(rules)
    if not http:
        return out, None
    if action == pb.DENY:
        tail = _DENY_MIXED if _has_effective_rules(out.groups) else _DENY_NO_EFFECT
    else:
        tail = _ALLOW_DROPPED
    return out, _HTTP_RULE.format(found=", ".join(sorted(http)), tail=tail)


#: istiod's reasons on the ``ZtunnelAccepted`` condition (pilot/pkg/serviceregistry/ambient).
ACCEPTED_REASON = "Accepted"
UNSUPPORTED_REASON = "UnsupportedValue"


@dataclass(frozen=True)
class ZtunnelVerdict:
    """What ztunnel makes of one AuthorizationPolicy, for its ``ZtunnelAccepted`` condition.

    ``served`` is the condition's status (a policy accepted with a warning is served, True, with
    reason ``UnsupportedValue``); derived from ``convert_authorization_policy`` so the status and
    what is served cannot disagree.
    """

    served: bool
    reason: str
    message: str


def ztunnel_verdict(root_namespace: str, policy: AuthorizationPolicy) -> ZtunnelVerdict | None:
    """None for a policy that is not ztunnel's (it has ``targetRefs``: a waypoint's)."""
    converted, warning = convert_authorization_policy(root_namespace, policy)
    if converted is None and warning is None:
        return None
    if warning is None:
        return ZtunnelVerdict(True, ACCEPTED_REASON, "attached to ztunnel")
    return ZtunnelVerdict(converted is not None, UNSUPPORTED_REASON, warning)


# --- PeerAuthentication ---------------------------------------------------------------------------


def _deny_without_identity(port: int | None = None) -> pb.Match:
    m = pb.Match(not_principals=[pb.StringMatch(presence=empty_pb2.Empty())])
    if port is not None:
        m.destination_ports.append(port)
    return m


def static_strict_policy(root_namespace: str) -> pb.Authorization:
    """DENY every connection without an mTLS identity; listed by workloads whose mode is STRICT."""
    return pb.Authorization(name=STATIC_STRICT, namespace=root_namespace, scope=pb.WORKLOAD_SELECTOR,
                            action=pb.DENY, groups=[pb.Group(rules=[pb.Rules(matches=[_deny_without_identity()])])])


def _oldest(policies: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
    return min(policies, key=lambda p: (p.metadata.creation_timestamp, p.name), default=None)


def _mode(pa: PeerAuthentication | None) -> str:
    return pa.spec.mode if pa is not None else "UNSET"


def _has_selector(pa: PeerAuthentication) -> bool:
    return pa.spec.selector is not None and bool(pa.spec.selector.match_labels)


def convert_peer_authentication(root_namespace: str, pa: PeerAuthentication, ns_pa: PeerAuthentication | None,
                                root_pa: PeerAuthentication | None) -> pb.Authorization | None:
    """A workload PeerAuthentication with port-level modes as a DENY policy (None: nothing to serve,
    the static STRICT policy or no policy covers it)."""
    port_modes = pa.spec.port_level_mtls or {}
    if pa.namespace == root_namespace or not _has_selector(pa) or not port_modes:
        return None
    mode = pa.spec.mode
    ns_mode, root_mode = _mode(ns_pa), _mode(root_pa)
    rules: list[pb.Rules] = []
    groups: list[pb.Group] = []
    if mode == "STRICT":
        rules.append(pb.Rules(matches=[_deny_without_identity()]))
    found_non_strict = False
    for port in sorted(port_modes):
        port_mode = port_modes[port].mode
        if port_mode == "STRICT":
            parent_strict = mode == "STRICT" or (mode == "UNSET" and (
                (ns_pa is not None and ns_mode == "STRICT")
                or ((ns_pa is None or ns_mode == "UNSET") and root_pa is not None and root_mode == "STRICT")))
            if parent_strict:
                continue
            groups.append(pb.Group(rules=[pb.Rules(matches=[_deny_without_identity(port)])]))
        elif port_mode in ("PERMISSIVE", "DISABLE"):
            if mode in ("PERMISSIVE", "DISABLE"):
                continue
            if mode == "UNSET" and ((ns_pa is not None and ns_mode != "STRICT")
                                    or (ns_pa is None and root_pa is not None and root_mode != "STRICT")
                                    or (ns_pa is None and root_pa is None)):
                continue
            found_non_strict = True
            rules.append(pb.Rules(matches=[pb.Match(not_destination_ports=[port])]))
    if mode == "STRICT" and not found_non_strict:
        return None
    if not rules and not groups:
        return None
    merge_strict = (root_pa is not None and root_mode == "STRICT"
                    and (ns_pa is None or ns_mode in ("UNSET", "STRICT"))) \
        or (ns_pa is not None and ns_mode == "STRICT")
    if merge_strict and found_non_strict:
        rules.append(pb.Rules(matches=[_deny_without_identity()]))
    if rules:
        groups.append(pb.Group(rules=rules))
    return pb.Authorization(name=CONVERTED_PEER_AUTHN_PREFIX + pa.name, namespace=pa.namespace,
                            scope=pb.WORKLOAD_SELECTOR, action=pb.DENY, groups=groups)


def peer_authn_policy_names(root_namespace: str, applicable: Sequence[PeerAuthentication]) -> list[str]:
    """The PeerAuthentication-derived policies a workload lists, given the policies that apply to it
    (its namespace's, selecting or not, and the root namespace's without a selector)."""
    mesh = _oldest(p for p in applicable if not _has_selector(p) and p.namespace == root_namespace)
    ns = _oldest(p for p in applicable if not _has_selector(p) and p.namespace != root_namespace)
    wl = _oldest(p for p in applicable if _has_selector(p) and p.namespace != root_namespace)
    strict = mesh is not None and mesh.spec.mode == "STRICT"
    if ns is not None and ns.spec.mode != "UNSET":
        strict = ns.spec.mode == "STRICT"
    port_key = ""
    if wl is not None:
        wmode = wl.spec.mode
        if wmode == "STRICT":
            strict = True
        if wmode in ("PERMISSIVE", "DISABLE"):
            strict = False
        ports = [m.mode for m in (wl.spec.port_level_mtls or {}).values()]
        own_key = namespaced(wl.namespace, CONVERTED_PEER_AUTHN_PREFIX + wl.name)
        if ports:
            if wmode == "STRICT":
                if any(m in ("PERMISSIVE", "DISABLE") for m in ports):
                    port_key, strict = own_key, False
            elif wmode in ("PERMISSIVE", "DISABLE"):
                if "STRICT" in ports:
                    port_key = own_key
            elif strict:
                if "PERMISSIVE" in ports:
                    port_key, strict = own_key, False
            else:
                if "STRICT" in ports:
                    port_key = own_key
    out = []
    if strict:
        out.append(namespaced(root_namespace, STATIC_STRICT))
    if port_key:
        out.append(port_key)
    return sorted(out)


# --- the whole set ----------------------------------------------------------------------------------


def build_authorizations(snapshot: ConfigSnapshot, root_namespace: str) -> Authorizations:
    out = Authorizations()
    for policy in snapshot.of_kind(AuthorizationPolicy):
        converted, warning = convert_authorization_policy(root_namespace, policy)
        if warning is not None:
            out.warnings.append(f"AuthorizationPolicy {policy.namespace}/{policy.name}: {warning}")
        if converted is None:
            continue
        name = namespaced(policy.namespace, policy.name)
        out.policies[name] = converted
        if converted.scope == pb.WORKLOAD_SELECTOR and policy.spec.selector is not None \
                and policy.spec.selector.match_labels:
            labels = dict(policy.spec.selector.match_labels)
            out.selector_policies.append(SelectorPolicy(policy.namespace, labels, name))
    peer_authns = snapshot.of_kind(PeerAuthentication)
    for pa in peer_authns:
        out.peer_authns.setdefault(pa.namespace, []).append(pa)
    if peer_authns:
        out.policies[namespaced(root_namespace, STATIC_STRICT)] = static_strict_policy(root_namespace)
    root_pa = _oldest(p for p in out.peer_authns.get(root_namespace, ()) if p.spec.selector is None)
    for pa in peer_authns:
        ns_pa = _oldest(p for p in out.peer_authns.get(pa.namespace, ()) if p.spec.selector is None)
        converted_pa = convert_peer_authentication(root_namespace, pa, ns_pa, root_pa)
        if converted_pa is not None:
            out.policies[namespaced(pa.namespace, converted_pa.name)] = converted_pa
    out.policies = dict(sorted(out.policies.items()))
    return out


def workload_policy_names(auth: Authorizations, root_namespace: str, namespace: str,
                          labels: Mapping[str, str]) -> tuple[str, ...]:
    """The ``authorization_policies`` of a workload: selecting policies (sorted), then PeerAuthentication's."""
    names = sorted(p.name for p in auth.selector_policies if p.selects(namespace, labels, root_namespace))
    applicable = [p for p in auth.peer_authns.get(namespace, ())
                  if p.spec.selector is None
                  or all(labels.get(k) == v for k, v in p.spec.selector.match_labels.items())]
    if namespace != root_namespace:
        applicable += [p for p in auth.peer_authns.get(root_namespace, ()) if p.spec.selector is None]
    return (*names, *peer_authn_policy_names(root_namespace, applicable))
