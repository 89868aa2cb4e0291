"""Benchmark: ``diagnose()`` after one edit on the reference mesh (the server runs it on every update).

The reference mesh is ``bench_translate.mesh`` (N services over 50 namespaces, a waypoint each, a
DestinationRule and VirtualService for every tenth service).  Each run edits svc-0's
VirtualService (a new weight) or re-creates its DestinationRule (a new, equal object), builds the
next snapshot as a source does (unchanged kinds keep their mapping) and times ``diagnose`` on it:
what the export-warnings memo (translator/export_warnings.py) saves.

    python bench/bench_diagnose.py [--services 1000 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_translate import mesh

from istiod_lite.model import ConfigSnapshot, ResourceKey
from istiod_lite.translator.diagnostics import diagnose


def run(services: int, kind: str, runs: int, namespaces: int = 50) -> str:
    snap = ConfigSnapshot.build(mesh(services, namespaces), 1)
    t0 = time.perf_counter()
    diagnose(snap)
    first = time.perf_counter() - t0
    key = ResourceKey(kind, "ns-0", "svc-0")
    times = []
    for r in range(runs):
        edited = next(x for x in mesh(services, namespaces, weight=10 + r) if ResourceKey.of(x) == key)
        kept = [edited if ResourceKey.of(x) == key else x for k in snap.by_kind.values() for x in k.values()]
        snap = ConfigSnapshot.build(kept, 2 + r, previous=snap, changed=[key])
        t0 = time.perf_counter()
        diagnose(snap)
        times.append(time.perf_counter() - t0)
    return (f"{services} services: first diagnose {first * 1000:.1f} ms; after one {kind} edit: median "
            f"{statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms ({runs} edits)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    for n in args.services:
        for kind in ("VirtualService", "DestinationRule"):
            print(run(n, kind, args.runs))


if __name__ == "__main__":
    main()
