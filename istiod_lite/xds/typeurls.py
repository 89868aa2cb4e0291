"""xDS type URLs and the per-type rules that do not depend on any client's state."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION_CONFIG = _PREFIX + "envoy.config.core.v3.TypedExtensionConfig"

#: Push order on one ADS stream (xDS "eventual consistency considerations"): clusters before the
#: endpoints that warm them, listeners before the routes they name.  Filter configs (ECDS) go
#: before listeners: an update of a config a listener already names reaches the proxy before a
#: listener change pushed with it, and a config may name clusters (ext_authz), which come first.
#: (A name a new listener introduces is asked for only once that listener arrives; Envoy keeps the
#: listener warming until it is answered.)
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET)

#: Types whose SotW responses carry the full set (a missing resource means "deleted") and for
#: which an empty subscription means legacy wildcard.
FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER})
#: Types for which a first Delta request naming nothing means wildcard (legacy wildcard, R21):
#: LDS and CDS, plus any type a proxy kind declares (``declare_wildcard_type``).  Kept here as a
#: set of opaque strings so the xDS layer needs no knowledge of who declares them.
WILDCARD_TYPES: set[str] = set(FULL_STATE_TYPES)


def declare_wildcard_type(type_url: str) -> None:
    """Let a client's empty first request for ``type_url`` mean "everything" (as istiod treats
    every type but EDS, RDS, SDS and ECDS); called once by the proxy kind that serves the type."""
    WILDCARD_TYPES.add(type_url)

SHORT_NAMES = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS", SECRET: "SDS",
               EXTENSION_CONFIG: "ECDS"}


def short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def push_rank(type_url: str) -> int:
    try:
        return PUSH_ORDER.index(type_url)
    except ValueError:
        return len(PUSH_ORDER)
