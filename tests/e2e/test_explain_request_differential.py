"""Differential test of ``explain request`` against a real Envoy waypoint (issue 16).

For every golden case with routes or authorization policies (found by content: a route with its
source rule's ``istio`` metadata, an RBAC filter with rules, or jwt_authn), the case's input runs
for real (``tests/support/goldenmesh.py``: control plane, waypoint agent with Envoy, HBONE client
ztunnels with chosen identities, HBONE pod terminators and backends that name themselves), and
requests generated from the config's own match values and near misses
(``tests/support/requestgen.py``) go both through Envoy and through ``explain``. They must agree,
request by request, on:

* the status: the local reply's status (404 no route, 403 RBAC, 401 JWT, direct responses,
  redirects, fault aborts, 503 no upstream), or "the upstream answered" (with a partial HTTP
  fault abort, either the abort's status or the route's outcome, as ``explain`` reports both);
* the upstream: the backend that answered is an endpoint of a cluster ``explain`` chose
  (with weights, an endpoint of any cluster of non-zero weight);
* the authorization decision: Envoy's "RBAC: access denied" 403 iff ``explain`` says denied;
* the HBONE TLS handshake: Envoy refusing the client's certificate on ``connect_terminate`` (its
  listener's ``ssl.fail_verify_*`` counters rise and the client gets no response) iff ``explain``
  says "refused at the HBONE TLS handshake" -- its own outcome, never matched by a status.

Client identities are issued in the case's trust domain (its ``mesh.yaml`` ``trustDomain``);
for a case with ``trustDomainAliases`` every request is also sent from each alias domain (the
waypoint must accept them) and from a domain outside the bundle (it must refuse them).

Exclusions are explicit (``EXCLUDED_CASES``, and per request the reasons in
``_not_testable``) and counted in the summary printed at the end of each case; see docs/explain.md.
One Envoy per waypoint, reused for all of a case's requests. Marker ``slow``: all cases take
about two to three minutes on two cores.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from istiod_lite.explain.envoy_eval.config import EnvoyConfig
from istiod_lite.explain.request import Explanation, RequestQuery, explain
from istiod_lite.model.meshconfig import MeshConfig, load_mesh_config
from istiod_lite.sources import DirectorySource
from istiod_lite.translator import WaypointAssembly, find_waypoints
from tests.support.goldenmesh import Observed, echo_servers, is_loopback, remap_case, send
from tests.support.mesh import ambient_mesh
from tests.support.requestgen import GenRequest, generate
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: A trust domain outside every case's bundle: its clients must be refused at the handshake.
FOREIGN_TRUST_DOMAIN = "foreign.example"
REFUSED = "refused at the HBONE TLS handshake"

#: Cases whose traffic cannot run here, with the reason (docs/explain.md lists them too).
EXCLUDED_CASES: dict[str, str] = {
    "authz-all-actions-order": "CUSTOM action: the decision is an ext_authz server's",
    "authz-custom-grpc": "CUSTOM action: the decision is an ext_authz server's",
    "authz-custom-http": "CUSTOM action: the decision is an ext_authz server's",
    "authz-custom-multiple-providers": "CUSTOM action: the decision is an ext_authz server's",
    "se-dynamic-dns-http": "DYNAMIC_DNS: the upstream is resolved by DNS at request time",
}


def _has_routes_or_policies(case: Path) -> bool:
    for f in sorted((case / "expected").glob("*.json")):
        d = json.loads(f.read_text())
        for rc in d.get("routes", []):
            for vh in rc.get("virtual_hosts", []):
                if any("metadata" in r for r in vh.get("routes", [])):
                    return True
        for ext in d.get("extension_configs", []):
            tc = ext.get("typed_config", {})
            if tc.get("@type", "").endswith("http.rbac.v3.RBAC") and tc.get("rules", {}).get("policies"):
                return True
            if tc.get("@type", "").endswith(("JwtAuthentication", "http.ext_authz.v3.ExtAuthz")):
                return True
    return False


CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input").is_dir() and _has_routes_or_policies(p))
TOTALS: Counter[str] = Counter()


def _mesh(case: Path) -> MeshConfig | None:
    f = case / "mesh.yaml"
    return load_mesh_config(f) if f.exists() else None


def _not_testable(cfg: EnvoyConfig, exp: Explanation) -> str | None:
    """Why this request's real outcome cannot be compared here (None: it can)."""
    o = exp.outcome
    if o.get("kind") == "unknown":
        return f"explain cannot decide offline: {o.get('reason')}"
    if exp.jwt and any(t["offlineUnverifiable"] for t in exp.jwt["tokens"]):
        return "JWT from a provider with a remote JWKS: not verifiable offline"
    if exp.fault and exp.fault.get("abort") and 0 < exp.fault["abort"]["percent"] < 100 \
            and exp.fault["abort"]["httpStatus"] is None:
        return "probabilistic gRPC fault abort"
    if exp.fault and exp.fault.get("delay") and float(exp.fault["delay"]["fixedDelay"].rstrip("s")) > 1.0:
        return "fault delay over 1 s (slow)"
    if o.get("kind") == "upstream":
        for name in o.get("clusters", []):
            c = cfg.clusters[name]
            if c.HasField("transport_socket") and "tls" in c.transport_socket.name:
                return "upstream TLS: the test backends speak plain HTTP"
            tso = c.transport_socket_matches
            if any("tls" in m.transport_socket.name.lower() and m.name != "tlsMode-disabled" for m in tso):
                return "upstream TLS: the test backends speak plain HTTP"
            addrs = cfg.endpoint_addresses(name)
            if not addrs or not all(is_loopback(a.rpartition(":")[0]) for a in addrs):
                return "upstream endpoints not on loopback (or resolved by DNS)"
    return None


