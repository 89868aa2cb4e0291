"""Gateway API TCPRoutes and TLSRoutes as VirtualService ``tcp`` and ``tls`` rules, as Istio
converts them (``convertTCPRoute``, ``convertTLSRoute``, ``buildTCPDestination``,
``buildTLSMatch``, ``augmentTCPPortMatch``, ``augmentTLSPortMatch``, ``compatibleRoutesForHost``
in istio/istio ``pilot/pkg/config/kube/gateway/conversion.go``; the VirtualServices themselves are
built per parent host in ``mesh_routes``).

* One VirtualService rule per route rule.  Backends: weight 0 dropped; a lone backend gets weight
  0 (no weight); no positive weight at all -> the one destination
  ``internal.cluster.local:65535`` subset ``zero-weight``, a cluster that does not exist, so every
  connection is refused (the spec: such connections MUST be rejected).
* TLSRoute: the rule matches ``sniHosts`` = the route's ``hostnames`` (``*`` without any); for a
  mesh parent ``*`` becomes the parent's hosts, a parent ``port`` is set on the match, and per
  parent host only the SNI names that overlap it are kept (when there are several).  A waypoint
  then applies a ``tls`` rule to a service only when its one SNI name is the service's FQDN
  (``tcp_routes``): it does not read the SNI of a connection, it decides per service.
* TCPRoute: a parent ``port`` becomes the rule's only match (``port``); otherwise no match.
"""

from __future__ import annotations

from collections.abc import Sequence

from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.networking import (
    Destination,
    L4MatchAttributes,
    PortSelector,
    RouteDestination,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
)
from istiod_lite.model.networking_common import host_matches
from istiod_lite.translator.core import tables
from istiod_lite.translator.routing.httproute import ConversionError, destination

#: Where Istio sends a rule without a positive weight: a host no one serves.
ZERO_WEIGHT = Destination.model_construct(host="internal.cluster.local", subset="zero-weight",
                                          port=PortSelector.model_construct(number=65535))


def _destinations(route: gr.TCPRoute | gr.TLSRoute, index: int, rule: gr.L4RouteRule, problems: list[str]
                  ) -> tuple[RouteDestination, ...]:
    """``buildTCPDestination`` (or the zero-weight destination)."""
    if sum(b.weight for b in rule.backend_refs) == 0:
        return (RouteDestination.model_construct(destination=ZERO_WEIGHT, weight=None),)
    what = f"{route.kind} {route.namespace}/{route.name} rules[{index}]"
    kept = [b for b in rule.backend_refs if b.weight > 0]
    return tuple(RouteDestination.model_construct(
        destination=destination(b.kind, b.group, b.name, b.namespace, b.port, route.namespace, problems, what),
        weight=b.weight if len(kept) > 1 else None) for b in kept)


def convert_tcp(route: gr.TCPRoute, problems: list[str]) -> tuple[TCPRoute, ...] | None:
    """Every rule of a TCPRoute; None if Istio would reject the route."""
    try:
        return tuple(TCPRoute.model_construct(match=(), route=_destinations(route, i, r, problems))
                     for i, r in enumerate(route.spec.rules))
    except ConversionError as e:
        problems.append(f"{e}; the route is not applied")
        return None


def convert_tls(route: gr.TLSRoute, problems: list[str]) -> tuple[TLSRoute, ...] | None:
    """Every rule of a TLSRoute, matching its hostnames (``*`` for none); None if Istio would
    reject the route."""
    sni = tuple(route.spec.hostnames) or ("*",)
    try:
        return tuple(TLSRoute.model_construct(match=(TLSMatchAttributes.model_construct(sni_hosts=sni),),
                                              route=_destinations(route, i, r, problems))
                     for i, r in enumerate(route.spec.rules))
    except ConversionError as e:
        problems.append(f"{e}; the route is not applied")
        return None


def tcp_for_parent(rules: Sequence[TCPRoute], port: int | None) -> tuple[TCPRoute, ...]:
    """``augmentTCPPortMatch``: a parent port restricts every rule to it."""
    if port is None:
        return tuple(rules)
    out = []
    for r in rules:
        matches = tuple(m.model_copy(update={"port": port}) for m in r.match) or \
            (L4MatchAttributes.model_construct(port=port),)
        out.append(r.model_copy(update={"match": matches}))
    return tuple(out)


def tls_for_parent(rules: Sequence[TLSRoute], port: int | None, parent_hosts: Sequence[str], host: str
                   ) -> tuple[TLSRoute, ...]:
    """``augmentTLSPortMatch`` then ``compatibleRoutesForHost`` for one of the parent's hosts."""
    out = []
    for r in rules:
        matches = list(r.match)
        if len(matches) == 1 and matches[0].sni_hosts == ("*",):
            matches[0] = matches[0].model_copy(update={"sni_hosts": tuple(parent_hosts)})
        if port is not None:
            matches = [m.model_copy(update={"port": port}) for m in matches]
        if len(matches) == 1 and len(matches[0].sni_hosts) > 1:
            kept = tuple(h for h in matches[0].sni_hosts if host_matches(host, h))
            matches[0] = matches[0].model_copy(update={"sni_hosts": kept})
        out.append(r.model_copy(update={"match": tuple(matches)}))
    return tuple(out)


@tables.CONVERTED_TCP_ROUTE.computed_by
def _converted_tcp(route: gr.TCPRoute) -> tuple[tuple[TCPRoute, ...] | None, tuple[str, ...]]:
    problems: list[str] = []
    return convert_tcp(route, problems), tuple(problems)


@tables.CONVERTED_TLS_ROUTE.computed_by
def _converted_tls(route: gr.TLSRoute) -> tuple[tuple[TLSRoute, ...] | None, tuple[str, ...]]:
    problems: list[str] = []
    return convert_tls(route, problems), tuple(problems)
