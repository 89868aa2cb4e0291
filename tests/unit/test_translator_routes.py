"""VirtualService route pieces (matches, retries, mirrors, faults, headers, redirects) as pure
functions, checked against Istio's documented mapping (docs/istio-waypoint-shape.md §4).
The golden cases show whole routes; these pin the rules and the edge cases one at a time."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.type.v3 import percent_pb2

from istiod_lite.model.networking import (
    ConsistentHashLB,
    Destination,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRetry,
    Percent,
    VirtualService,
)
from istiod_lite.translator.routing import route_actions as act
from istiod_lite.translator.routing.route_match import is_catch_all, route_match
from istiod_lite.translator.routing.routes import RouteScope, http_routes, translate_route


def _vs(http: list[dict[str, Any]], name: str = "vs", created: str = "") -> VirtualService:
    meta: dict[str, Any] = {"name": name, "namespace": "app"}
    if created:
        meta["creationTimestamp"] = created
    return VirtualService.model_validate({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                          "metadata": meta, "spec": {"hosts": ["echo"], "http": http}})


class _Targets:
    """Every destination is an owned HTTP service; no consistent hash unless configured."""

    def __init__(self, hashed: ConsistentHashLB | None = None) -> None:
        self.hashed = hashed

    def cluster(self, dest: Destination, namespace: str, listen_port: int) -> str:
        port = dest.port.number if dest.port else listen_port
        sub = f"http/{dest.subset}" if dest.subset else "http"
        return f"inbound-vip|{port}|{sub}|{dest.host}.{namespace}.svc.cluster.local"

    def consistent_hash(self, dest: Destination, namespace: str) -> ConsistentHashLB | None:
        return self.hashed


SCOPE = RouteScope(80, "app", _Targets())


def test_retry_on_integers_become_status_codes_and_the_condition_is_added() -> None:
    rp = act.retry_policy(HTTPRetry(attempts=3, retry_on="5xx,503,gateway-error,429"), consistent_hash=False)
    assert rp is not None
    assert rp.retry_on == "5xx,gateway-error,retriable-status-codes"
    assert list(rp.retriable_status_codes) == [503, 429]
    assert rp.num_retries.value == 3
    assert [p.name for p in rp.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]


def test_retry_condition_already_present_is_not_repeated() -> None:
    rp = act.retry_policy(HTTPRetry(attempts=1, retry_on="retriable-status-codes,502"), consistent_hash=False)
    assert rp is not None and rp.retry_on == "retriable-status-codes"


def test_zero_attempts_disable_retries_and_absent_retries_get_istio_default() -> None:
    assert act.retry_policy(HTTPRetry(attempts=0), consistent_hash=False) is None
    default = act.retry_policy(None, consistent_hash=False)
    assert default == act.default_retry_policy()
    assert default is not None and default.retry_on == act.DEFAULT_RETRY_ON and default.num_retries.value == 2


def test_consistent_hash_drops_previous_hosts_unless_asked_for() -> None:
    hashed = act.retry_policy(None, consistent_hash=True)
    assert hashed is not None and not hashed.retry_host_predicate
    explicit = act.retry_policy(HTTPRetry(attempts=2, retry_ignore_previous_hosts=True), consistent_hash=True)
    assert explicit is not None and len(explicit.retry_host_predicate) == 1


@pytest.mark.parametrize(("percentage", "legacy", "want"), [
    (None, None, (100, percent_pb2.FractionalPercent.HUNDRED)),
    (Percent(value=12.5), None, (125000, percent_pb2.FractionalPercent.MILLION)),
    (None, 30, (30, percent_pb2.FractionalPercent.HUNDRED)),
    (Percent(value=0), None, None),
    (None, 0, None),
])
def test_mirror_fraction(percentage: Percent | None, legacy: int | None, want: tuple[int, int] | None) -> None:
    got = act.mirror_fraction(percentage, legacy)
    assert (None if got is None else (got.numerator, got.denominator)) == want


def test_fault_percentages() -> None:
    f = act.fault(HTTPFaultInjection.model_validate(
        {"delay": {"fixedDelay": "1s", "percent": 7}, "abort": {"grpcStatus": "NOT_FOUND"}}))
    assert f is not None
    assert (f.delay.percentage.numerator, f.delay.percentage.denominator) == (7, percent_pb2.FractionalPercent.HUNDRED)
    assert f.delay.fixed_delay.seconds == 1
    assert f.abort.grpc_status == 5 and not f.abort.HasField("percentage")


def test_header_operations_sort_and_turn_authority_into_a_rewrite() -> None:
    ops = act.header_operations(Headers.model_validate({"request": {
        "set": {"b": "2", "a": "1", "Host": "h.example"}, "add": {"c": "3", ":authority": "ignored-for-set"},
        "remove": ["x"]}}))
    assert [(h.header.key, h.append_action) for h in ops.request_add] == [
        ("a", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("b", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("c", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)]
    assert ops.authority == "h.example"  # set wins over add
    assert ops.request_remove == ["x"]


def test_presence_and_inverted_matches() -> None:
    m = route_match(HTTPMatchRequest.model_validate({
        "withoutHeaders": {"x-a": {"regex": "*"}, "x-b": {"exact": "v"}}, "headers": {"x-c": {}},
        "queryParams": {"q": {}}, "ignoreUriCase": True}))
    by_name = {h.name: h for h in m.headers}
    assert by_name["x-a"].present_match and by_name["x-a"].invert_match
    assert not by_name["x-a"].treat_missing_header_as_empty
    assert by_name["x-b"].invert_match and by_name["x-b"].treat_missing_header_as_empty
    assert by_name["x-c"].present_match and not by_name["x-c"].invert_match
    assert m.query_parameters[0].present_match
    assert m.case_sensitive.value is False
    assert not is_catch_all(m)
    assert is_catch_all(route_match(HTTPMatchRequest.model_validate({"uri": {"prefix": "/"}})))


def test_unsupported_redirect_code_drops_the_route() -> None:
    vs = _vs([{"name": "r", "redirect": {"uri": "/x", "redirectCode": 304}}])
    assert translate_route(vs, vs.spec.http[0], None, SCOPE) is None


def test_source_labels_and_foreign_source_namespace_are_dropped_but_later_routes_survive() -> None:
    vs = _vs([
        {"name": "a", "match": [{"sourceLabels": {"app": "x"}, "uri": {"prefix": "/a"}},
                                {"sourceNamespace": "other", "uri": {"prefix": "/b"}},
                                {"sourceNamespace": "app", "uri": {"prefix": "/c"}}],
         "route": [{"destination": {"host": "echo"}}]},
        {"name": "rest", "route": [{"destination": {"host": "echo"}}]},
    ])
    assert [r.name for r in http_routes([vs], SCOPE)] == ["a", "rest"]
    assert http_routes([vs], SCOPE)[0].match.prefix == "/c"


def test_catch_all_of_one_virtual_service_ends_the_merged_list() -> None:
    first = _vs([{"name": "all", "route": [{"destination": {"host": "echo"}}]}], name="first")
    second = _vs([{"name": "late", "match": [{"uri": {"prefix": "/late"}}],
                   "route": [{"destination": {"host": "echo"}}]}], name="second")
    assert [r.name for r in http_routes([first, second], SCOPE)] == ["all"]
    assert [r.name for r in http_routes([second, first], SCOPE)] == ["late", "all"]


def test_weight_zero_and_unset_weights_are_dropped_from_weighted_clusters() -> None:
    vs = _vs([{"route": [{"destination": {"host": "echo", "subset": "a"}, "weight": 5},
                         {"destination": {"host": "echo", "subset": "b"}, "weight": 0},
                         {"destination": {"host": "echo", "subset": "c"}}]}])
    (r,) = http_routes([vs], SCOPE)
    assert [(c.name, c.weight.value) for c in r.route.weighted_clusters.clusters] == [
        ("inbound-vip|80|http/a|echo.app.svc.cluster.local", 5)]
    assert r.decorator.operation == "vs:80/*"


def test_single_destination_with_consistent_hash() -> None:
    scope = RouteScope(80, "app", _Targets(ConsistentHashLB(http_header_name="x-user")))
    vs = _vs([{"route": [{"destination": {"host": "echo"}}]}])
    (r,) = http_routes([vs], scope)
    assert r.route.hash_policy[0].header.header_name == "x-user"
    assert not r.route.retry_policy.retry_host_predicate
    assert r.decorator.operation == "echo.app.svc.cluster.local:80/*"