def _partial_abort(exp: Explanation) -> list[Any]:
    """The other verdict a partial HTTP fault abort allows (``explain`` reports both: the abort
    with its percentage, and what happens to the rest)."""
    abort = (exp.fault or {}).get("abort")
    if abort and 0 < abort["percent"] < 100 and abort["httpStatus"] is not None:
        return [(f"local {abort['httpStatus']}", None, "allowed")]
    return []


def _verdict(cfg: EnvoyConfig, exp: Explanation, seen: Observed, refused: bool) -> tuple[Any, Any]:
    """(what explain predicts, what Envoy did) in comparable form; ``refused``: Envoy's
    ``connect_terminate`` failed the client's handshake for this request."""
    o = exp.outcome
    if o["kind"] == "refused" or refused:
        predicted_h = REFUSED if o["kind"] == "refused" else f"handshake passed, then {o['kind']} {o.get('status')}"
        got_h = REFUSED if refused else ("handshake passed, then " + (
            f"status {seen.status}" if seen.status is not None else "closed without a response"))
        return (predicted_h,), (got_h,)
    denied = exp.authorization.get("allowed") is False
    if o["kind"] == "upstream":
        endpoints = {a for n in o["clusters"] for a in cfg.endpoint_addresses(n)}
        predicted: Any = ("upstream", "backend in chosen clusters", "denied" if denied else "allowed")
        got_backend = "backend in chosen clusters" if seen.backend in endpoints else f"backend {seen.backend}"
        got: Any = ("upstream" if seen.backend else f"local {seen.status}", got_backend,
                    "denied" if seen.status == 403 and b"RBAC: access denied" in seen.body else "allowed")
        return predicted, got
    if o["kind"] == "reset":
        return ("reset", denied), ("reset" if seen.status is None else f"status {seen.status}",
                                   seen.status == 403 and b"RBAC" in seen.body)
    predicted = (f"local {o['status']}", None, "denied" if denied else "allowed")
    got = ("upstream" if seen.backend else f"local {seen.status}", None,
           "denied" if seen.status == 403 and b"RBAC: access denied" in seen.body else "allowed")
    return predicted, got


async def _stats(admin_port: int) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{admin_port}/stats?format=json") as r:
        data = await r.json()
    return {s["name"]: s.get("value", 0) for s in data.get("stats", []) if "value" in s}


async def _ready(admin_port: int, n_listeners: int) -> bool:
    try:
        s = await _stats(admin_port)
    except (aiohttp.ClientError, OSError, ValueError):
        return False
    return (s.get("listener_manager.total_listeners_active", 0) >= n_listeners
            and s.get("listener_manager.total_listeners_warming", 1) == 0
            and s.get("cluster_manager.warming_clusters", 1) == 0)


#: ``connect_terminate``'s TLS counters that count a refused client certificate (or handshake).
_HANDSHAKE_FAILURES = ("ssl.fail_verify_san", "ssl.fail_verify_no_cert", "ssl.fail_verify_error",
                       "ssl.fail_verify_cert_hash", "ssl.connection_error")


async def _handshake_failures(admin_port: int) -> int:
    """The sum of the HBONE listener's handshake-failure counters (``listener.<ip>_15008.ssl.*``)."""
    stats = await _stats(admin_port)
    return sum(v for k, v in stats.items() if k.startswith("listener.") and "_15008." in k
               and k.endswith(_HANDSHAKE_FAILURES))


def _trust_domains(mesh_cfg: MeshConfig | None) -> list[str]:
    """The domains clients are issued in: the case's trust domain first; with aliases, each alias
    and a foreign domain too."""
    if mesh_cfg is None:
        return ["cluster.local"]
    aliases = [a for a in mesh_cfg.trust_domain_aliases if a != mesh_cfg.trust_domain]
    return [mesh_cfg.trust_domain, *aliases, *([FOREIGN_TRUST_DOMAIN] if aliases else [])]


