"""Benchmark: what one AuthorizationPolicy edit costs a waypoint, by delivery mechanism.

Translates a mesh (``--mesh reference``: bench_xds_push's 50-waypoint reference mesh, ns-0's
waypoint; ``--mesh single``: one waypoint serving ``--services`` services, each with an ALLOW
policy), edits svc-0's policy, and reports for that waypoint:

* ECDS (what the translator does): the listener's size, the extension configs (count, bytes),
  which resources the edit changed and their bytes (what a replica receives), the translation time;
* inline (the filters embedded in the listener, as before): the listener's size - an edit resends it;
* RBAC per route (``RBACPerRoute`` in the chain's RouteConfiguration, served by RDS): the size of
  the edited service's route configuration with the policy in it - what an RDS push would carry;
* the cost of the fixed ``deny``/``allow`` slots: listener bytes of the empty slots.

    python bench/bench_authz_ecds.py --mesh reference
    python bench/bench_authz_ecds.py --mesh single --services 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_xds_push import _reference_policy, write_config, write_reference_config

from istiod_lite.sources import DirectorySource
from istiod_lite.translator import WaypointAssembly, find_waypoints
from istiod_lite.translator.core.output import EnvoyResources


def size(m: Message) -> int:
    return len(m.SerializeToString(deterministic=True))


def inline(listener: listener_pb2.Listener, configs: EnvoyResources) -> tuple[listener_pb2.Listener, int]:
    """The listener with every slot's config embedded (the pre-ECDS shape); and the bytes of the
    empty slots' entries in the ECDS listener."""
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    empty = 0
    for chain in out.filter_chains:
        for f in chain.filters:
            if f.HasField("config_discovery"):
                f.typed_config.CopyFrom(configs.extension_configs[f.name].typed_config)
            elif f.typed_config.type_url.endswith(".HttpConnectionManager"):
                hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                kept = []
                for h in hcm.http_filters:
                    if h.HasField("config_discovery"):
                        cfg = configs.extension_configs[h.name].typed_config
                        if not cfg.value:
                            empty += size(h)
                            continue  # an empty slot: no filter before ECDS
                        h.ClearField("config_discovery")
                        h.typed_config.CopyFrom(cfg)
                    kept.append(h)
                del hcm.http_filters[:]
                hcm.http_filters.extend(kept)
                f.typed_config.value = hcm.SerializeToString(deterministic=True)
    return out, empty


def per_route_size(listener: listener_pb2.Listener, configs: EnvoyResources, host: str) -> int:
    """The RouteConfiguration of ``host``'s HTTP chain with its RBAC as ``RBACPerRoute`` on the
    virtual host: the RDS push an edit of its policy would be under per-route RBAC."""
    for chain in listener.filter_chains:
        if chain.name.startswith("inbound-vip|") and chain.name.endswith(f"|http|{host}"):
            hcm = hcm_pb2.HttpConnectionManager.FromString(chain.filters[-1].typed_config.value)
            rc = hcm.route_config
            for h in hcm.http_filters:
                if h.HasField("config_discovery") and configs.extension_configs[h.name].typed_config.value:
                    rbac = http_rbac_pb2.RBAC.FromString(configs.extension_configs[h.name].typed_config.value)
                    for vh in rc.virtual_hosts:
                        vh.typed_per_filter_config[h.name].Pack(http_rbac_pb2.RBACPerRoute(rbac=rbac))
            return size(rc)
    raise SystemExit(f"no HTTP chain for {host}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", choices=["single", "reference"], default="reference")
    ap.add_argument("--services", type=int, default=1000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-authz-ecds-"))
    if args.mesh == "reference":
        write_reference_config(root, args.services)
        ns, policy_file = "ns-0", root / "21-policy.yaml"
    else:
        write_config(root, args.services)
        ns, policy_file = "mesh", root / "21-policy.yaml"
        (root / "22-policies.yaml").write_text("".join(_reference_policy("mesh", f"svc-{i}", 0)
                                                       for i in range(1, args.services)))
    policy_file.write_text(_reference_policy(ns, "svc-0", 0))
    src = DirectorySource(root)
    before = src.load().snapshot
    wp = next(w for w in find_waypoints(before) if w.ref.namespace == ns)
    assembly = WaypointAssembly(wp.ref)
    old = assembly.proxy_resources(before)
    policy_file.write_text(_reference_policy(ns, "svc-0", 1))
    after = src.load().snapshot
    t0 = time.perf_counter()
    new = assembly.proxy_resources(after)
    took = time.perf_counter() - t0
    host = f"svc-0.{ns}.svc.cluster.local"

    main_old, main_new = old.listeners["main_internal"], new.listeners["main_internal"]
    changed = {t: [n for n, m in named.items() if size(m) != size(old.by_type[t].get(n, m)) or
                   m.SerializeToString(deterministic=True) != old.by_type[t][n].SerializeToString(deterministic=True)]
               for t, named in new.by_type.items()}
    changed = {t.rsplit(".", 1)[-1]: names for t, names in changed.items() if names}
    ecds = new.extension_configs
    edit_bytes = sum(size(ecds[n]) for n in changed.get("TypedExtensionConfig", []))
    inline_listener, empty_slots = inline(main_new, new)
    print(f"{args.mesh} mesh, waypoint {ns}/{wp.ref.name}: {len(ecds)} extension configs "
          f"({sum(size(m) for m in ecds.values())} bytes)")
    same = main_old is main_new or main_old == main_new
    print(f"  ECDS: main_internal {size(main_new)} bytes (unchanged by the edit: {same}); "
          f"resources the edit changed: {changed}; {edit_bytes} bytes; translation {took * 1000:.1f} ms")
    print(f"  inline: main_internal {size(inline_listener)} bytes, resent whole on every edit")
    print(f"  RBAC per route: svc-0's route configuration with its RBAC {per_route_size(main_new, new, host)} bytes")
    print(f"  fixed deny/allow slots: the empty ones cost {empty_slots} listener bytes")


if __name__ == "__main__":
    main()
