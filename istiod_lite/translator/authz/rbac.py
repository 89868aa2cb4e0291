"""AuthorizationPolicies -> Envoy RBAC filters (Istio's ``authz/builder/builder.go``).

Facts: docs/istio-waypoint-shape.md §5.2.

* One filter per action present, in the order AUDIT (RBAC action ``LOG``), DENY, ALLOW:
  ``envoy.filters.http.rbac`` on HTTP chains, ``envoy.filters.network.rbac`` with
  ``stat_prefix: "tcp."`` on TCP chains.
* Policy keys ``ns[<ns>]-policy[<name>]-rule[<i>]``; a policy without rules contributes
  ``...-rule[0]`` matching nothing (an ALLOW policy without rules denies everything).
* ``istio.io/dry-run: "true"`` policies go to ``shadow_rules``; ``rules`` is left out when every
  policy of the action is dry-run.  ``shadow_rules_stat_prefix`` is ``istio_dry_run_deny_`` for DENY
  shadow rules and ``istio_dry_run_allow_`` otherwise - also when there are no shadow rules at all,
  because Istio computes it from a nil message (kept for byte-compatibility; it is harmless).

Compiling a policy is the expensive part and depends on the policy object alone, so it is done
once per object (``compile_policy`` is memoised by identity); assembling a service's filters from
compiled policies is a few proto copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

from istiod_lite.model.security import AuthorizationPolicy
from istiod_lite.translator.authz.matchers import Limits
from istiod_lite.translator.authz.rules import Action, Policy, compile_rule, match_never
from istiod_lite.translator.core import tables
from istiod_lite.translator.core.protos import packed

HttpFilter: TypeAlias = hcm_pb2.HttpFilter
NetworkFilter: TypeAlias = listener_components_pb2.Filter

HTTP_RBAC: Final = "envoy.filters.http.rbac"
NETWORK_RBAC: Final = "envoy.filters.network.rbac"
TCP_STAT_PREFIX: Final = "tcp."
DRY_RUN_ALLOW_PREFIX: Final = "istio_dry_run_allow_"
DRY_RUN_DENY_PREFIX: Final = "istio_dry_run_deny_"
EXT_AUTHZ_PREFIX: Final = "istio-ext-authz"
BAD_CUSTOM_SUFFIX: Final = "-deny-due-to-bad-CUSTOM-action"
_RBAC_ACTION: Final = {"ALLOW": rbac_pb2.RBAC.ALLOW, "DENY": rbac_pb2.RBAC.DENY, "AUDIT": rbac_pb2.RBAC.LOG,
                       "CUSTOM": rbac_pb2.RBAC.DENY}


def policy_key(namespace: str, name: str, rule: int, provider: str | None = None) -> str:
    """Istio's ``policyName``: CUSTOM keys carry ``istio-ext-authz-<provider>-`` in front."""
    prefix = f"{EXT_AUTHZ_PREFIX}-{provider}-" if provider is not None else ""
    return f"{prefix}ns[{namespace}]-policy[{name}]-rule[{rule}]"


@dataclass(frozen=True, eq=False)
class CompiledPolicy:
    """One AuthorizationPolicy as RBAC policies for HTTP and for TCP chains, with what went wrong."""

    source: AuthorizationPolicy
    action: Action
    #: The CUSTOM provider's name ("" for the other actions).
    provider: str
    dry_run: bool
    http: tuple[tuple[str, Policy], ...]
    tcp: tuple[tuple[str, Policy], ...]
    #: Parts that could not be translated (service-independent): each made its rule fail closed.
    problems: tuple[str, ...]
    #: How HTTP-only attributes were handled on TCP chains (informational).
    tcp_notes: tuple[str, ...]


def _what(ap: AuthorizationPolicy) -> str:
    return f"AuthorizationPolicy {ap.namespace}/{ap.name}"


def _compile(ap: AuthorizationPolicy, limits: Limits, bundle: tuple[str, ...]) -> CompiledPolicy:
    action: Action = ap.spec.action
    provider = ap.spec.provider.name if action == "CUSTOM" and ap.spec.provider is not None else ""
    key_provider = provider if action == "CUSTOM" else None
    problems: list[str] = []
    notes: list[str] = []
    outputs: dict[bool, list[tuple[str, Policy]]] = {False: [], True: []}
    for for_tcp in (False, True):
        for i, rule in enumerate(ap.spec.rules):
            res = compile_rule(rule, i, ap.namespace, action, for_tcp, limits, bundle)
            if res.policy is not None:
                outputs[for_tcp].append((policy_key(ap.namespace, ap.name, i, key_provider), res.policy))
            if not for_tcp:
                outcome = "matches nothing" if action == "ALLOW" else "matches every request"
                for loc in dict.fromkeys(f"{loc}: {reason}" for loc, reason in res.failures):
                    problems.append(f"{_what(ap)}: {loc}; spec.rules[{i}] fails closed ({outcome})")
                if res.policy is not None:
                    for loc in dict.fromkeys(f"{loc}: {reason}" for loc, reason in res.narrow):
                        problems.append(f"{_what(ap)}: {loc}; the value matches only as written")
            elif res.http_only:
                attrs = ", ".join(res.http_only)
                if action == "ALLOW":
                    notes.append(f"{_what(ap)}: spec.rules[{i}] uses HTTP-only attributes ({attrs}): "
                                 "dropped on TCP chains")
                else:
                    notes.append(f"{_what(ap)}: spec.rules[{i}]: HTTP-only attributes ({attrs}) are "
                                 "ignored on TCP chains (the rule applies without them)")
        if not ap.spec.rules:
            outputs[for_tcp].append((policy_key(ap.namespace, ap.name, 0, key_provider), match_never()))
    return CompiledPolicy(source=ap, action=action, provider=provider, dry_run=ap.dry_run,
                          http=tuple(outputs[False]), tcp=tuple(outputs[True]),
                          problems=tuple(problems), tcp_notes=tuple(notes))


