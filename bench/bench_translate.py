"""Benchmark: waypoint translation on the reference mesh (waypoint data-path issue).

Reference mesh: 1000 services, 2000 pods (2 per service, half of the namespaces ambient), 50
namespaces, one waypoint per namespace, every service bound to its namespace's waypoint, a
DestinationRule with two subsets and a VirtualService for every tenth service.

Prints:
1. full translation of all 50 waypoints (fresh translators, as after a restart);
2. translation after a change to one Service (re-using each waypoint's fragment memo: only the
   changed service's resources are rebuilt), and how many services were rebuilt;
3. the time to serialise the same output once, and the ratio translation / serialisation.

    python bench/bench_translate.py [--services 1000] [--namespaces 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from istiod_lite.model import ConfigSnapshot, ResourceKey, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.waypoint import WaypointTranslator


def mesh(services: int, namespaces: int, change: int = 0, vs_every: int = 10, weight: int = 90) -> list[Resource]:
    docs: list[dict[str, object]] = []
    for n in range(namespaces):
        ns = f"ns-{n}"
        labels = {"istio.io/use-waypoint": "waypoint"}
        if n % 2 == 0:
            labels["istio.io/dataplane-mode"] = "ambient"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"name": "waypoint", "namespace": ns},
                     "spec": {"gatewayClassName": "istio-waypoint",
                              "addresses": [{"type": "IPAddress", "value": f"127.0.1.{n + 1}"}],
                              "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    for i in range(services):
        ns = f"ns-{i % namespaces}"
        name = f"svc-{i}"
        port = 8080 + (change if i == 0 else 0)
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                     "spec": {"clusterIP": f"127.10.{i // 250}.{i % 250 + 1}", "selector": {"app": name},
                              "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
        for v in (1, 2):
            labels = {"app": name, "version": f"v{v}"}
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{name}-v{v}", "namespace": ns, "labels": labels},
                         "status": {"podIP": f"127.{2 + v}.{i // 250}.{i % 250 + 1}"}})
        if i % vs_every == 0:
            w1 = weight if i == 0 else 90
            docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                         "metadata": {"name": name, "namespace": ns},
                         "spec": {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                            {"name": "v2", "labels": {"version": "v2"}}]}})
            docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": name, "namespace": ns},
                         "spec": {"hosts": [name], "http": [{"route": [
                             {"destination": {"host": name, "subset": "v1"}, "weight": w1},
                             {"destination": {"host": name, "subset": "v2"}, "weight": 100 - w1}]}]}})
    return [parse_object(d) for d in docs]


def changed_resources(snap: ConfigSnapshot) -> list[Resource]:
    return [r for kind in snap.by_kind.values() for r in kind.values()]


def serialise_all(outputs: list[object]) -> float:
    t0 = time.perf_counter()
    for res in outputs:
        for kind in ("listeners", "routes", "clusters", "endpoints", "secrets"):
            for msg in getattr(res, kind).values():
                msg.SerializeToString(deterministic=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--namespaces", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vs-every", type=int, default=10,
                    help="a DestinationRule and VirtualService for every Nth service (1: 1000 of each)")
    args = ap.parse_args()
    base = mesh(args.services, args.namespaces, vs_every=args.vs_every)
    snap = ConfigSnapshot.build(base, 1)
    refs = [WaypointRef(f"ns-{n}", "waypoint") for n in range(args.namespaces)]
    gc.freeze()  # as the server does after installing a config (controlplane/app.py)
    # The changed snapshot keeps every unchanged object (as the sources do) and replaces one Service.
    changed_svc = next(r for r in mesh(args.services, args.namespaces, change=1, vs_every=args.vs_every)
                       if r.kind == "Service" and r.name == "svc-0")
    edited_vs = next(r for r in mesh(args.services, args.namespaces, vs_every=args.vs_every, weight=70)
                     if r.kind == "VirtualService" and r.name == "svc-0")
    vs_key = ResourceKey("VirtualService", "ns-0", "svc-0")
    svc_key = ResourceKey("Service", "ns-0", "svc-0")

    def with_change(previous: ConfigSnapshot, revision: int) -> ConfigSnapshot:
        # As the YAML source does: unchanged kinds keep their mapping objects.
        return ConfigSnapshot.build([changed_svc if ResourceKey.of(r) == svc_key else r for r in base], revision,
                                    previous=previous, changed=[svc_key])
    print(f"reference mesh: {args.services} services, {2 * args.services} pods, {args.namespaces} namespaces, "
          f"{len(refs)} waypoints, {len(base)} resources")
    fulls, changes, sers, ratios, vs_edits = [], [], [], [], []
    for run in range(args.runs):
        translators = [WaypointTranslator(r) for r in refs]
        # Snapshots memoise their indexes: use fresh copies so each run pays for them.
        s1 = ConfigSnapshot.build(list(snap.by_kind["Service"].values()) + [r for r in base if r.kind != "Service"], 1)
        t0 = time.perf_counter()
        outputs = [t.translate(s1) for t in translators]
        full = time.perf_counter() - t0
        n_resources = sum(len(o.listeners) + len(o.clusters) + len(o.endpoints) + len(o.routes) for o in outputs)
        changed = with_change(s1, 2 + run)
        gc.freeze()
        t0 = time.perf_counter()
        for t in translators:
            t.translate(changed)
        one = time.perf_counter() - t0
        rebuilt = sum(t.last_rebuilt for t in translators)
        edited = [edited_vs if ResourceKey.of(r) == vs_key else r for r in changed_resources(changed)]
        vs_snap = ConfigSnapshot.build(edited, 10 + run, previous=changed, changed=[vs_key])
        t0 = time.perf_counter()
        for t in translators:
            t.translate(vs_snap)
        vs_edit = time.perf_counter() - t0
        vs_rebuilt = sum(t.last_rebuilt for t in translators)
        vs_edits.append(vs_edit)
        ser = serialise_all(outputs)  # type: ignore[arg-type]
        fulls.append(full)
        changes.append(one)
        sers.append(ser)
        ratios.append(full / ser)
        print(f"run {run + 1}: full translation {full * 1000:.0f} ms ({n_resources} resources); "
              f"one Service changed: {one * 1000:.1f} ms ({rebuilt} service rebuilt); "
              f"one VirtualService edited: {vs_edit * 1000:.1f} ms ({vs_rebuilt} rebuilt); "
              f"serialising the full output {ser * 1000:.0f} ms; translation/serialisation {full / ser:.2f}x")
    print(f"median: full {statistics.median(fulls) * 1000:.0f} ms (target <= 2000), one change "
          f"{statistics.median(changes) * 1000:.1f} ms (target <= 20), one VirtualService edit "
          f"{statistics.median(vs_edits) * 1000:.1f} ms (target <= 20), ratio {statistics.median(ratios):.2f}x "
          f"(target <= 3x)")


if __name__ == "__main__":
    main()