def _query(r: GenRequest, trust_domain: str) -> RequestQuery:
    return RequestQuery(dest_ip=r.vip, dest_port=r.port, method=r.method, path=r.path, authority=r.authority,
                        headers=r.headers, peer_principal=f"spiffe://{trust_domain}/ns/{r.identity[0]}/sa/{r.identity[1]}",
                        source_ip="127.0.0.1")


@pytest.mark.parametrize("case", CASES)
async def test_explain_request_agrees_with_envoy(case: str, tmp_path: Path) -> None:
    if case in EXCLUDED_CASES:
        pytest.skip(EXCLUDED_CASES[case])
    started = time.monotonic()
    cfg_dir = tmp_path / "cfg"
    remap_case(GOLDEN / case, cfg_dir)
    mesh_cfg = _mesh(GOLDEN / case)
    update = DirectorySource(cfg_dir).load()
    assert not update.errors, [str(e) for e in update.errors]
    domains = _trust_domains(mesh_cfg)
    counts: Counter[str] = Counter()
    disagreements: list[str] = []
    async with ambient_mesh(tmp_path, cfg_dir, mesh=mesh_cfg) as mesh:
        for wp in find_waypoints(update.snapshot):
            if not wp.addresses:
                continue
            cfg = EnvoyConfig.of(WaypointAssembly(wp.ref, mesh=mesh_cfg).proxy_resources(update.snapshot))
            requests = generate(cfg)
            if not requests:
                continue
            addresses = {a for name in cfg.clusters for a in cfg.endpoint_addresses(name)
                         if is_loopback(a.rpartition(":")[0])}
            pods = sorted({a.rpartition(":")[0] for name, cla in cfg.endpoints.items() for a in
                           cfg.endpoint_addresses(name)
                           if is_loopback(a.rpartition(":")[0]) and a.rpartition(":")[0] != "127.0.0.1"})
            wp_ip = wp.addresses[0]
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(echo_servers(addresses))
                if pods:
                    await stack.enter_async_context(mesh.pod_ztunnels(pods))
                agent = await stack.enter_async_context(mesh.waypoint(wp.ref.namespace, wp.ref.name, wp_ip))
                n_listeners = len(cfg.listeners)
                await wait_until(lambda a=agent, n=n_listeners: _ready(a.config.envoy.admin_port, n), timeout=30,
                                 message=f"waypoint {wp.ref} configured")
                targets = sorted({(r.vip, r.port) for r in requests})
                clients: dict[tuple[str, str, str], dict[tuple[str, int], str]] = {}
                for td in domains:
                    for ns, sa in sorted({r.identity for r in requests}):
                        # The harness's own mesh issues in cluster.local: another domain is asked for.
                        clients[(ns, sa, td)] = await stack.enter_async_context(mesh.client(
                            targets, wp_ip, namespace=ns, sa=sa,
                            trust_domain=None if td == mesh.trust_domain else td))
                admin = agent.config.envoy.admin_port
                failures = await _handshake_failures(admin)
                for td, r in ((td, r) for td in domains for r in requests):
                    exp = explain(cfg, _query(r, td))
                    why = _not_testable(cfg, exp)
                    if why is not None:
                        counts[f"excluded: {why}"] += 1
                        continue
                    seen = await send(clients[(*r.identity, td)][(r.vip, r.port)], r.method, r.path,
                                      r.authority, r.headers)
                    refused = False
                    if seen.status is None:  # only a response-less request can have been refused
                        now = await _handshake_failures(admin)
                        refused, failures = now > failures, now
                    predicted, got = _verdict(cfg, exp, seen, refused)
                    if refused or exp.outcome["kind"] == "refused":
                        counts["compared: handshake"] += 1
                    # A partial abort's reply has no backend: compare its status and decision.
                    aborted = len(got) == 3 and any(got[0] == alt[0] and got[2] == alt[2]
                                                    for alt in _partial_abort(exp))
                    counts["compared"] += 1
                    if got == predicted or aborted:
                        counts["agreed"] += 1
                    else:
                        disagreements.append(f"{r} from {td}: explain {predicted} ({exp.outcome}), Envoy {got} "
                                             f"body {seen.body[:120]!r}")
    TOTALS.update(counts)
    TOTALS["cases"] += 1
    print(f"\n{case}: {dict(counts)} in {time.monotonic() - started:.1f}s; totals so far {dict(TOTALS)}")
    assert not disagreements, "\n".join(disagreements)
    assert counts["compared"] > 0 or any(k.startswith("excluded") for k in counts), "no request was compared"