@tables.COMPILED_POLICIES.computed_by
def _no_compilations(ap: AuthorizationPolicy) -> dict[tuple[Limits, tuple[str, ...]], CompiledPolicy]:
    return {}


def compile_policy(ap: AuthorizationPolicy, limits: Limits, bundle: tuple[str, ...] = ()) -> CompiledPolicy:
    """``ap`` compiled, once per policy object, limits and trust-domain bundle (the mesh's trust
    domain and aliases, ``trustdomain.bundle_of``), kept while the object lives (snapshots keep an
    unchanged resource's object)."""
    by_limits = tables.COMPILED_POLICIES.of(ap)
    out = by_limits.get((limits, bundle))
    if out is None:
        out = by_limits.setdefault((limits, bundle), _compile(ap, limits, bundle))
    return out


# --- filters -------------------------------------------------------------------------------------


def _rbac(action: Action, entries: Sequence[tuple[str, Policy]]) -> rbac_pb2.RBAC:
    out = rbac_pb2.RBAC(action=_RBAC_ACTION[action])
    for key, pol in entries:
        out.policies[key].CopyFrom(pol)
    return out


@dataclass(frozen=True)
class RuleSets:
    """Enforced and dry-run rules of one action (None when that kind is absent)."""

    rules: rbac_pb2.RBAC | None
    shadow: rbac_pb2.RBAC | None

    @property
    def shadow_stat_prefix(self) -> str:
        # Istio: shadowRuleStatPrefix(nil).GetAction() is ALLOW -> the allow prefix.
        if self.shadow is not None and self.shadow.action == rbac_pb2.RBAC.DENY:
            return DRY_RUN_DENY_PREFIX
        if self.shadow is not None and self.shadow.action == rbac_pb2.RBAC.LOG:
            return ""
        return DRY_RUN_ALLOW_PREFIX


def _first(entry: tuple[str, Policy]) -> str:
    return entry[0]


def rule_sets(action: Action, policies: Sequence[CompiledPolicy], for_tcp: bool) -> RuleSets:
    enforced = [e for cp in policies if not cp.dry_run for e in (cp.tcp if for_tcp else cp.http)]
    dry = [e for cp in policies if cp.dry_run for e in (cp.tcp if for_tcp else cp.http)]
    has_enforced = any(not cp.dry_run for cp in policies)
    has_dry = any(cp.dry_run for cp in policies)
    return RuleSets(rules=_rbac(action, sorted(enforced, key=_first)) if has_enforced else None,
                    shadow=_rbac(action, sorted(dry, key=_first)) if has_dry else None)


def http_rbac_filter(sets: RuleSets) -> HttpFilter:
    cfg = http_rbac_pb2.RBAC(shadow_rules_stat_prefix=sets.shadow_stat_prefix)
    if sets.rules is not None:
        cfg.rules.CopyFrom(sets.rules)
        cfg.rules.SetInParent()
    if sets.shadow is not None:
        cfg.shadow_rules.CopyFrom(sets.shadow)
        cfg.shadow_rules.SetInParent()
    return HttpFilter(name=HTTP_RBAC, typed_config=packed(cfg))


def tcp_rbac_filter(sets: RuleSets) -> NetworkFilter:
    cfg = net_rbac_pb2.RBAC(stat_prefix=TCP_STAT_PREFIX, shadow_rules_stat_prefix=sets.shadow_stat_prefix)
    if sets.rules is not None:
        cfg.rules.CopyFrom(sets.rules)
        cfg.rules.SetInParent()
    if sets.shadow is not None:
        cfg.shadow_rules.CopyFrom(sets.shadow)
        cfg.shadow_rules.SetInParent()
    return NetworkFilter(name=NETWORK_RBAC, typed_config=packed(cfg))


#: Istio's filter order for the enforcing actions.
ACTION_ORDER: Final[tuple[Action, ...]] = ("AUDIT", "DENY", "ALLOW")


def enforcing_filters(policies: Sequence[CompiledPolicy]
                      ) -> tuple[list[HttpFilter], list[NetworkFilter], list[str]]:
    """The AUDIT, DENY and ALLOW RBAC filters for HTTP and TCP chains (CUSTOM is ``extauthz``'s),
    and their roles (``audit``/``deny``/``allow``: the same for both lists)."""
    http: list[HttpFilter] = []
    tcp: list[NetworkFilter] = []
    roles: list[str] = []
    for action in ACTION_ORDER:
        group = [cp for cp in policies if cp.action == action]
        if not group:
            continue
        http.append(http_rbac_filter(rule_sets(action, group, for_tcp=False)))
        tcp.append(tcp_rbac_filter(rule_sets(action, group, for_tcp=True)))
        roles.append(action.lower())
    return http, tcp, roles


def bad_custom_rules(entries: Sequence[tuple[str, Policy]]) -> rbac_pb2.RBAC:
    """Istio's ``getBadCustomDenyRules``: the CUSTOM policies enforced as DENY (fail closed)."""
    return _rbac("DENY", sorted(((key + BAD_CUSTOM_SUFFIX, pol) for key, pol in entries), key=_first))
