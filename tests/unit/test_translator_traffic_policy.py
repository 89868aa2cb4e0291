"""DestinationRule policy selection (port level, subsets, hashes) and its cluster mapping,
rule by rule (docs/istio-waypoint-shape.md §3 "DR -> cluster mapping")."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from istiod_lite.model.networking import DestinationRule
from istiod_lite.translator.clusters.for_service import PASSTHROUGH
from istiod_lite.translator.clusters.policy_apply import service_cluster
from istiod_lite.translator.clusters.policy_select import (
    cluster_policy,
    destination_hash,
    service_hash,
    tcp_source_ip_hash,
)
from istiod_lite.translator.shape.cluster_templates import service_metadata


def _dr(spec: dict[str, Any]) -> DestinationRule:
    return DestinationRule.model_validate({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                           "metadata": {"name": "d", "namespace": "app"},
                                           "spec": {"host": "echo", **spec}})


DR = _dr({
    "trafficPolicy": {
        "loadBalancer": {"simple": "RANDOM"},
        "connectionPool": {"tcp": {"maxConnections": 5}},
        "portLevelSettings": [{"port": {"number": 81}, "loadBalancer": {"consistentHash": {"httpHeaderName": "p"}}}],
    },
    "subsets": [
        {"name": "a", "labels": {"v": "a"},
         "trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": True}}}},
        {"name": "b", "labels": {"v": "b"}, "trafficPolicy": {"portLevelSettings": [
            {"port": {"number": 80}, "outlierDetection": {"consecutive5xxErrors": 1}}]}},
        {"name": "c", "labels": {"v": "c"}},
    ],
})


def test_port_level_settings_replace_the_top_level() -> None:
    p80, p81 = cluster_policy(DR, 80), cluster_policy(DR, 81)
    assert p80 is not None and p80.load_balancer is not None and p80.load_balancer.simple == "RANDOM"
    assert p80.connection_pool is not None
    assert p81 is not None and p81.connection_pool is None  # not inherited
    assert p81.load_balancer is not None and p81.load_balancer.consistent_hash is not None


def test_subset_policy_overrides_field_by_field_and_port_level_replaces_all() -> None:
    a = cluster_policy(DR, 80, "a")
    assert a is not None and a.connection_pool is not None  # inherited from the top level
    assert a.load_balancer is not None and a.load_balancer.consistent_hash is not None
    b = cluster_policy(DR, 80, "b")
    assert b is not None and b.outlier_detection is not None
    assert b.load_balancer is None and b.connection_pool is None  # the subset's port level wins outright
    assert cluster_policy(DR, 80, "c") == cluster_policy(DR, 80)
    assert cluster_policy(None, 80) is None


def test_hash_priority_subset_then_port_level_then_top() -> None:
    a = destination_hash(DR, None, "a")
    assert a is not None and a.use_source_ip
    p = destination_hash(DR, 81, "")
    assert p is not None and p.http_header_name == "p"
    assert destination_hash(DR, None, "") is None  # port-level applies only with an explicit port
    assert service_hash(DR, 81) is not None and service_hash(DR, 80) is None
    assert tcp_source_ip_hash(DR, "a") and not tcp_source_ip_hash(DR, "")


def _cluster(spec: dict[str, Any], *, h2: bool = False, subset: str = "") -> cluster_pb2.Cluster:
    dr = _dr(spec)
    meta = service_metadata([{"host": "echo.app.svc.cluster.local", "name": "echo", "namespace": "app"}])
    return service_cluster("c", meta, cluster_policy(dr, 80, subset), h2=h2, auto=False,
                           plain_transport=PASSTHROUGH)


def test_outlier_detection_mapping() -> None:
    c = _cluster({"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 4,
                                                         "minHealthPercent": 30}}})
    od = c.outlier_detection
    assert od.HasField("enforcing_success_rate") and od.enforcing_success_rate.value == 0
    assert od.HasField("consecutive_5xx") and od.enforcing_consecutive_5xx.value == 0
    assert od.consecutive_gateway_failure.value == 4 and od.enforcing_consecutive_gateway_failure.value == 100
    assert c.common_lb_config.healthy_panic_threshold.value == 30


def test_ring_hash_default_size_and_maglev() -> None:
    ring = _cluster({"trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}}})
    assert ring.lb_policy == cluster_pb2.Cluster.RING_HASH and ring.ring_hash_lb_config.minimum_ring_size.value == 1024
    mag = _cluster({"trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x",
                                                                          "maglev": {"tableSize": 7}}}}})
    assert mag.lb_policy == cluster_pb2.Cluster.MAGLEV and mag.maglev_lb_config.table_size.value == 7


def test_passthrough_is_original_dst_without_eds() -> None:
    c = _cluster({"trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}})
    assert c.type == cluster_pb2.Cluster.ORIGINAL_DST and c.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert not c.HasField("eds_cluster_config")


def test_no_policy_is_the_plain_template() -> None:
    meta = service_metadata([{"host": "h", "name": "n", "namespace": "ns"}])
    c = service_cluster("c", meta, None, h2=True, auto=False, plain_transport=PASSTHROUGH, subset="http")
    assert c.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert c.metadata.filter_metadata["istio"].fields["subset"].string_value == "http"
    assert "config" not in c.metadata.filter_metadata["istio"].fields
    assert c.transport_socket == PASSTHROUGH


def test_istio_mutual_and_disable_add_no_tls() -> None:
    for mode in ("ISTIO_MUTUAL", "DISABLE"):
        c = _cluster({"trafficPolicy": {"tls": {"mode": mode}}})
        assert c.transport_socket == PASSTHROUGH
