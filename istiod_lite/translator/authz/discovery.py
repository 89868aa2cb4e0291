"""A chain's authorization filters as ECDS slots: the listener names a slot, its config is a resource.

Why: a filter config embedded in ``main_internal`` makes every policy edit a new listener - the
whole listener (megabytes on a big waypoint) to every replica, and Envoy drains the chains that
changed, so kept-alive connections keep the old policy until they close.  Here each filter is an
HTTP filter (or network filter) with ``config_discovery`` naming a ``TypedExtensionConfig``
resource; an edit changes only those resources (a few hundred bytes each), Envoy swaps the config
in place, and the next request on an open HTTP connection already sees it.  Measurements and
limits: docs/upstream-envoy.md, "Authorization over ECDS".

Slot names are ``authz|<http|tcp>|<role>|<scope>``: the scope is the service host (all chains of a
service share its policies, hence its slots) or ``@direct`` for ``direct-http``/``direct-tcp``; the
role is the filter's place in Istio's order (``authz.generate``).  The listener's entry depends on
the name and the config's type only, so it stays byte-identical while the content changes.

Fixed slots: ``deny`` and ``allow`` are present on every chain, empty (an RBAC without ``rules``
enforces nothing) when no such policy applies, so the first DENY/ALLOW policy of a service - the
usual way to lock one down - is also an ECDS-only change.  AUDIT, CUSTOM and RequestAuthentication
filters appear with their policies (their arrival changes the listener), which keeps the listener
and the number of resources (each is an Envoy subscription with its own stats) small.

Fail closed: no ``default_config``.  Envoy keeps a listener warming until every slot it names has
a config, so a new chain is not served before its authorization arrives; if a config never
arrives (SotW, after the initial fetch timeout) an HTTP request is answered 500 and a TCP
connection is closed - never allowed.  The server always serves a listener's slots from the same
snapshot as the listener.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from envoy.config.core.v3 import config_source_pb2, extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from google.protobuf import any_pb2

from istiod_lite.translator.authz.generate import AuthzFilters
from istiod_lite.translator.authz.rbac import ACTION_ORDER, TCP_STAT_PREFIX, HttpFilter, NetworkFilter
from istiod_lite.translator.core.protos import packed

#: Enforcing slots every chain carries, filled or empty (see the module docstring for why these two).
FIXED_ROLES: Final[frozenset[str]] = frozenset({"deny", "allow"})
#: The scope of the ``direct-http``/``direct-tcp`` chains' slots (never a host name).
DIRECT_SCOPE: Final = "@direct"
_ENFORCING: Final = tuple(a.lower() for a in ACTION_ORDER)
_EMPTY_HTTP: Final = packed(http_rbac_pb2.RBAC())
_EMPTY_TCP: Final = packed(net_rbac_pb2.RBAC(stat_prefix=TCP_STAT_PREFIX))


def slot_name(protocol: str, role: str, scope: str) -> str:
    """The ECDS resource name (and the filter's name in the listener) of one slot."""
    return f"authz|{protocol}|{role}|{scope}"


@dataclass(frozen=True, eq=False)
class DiscoveredAuthz:
    """One scope's authorization as the listener's slot entries and the resources they name.

    ``http``/``tcp``: filters to put where the inline ones went (``inbound.http_chain(authz=...)``,
    ``inbound.with_network_filters``); ``http_configs``/``tcp_configs``: the ECDS resources by
    name, to serve with the listener (only those of the chain kinds the scope has)."""

    http: tuple[HttpFilter, ...]
    tcp: tuple[NetworkFilter, ...]
    http_configs: Mapping[str, extension_pb2.TypedExtensionConfig]
    tcp_configs: Mapping[str, extension_pb2.TypedExtensionConfig]
    #: The slot names in order (equal tuples mean byte-identical listener entries).
    slots: tuple[tuple[str, ...], tuple[str, ...]]


def _slots(roles: Sequence[str], configs: Sequence[any_pb2.Any], empty: any_pb2.Any
           ) -> list[tuple[str, any_pb2.Any]]:
    """Roles in Istio's order with the fixed enforcing slots added (empty) where absent."""
    present = dict(zip(roles, configs, strict=True))
    out = [(r, c) for r, c in present.items() if r not in _ENFORCING]
    out += [(r, present.get(r, empty)) for r in _ENFORCING if r in present or r in FIXED_ROLES]
    return out


def _source(type_url: str) -> config_source_pb2.ExtensionConfigSource:
    src = config_source_pb2.ExtensionConfigSource(type_urls=[type_url])
    src.config_source.ads.SetInParent()
    src.config_source.resource_api_version = config_source_pb2.V3
    return src


def _build(az: AuthzFilters, scope: str) -> DiscoveredAuthz:
    http: list[HttpFilter] = []
    http_configs: dict[str, extension_pb2.TypedExtensionConfig] = {}
    for role, cfg in _slots(az.http_roles, [f.typed_config for f in az.http], _EMPTY_HTTP):
        name = slot_name("http", role, scope)
        http.append(HttpFilter(name=name, config_discovery=_source(cfg.type_url)))
        http_configs[name] = extension_pb2.TypedExtensionConfig(name=name, typed_config=cfg)
    tcp: list[NetworkFilter] = []
    tcp_configs: dict[str, extension_pb2.TypedExtensionConfig] = {}
    for role, cfg in _slots(az.tcp_roles, [f.typed_config for f in az.tcp], _EMPTY_TCP):
        name = slot_name("tcp", role, scope)
        tcp.append(NetworkFilter(name=name, config_discovery=_source(cfg.type_url)))
        tcp_configs[name] = extension_pb2.TypedExtensionConfig(name=name, typed_config=cfg)
    return DiscoveredAuthz(tuple(http), tuple(tcp), http_configs, tcp_configs,
                           (tuple(f.name for f in http), tuple(f.name for f in tcp)))


def discovered(az: AuthzFilters, scope: str) -> DiscoveredAuthz:
    """``az`` as ECDS slots for ``scope``.  Not memoised here: callers build it only when they rebuild
    the chains it goes into (the waypoint translator's per-service fragment memo)."""
    return _build(az, scope)
