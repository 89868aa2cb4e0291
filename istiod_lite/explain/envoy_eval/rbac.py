"""Envoy's RBAC engine (``config.rbac.v3``) over one request: which policies' permissions and
principals match, and what the filter's action makes of that.

The waypoint's RBAC filters sit behind ECDS slots named ``authz|http|deny|...`` and
``authz|http|allow|...``; their policies are named after AuthorizationPolicies
(``ns[NS]-policy[NAME]-rule[N]``), so a matching policy names the rule that decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2

from istiod_lite.explain.envoy_eval.config import unpack
from istiod_lite.explain.envoy_eval.matchers import (
    Headers,
    cidr_match,
    header_match,
    metadata_match,
    string_match,
)
from istiod_lite.explain.envoy_eval.paths import split_query, uri_template_match


@dataclass(frozen=True)
class RbacContext:
    """What RBAC matchers read for one request on ``main_internal``."""

    headers: Headers  # lower-case names, pseudo-headers included (after path normalisation)
    path: str
    dest_ip: str
    dest_port: int
    source_ip: str | None  # the HBONE peer's address (original source, restored from filter state)
    remote_ip: str | None  # the "trusted" client address (XFF's last entry when use_remote_address is false)
    filter_state: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sni: str = ""


def permission_matches(p: rbac_pb2.Permission, c: RbacContext) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return bool(p.any)
    if kind == "and_rules":
        return all(permission_matches(r, c) for r in p.and_rules.rules)
    if kind == "or_rules":
        return any(permission_matches(r, c) for r in p.or_rules.rules)
    if kind == "not_rule":
        return not permission_matches(p.not_rule, c)
    if kind == "header":
        return header_match(p.header, c.headers)
    if kind == "url_path":
        return string_match(p.url_path.path, split_query(c.path)[0])
    if kind == "destination_ip":
        return cidr_match(p.destination_ip, c.dest_ip)
    if kind == "destination_port":
        return bool(p.destination_port == c.dest_port)
    if kind == "destination_port_range":
        return bool(p.destination_port_range.start <= c.dest_port < p.destination_port_range.end)
    if kind == "metadata":
        return metadata_match(p.metadata, c.metadata)
    if kind == "requested_server_name":
        return string_match(p.requested_server_name, c.sni)
    if kind == "uri_template":
        cfg = unpack(p.uri_template.typed_config)
        if isinstance(cfg, uri_template_match_pb2.UriTemplateMatchConfig):
            return uri_template_match(cfg.path_template, c.path)
    raise UnsupportedMatcher(f"permission {kind}")


def principal_matches(p: rbac_pb2.Principal, c: RbacContext) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return bool(p.any)
    if kind == "and_ids":
        return all(principal_matches(r, c) for r in p.and_ids.ids)
    if kind == "or_ids":
        return any(principal_matches(r, c) for r in p.or_ids.ids)
    if kind == "not_id":
        return not principal_matches(p.not_id, c)
    if kind == "authenticated":
        # main_internal's connections are internal (no TLS): no peer certificate to match.
        return False
    if kind in ("source_ip", "direct_remote_ip"):
        return cidr_match(getattr(p, kind), c.source_ip)
    if kind == "remote_ip":
        return cidr_match(p.remote_ip, c.remote_ip)
    if kind == "header":
        return header_match(p.header, c.headers)
    if kind == "url_path":
        return string_match(p.url_path.path, split_query(c.path)[0])
    if kind == "metadata":
        return metadata_match(p.metadata, c.metadata)
    if kind == "filter_state":
        value = c.filter_state.get(p.filter_state.key)
        return value is not None and string_match(p.filter_state.string_match, value)
    raise UnsupportedMatcher(f"principal {kind}")


class UnsupportedMatcher(Exception):
    """A matcher kind this evaluator does not model (reported, never guessed)."""


@dataclass(frozen=True)
class RbacOutcome:
    action: str  # ALLOW / DENY / LOG
    enforced: bool  # False: the filter has no rules (it lets everything through)
    matched: tuple[str, ...]  # matching policy names, sorted
    allowed: bool
    shadow_matched: tuple[str, ...] = ()
    shadow_action: str | None = None


def policy_matches(policy: rbac_pb2.Policy, c: RbacContext) -> bool:
    if policy.HasField("condition"):
        raise UnsupportedMatcher("CEL condition")
    return any(permission_matches(p, c) for p in policy.permissions) and any(
        principal_matches(p, c) for p in policy.principals)


def evaluate(rules: rbac_pb2.RBAC | None, c: RbacContext, shadow: rbac_pb2.RBAC | None = None) -> RbacOutcome:
    """Envoy's engine: ALLOW lets a request through iff a policy matches; DENY refuses it iff one
    does; LOG never refuses. No ``rules`` at all: the filter enforces nothing."""
    shadow_matched: tuple[str, ...] = ()
    shadow_action: str | None = None
    if shadow is not None:
        shadow_matched = tuple(sorted(n for n, pol in shadow.policies.items() if policy_matches(pol, c)))
        shadow_action = rbac_pb2.RBAC.Action.Name(shadow.action)
    if rules is None:
        return RbacOutcome("ALLOW", False, (), True, shadow_matched, shadow_action)
    matched = tuple(sorted(n for n, pol in rules.policies.items() if policy_matches(pol, c)))
    action = rbac_pb2.RBAC.Action.Name(rules.action)
    if action == "ALLOW":
        allowed = bool(matched)
    elif action == "DENY":
        allowed = not matched
    else:
        allowed = True
    return RbacOutcome(action, True, matched, allowed, shadow_matched, shadow_action)
