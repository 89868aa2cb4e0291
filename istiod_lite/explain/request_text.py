"""The human rendering of an ``Explanation``: one short section per stage, in Envoy's order."""

from __future__ import annotations

from typing import Any

from istiod_lite.explain.request import Explanation


def _origin(origin: dict[str, Any] | None) -> str:
    if not origin:
        return "(no source rule: a default route of the waypoint)"
    if origin.get("kind") == "VirtualService":
        return f"VirtualService {origin['name']}" + (f", http rule {origin['rule']!r}" if origin.get("rule") else "")
    if "route" in origin:
        return f"Gateway API route {origin['route']}, rules[{origin['rule']}]"
    if "ruleName" in origin:
        return f"Gateway API rule {origin['ruleName']!r} (converted VirtualService {origin['convertedVirtualService']})"
    return str(origin)


def _policies(items: list[dict[str, Any]]) -> str:
    out = []
    for p in items:
        if "authorizationPolicy" in p:
            out.append(f"AuthorizationPolicy {p['authorizationPolicy']} rules[{p['rule']}]")
        else:
            out.append(p["policy"])
    return ", ".join(out) or "none"


def _kv(value: Any) -> str:
    """Compact ``k=v`` text of a JSON-shaped value."""
    if isinstance(value, dict):
        return ", ".join(f"{k}=({_kv(v)})" if isinstance(v, dict) else f"{k}={_kv(v)}"
                         for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return "[" + "; ".join(_kv(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def render_text(exp: Explanation) -> str:
    j = exp.to_json()
    q = j["request"]
    lines = [f"Request: {q['method']} {q['path']} (authority {q['authority']}) to {q['destination']}",
             f"  from {q['peerPrincipal'] or 'unknown peer'}" + (f" at {q['sourceIp']}" if q["sourceIp"] else "")]
    hs = exp.handshake
    if hs is not None and hs.checked:
        verdict = f"accepted ({hs.matched})" if hs.accepted and hs.matched else \
            ("accepted" if hs.accepted else "REFUSED")
        lines.append(f"HBONE handshake ({j['hboneHandshake']['listener']}): {verdict}")
        if not hs.accepted:
            lines.append(f"  accepted peer SANs: {'; '.join(hs.accepted_sans) or 'none'}")
    if exp.outcome.get("kind") != "refused":
        fc = j["filterChain"]
        lines.append(f"Filter chain: {fc['name'] or 'none'} ({'; '.join(fc['match'])})")
    if exp.protocol == "http":
        if exp.normalized_path != q["path"]:
            lines.append(f"Normalized path: {exp.normalized_path}")
        lines.append(f"Route configuration: {exp.route_config}, virtual host {exp.virtual_host}")
        for t in exp.routes_tried:
            lines.append(f"  tried {t}")
        if exp.route is not None:
            lines.append(f"Route: {exp.route['name'] or '(unnamed)'} <- {_origin(exp.route['origin'])}")
        else:
            lines.append("Route: none matched")
    if exp.jwt is not None:
        lines.append(f"JWT ({exp.jwt['filter']}): {'ok' if exp.jwt['allowed'] else 'rejected'}: {exp.jwt['reason']}")
        for t in exp.jwt["tokens"]:
            state = "valid" if t["valid"] else "invalid"
            lines.append(f"  {t['provider']} from {t['location']}: {state} ({t['reason']})")
    for f in exp.filters:
        if f.get("type") == "rbac":
            if "unsupported" in f:
                lines.append(f"RBAC {f['name']}: cannot evaluate ({f['unsupported']})")
                continue
            state = f"{f['action']}, matched: {_policies(f['matchedPolicies'])}" if f["enforced"] else "no policies"
            lines.append(f"RBAC {f['name']}: {state} -> {'pass' if f['allowed'] else 'DENIED'}")
            if "dryRun" in f:
                lines.append(f"  dry-run {f['dryRun']['action']}: matched {_policies(f['dryRun']['matchedPolicies'])}")
    a = exp.authorization
    if a.get("allowed") is None:
        lines.append(f"Authorization: {a.get('reason')}")
    elif a.get("allowed"):
        by = a.get("decidedBy")
        lines.append("Authorization: allowed" + (f" by {_policies([by])}" if by else " (no policy refused it)"))
    else:
        by = a.get("decidedBy")
        lines.append(f"Authorization: DENIED ({a['reason']}" + (f": {_policies([by])})" if by else ")"))
    if exp.fault:
        lines.append(f"Fault injection: {_kv(exp.fault)}")
    act = exp.action
    if "clusters" in act:
        for c in act["clusters"]:
            pct = f" {c['percent']}%" if "percent" in c else ""
            eps = ", ".join(c.get("endpoints", [])) or ("missing cluster" if c.get("missing") else "no endpoints")
            lines.append(f"Cluster: {c['name']}{pct} -> {eps}")
    if "tcpProxy" in act:
        for c in act["tcpProxy"]["clusters"]:
            lines.append(f"TCP proxy to {c['name']} (weight {c['weight']})")
    for key, label in (("rewrite", "Rewrite"), ("redirect", "Redirect"), ("directResponse", "Direct response"),
                       ("mirrors", "Mirrors"), ("headers", "Headers"), ("hashPolicy", "Hash policy")):
        if key in act:
            lines.append(f"{label}: {_kv(act[key])}")
    if "timeout" in act:
        lines.append(f"Timeout: {act['timeout']}" + (" (none: no route timeout)" if act["timeout"] == "0s" else ""))
    if "retries" in act:
        r = act["retries"]
        lines.append("Retries: none" if r is None else
                     f"Retries: up to {r['numRetries']} on {r['retryOn']}"
                     + (f", per try timeout {r['perTryTimeout']}" if "perTryTimeout" in r else ""))
    o = exp.outcome
    status = f" {o['status']}" if o.get("status") is not None else ""
    lines.append(f"Outcome: {o.get('kind')}{status} by {o.get('by')}: {o.get('reason')}")
    for n in exp.notes:
        lines.append(f"Note: {n}")
    return "\n".join(lines) + "\n"
