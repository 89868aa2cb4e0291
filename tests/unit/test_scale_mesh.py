"""Correctness at scale (issue 13 item 5): one waypoint serving a generated directory of thousands of
services, through the running control plane (load, translate, serialise), checked per service.

Bounded (2,000 services, a few seconds) so CI runs it; the 10,000-service figures come from
``bench/bench_scale.py``, never from a timed test.  Routes are read from the chain's HTTP
connection manager, inline or over RDS, so the check holds whichever way the routes are sent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core.output import CLUSTER, ENDPOINT, LISTENER, ROUTE
from istiod_lite.translator.diagnostics import diagnose
from istiod_lite.xds.resources import VersionedResource
from tests.support.controlplane import control_plane, waypoint_resources
from tests.support.scalemesh import (
    PORT,
    WAYPOINT_NAME,
    WAYPOINT_NAMESPACE,
    namespace_of,
    pod_ip,
    write_scale_mesh,
)

pytestmark = pytest.mark.slow

SERVICES = 2000
NAMESPACES = 7  # uneven: namespaces of different sizes, files of different lengths
TARGET_PORT = 9080


def _decode(items: list[VersionedResource], cls: type) -> dict[str, object]:
    return {r.name: cls.FromString(r.any.value) for r in items}


def _route_config(chain: object, routes: dict[str, object]) -> route_pb2.RouteConfiguration:
    (hcm_filter,) = [f for f in chain.filters if f.typed_config.type_url.endswith("HttpConnectionManager")]
    hcm = hcm_pb2.HttpConnectionManager.FromString(hcm_filter.typed_config.value)
    if hcm.HasField("rds"):
        rc = routes[hcm.rds.route_config_name]
        assert isinstance(rc, route_pb2.RouteConfiguration)
        return rc
    return hcm.route_config


async def test_every_service_of_a_large_mesh_gets_its_clusters_endpoints_and_routes(tmp_path: Path) -> None:
    mesh = write_scale_mesh(tmp_path, SERVICES, namespaces=NAMESPACES, per_file=150)
    assert mesh.largest_file < 1 << 20
    async with control_plane(tmp_path) as cp:
        assert cp.ready
        assert cp.errors == ()
        assert len(cp.config) == 5 * SERVICES + NAMESPACES + 2  # + the waypoint's namespace and Gateway
        found = diagnose(cp.config, None)
        assert (found.binding, found.routes, found.authorization, found.telemetry) == ((), (), (), ())
        served = waypoint_resources(cp)[WaypointRef(WAYPOINT_NAMESPACE, WAYPOINT_NAME)]

    clusters = _decode(served[CLUSTER], cluster_pb2.Cluster)
    cla = _decode(served[ENDPOINT], endpoint_pb2.ClusterLoadAssignment)
    routes = _decode(served.get(ROUTE, []), route_pb2.RouteConfiguration)
    listeners = _decode(served[LISTENER], listener_pb2.Listener)
    main = listeners["main_internal"]
    assert isinstance(main, listener_pb2.Listener)
    chains = {c.name: c for c in main.filter_chains}

    per_kind: Counter[str] = Counter()
    for i in range(SERVICES):
        host = f"svc-{i}.{namespace_of(i, NAMESPACES)}.svc.cluster.local"
        base = f"inbound-vip|{PORT}|http|{host}"
        for version, subset in ((None, base), (1, f"inbound-vip|{PORT}|http/v1|{host}"),
                                (2, f"inbound-vip|{PORT}|http/v2|{host}")):
            c = clusters[subset]
            assert isinstance(c, cluster_pb2.Cluster) and c.type == cluster_pb2.Cluster.EDS, subset
            assert c.circuit_breakers.thresholds[0].max_pending_requests.value == 100  # the DR's policy
            assignment = cla[subset]
            assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
            eps = [lb.endpoint for group in assignment.endpoints for lb in group.lb_endpoints]
            want = [pod_ip(i, v) for v in ((1, 2) if version is None else (version,))]
            if i % 2 == 0:  # ambient pods: through connect_originate (HBONE), by endpoint id
                got = sorted(e.address.envoy_internal_address.endpoint_id for e in eps)
                assert got == sorted(f"{ip}:{TARGET_PORT}" for ip in want), subset
                per_kind["ambient"] += 1
            else:
                got = sorted(e.address.socket_address.address for e in eps)
                assert got == sorted(want), subset
                assert {e.address.socket_address.port_value for e in eps} == {TARGET_PORT}
                per_kind["plain"] += 1
        rc = _route_config(chains[base], routes)
        (vhost,) = rc.virtual_hosts
        (route,) = vhost.routes
        split = {w.name: w.weight.value for w in route.route.weighted_clusters.clusters}
        assert split == {f"inbound-vip|{PORT}|http/v1|{host}": 90, f"inbound-vip|{PORT}|http/v2|{host}": 10}, host
        assert route.route.timeout.seconds == 5
    assert per_kind == {"ambient": 3 * SERVICES // 2, "plain": 3 * SERVICES // 2}
    assert len(chains) >= SERVICES
