"""Benchmark: authorization filters for every waypoint chain (authorization issue).

Reference mesh: 50 namespaces, one waypoint per namespace, 20 services per namespace (1000) bound
to it; 1000 AuthorizationPolicies (20 per namespace): 16 targeting a Service (ALLOW with
principals/namespaces/paths/methods/hosts/ports, DENY on paths, AUDIT), 3 targeting the
namespace's waypoint (Gateway), 1 dry-run; plus one GatewayClass policy from the root namespace,
and a RequestAuthentication per namespace on its first service.

Prints:
1. full generation for all 50 waypoints' chains (every service + the direct chains) with cold
   caches, as after a restart (target <= 1 s);
2. the same with warm caches and an unchanged snapshot;
3. one policy edited (a new snapshot that keeps every other kind's map, as the sources build it)
   -> regeneration of every chain (target <= 20 ms), and how many chains were rebuilt.

    python bench/bench_authz.py [--namespaces 50] [--services 20] [--policies 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

from istiod_lite.model import ConfigSnapshot, ResourceKey, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.authz import AuthzFilters, AuthzTranslator
from istiod_lite.translator.binding.waypoints import bindings_of
from istiod_lite.translator.core import tables

JWKS = json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k", "e": "AQAB", "n": "sXch" * 64}]})


def _policy(ns: str, i: int, services: int, edit: int = 0) -> dict[str, Any]:
    """Policy ``i`` of a namespace: a mix of what real meshes write."""
    svc = f"svc-{i % services}"
    meta: dict[str, Any] = {"name": f"ap-{i}", "namespace": ns}
    target = [{"group": "", "kind": "Service", "name": svc}]
    spec: dict[str, Any]
    if i < 12:
        spec = {"rules": [
            {"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/client-{i}",
                                                 f"cluster.local/ns/{ns}/sa/batch-{i + edit}"]}},
                      {"source": {"namespaces": ["ingress", "monitoring"]}}],
             "to": [{"operation": {"methods": ["GET", "HEAD"], "paths": ["/api/*", "/healthz"]}}]},
            {"to": [{"operation": {"hosts": [f"{svc}.{ns}.svc.cluster.local"], "ports": ["8080"]}}],
             "when": [{"key": "request.headers[x-tenant]", "values": [f"t-{i}"]}]}]}
    elif i < 15:
        spec = {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*", "/debug/*"]}}],
                                             "from": [{"source": {"notNamespaces": [ns]}}]}]}
    elif i < 16:
        spec = {"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}
    elif i < 19:
        target = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}]
        spec = {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": [f"10.{i}.0.0/16"]}}]}]}
    else:
        meta["annotations"] = {"istio.io/dry-run": "true"}
        spec = {"rules": [{"from": [{"source": {"serviceAccounts": ["default", "monitoring/prometheus"]}}]}]}
    spec["targetRefs"] = target
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def mesh(namespaces: int, services: int, policies: int, edit: int = 0) -> list[Resource]:
    docs: list[dict[str, Any]] = [{
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "mesh-deny", "namespace": "istio-system"},
        "spec": {"action": "DENY", "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass",
                                                   "name": "istio-waypoint"}],
                 "rules": [{"to": [{"operation": {"paths": ["/internal/*"]}}]}]}}]
    for n in range(namespaces):
        ns = f"ns-{n}"
        docs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": {"istio.io/use-waypoint": "waypoint"}}})
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"name": "waypoint", "namespace": ns},
                     "spec": {"gatewayClassName": "istio-waypoint",
                              "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
        for s in range(services):
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{s}", "namespace": ns},
                         "spec": {"clusterIP": f"10.{n}.{s // 250}.{s % 250 + 1}",
                                  "ports": [{"name": "http", "port": 8080}]}})
        for i in range(policies):
            docs.append(_policy(ns, i, services, edit if (n, i) == (0, 0) else 0))
        docs.append({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                     "metadata": {"name": "jwt", "namespace": ns},
                     "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "svc-0"}],
                              "jwtRules": [{"issuer": f"https://issuer/{ns}", "jwks": JWKS}]}})
    return [parse_object(d) for d in docs]


def generate_all(t: AuthzTranslator, snap: ConfigSnapshot) -> list[AuthzFilters]:
    """Every chain of every waypoint: each bound service, then the direct chains."""
    b = bindings_of(snap)
    out = []
    for ref in sorted(b.waypoints):
        for svc in b.services.get(ref, ()):
            out.append(t.for_service(snap, ref, svc.namespace, svc.name))
        out.append(t.for_direct(snap, ref))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--namespaces", type=int, default=50)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = mesh(args.namespaces, args.services, args.policies)
    snap = ConfigSnapshot.build(base)
    n_ap = len(snap.by_kind["AuthorizationPolicy"])
    bindings_of(snap)  # binding is the waypoint translator's cost, not this one's
    print(f"mesh: {args.namespaces} waypoints, {len(snap.by_kind['Service'])} services, {n_ap} AuthorizationPolicies")

    cold, warm, edit, rebuilt = [], [], [], []
    for run in range(args.runs):
        tables.COMPILED_POLICIES.clear()
        t = AuthzTranslator()
        gc.collect()
        t0 = time.perf_counter()
        first = generate_all(t, snap)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate_all(t, snap)
        warm.append(time.perf_counter() - t0)
        # one policy edited: the source builds the new snapshot keeping the other kinds' maps
        changed = next(r for r in mesh(args.namespaces, args.services, args.policies, edit=run + 1)
                       if r.kind == "AuthorizationPolicy" and r.namespace == "ns-0" and r.name == "ap-0")
        resources = {ResourceKey.of(r): r for r in base}
        resources[ResourceKey.of(changed)] = changed
        snap2 = ConfigSnapshot.build(resources.values(), previous=snap, changed=[ResourceKey.of(changed)])
        bindings_of(snap2)
        t0 = time.perf_counter()
        second = generate_all(t, snap2)
        edit.append(time.perf_counter() - t0)
        rebuilt.append(sum(a is not b for a, b in zip(first, second, strict=True)))
    chains = len(first)
    filters = sum(len(f.http) + len(f.tcp) for f in first)
    print(f"chains: {chains} (services + direct), filters: {filters}")
    print(f"1. full generation, cold caches:  median {statistics.median(cold) * 1000:8.1f} ms  "
          f"(min {min(cold) * 1000:.1f})  target <= 1000 ms")
    print(f"2. unchanged snapshot, warm:      median {statistics.median(warm) * 1000:8.1f} ms")
    print(f"3. one policy edited:             median {statistics.median(edit) * 1000:8.1f} ms  "
          f"(max {max(edit) * 1000:.1f})  target <= 20 ms; chains rebuilt: {max(rebuilt)}")


if __name__ == "__main__":
    main()
