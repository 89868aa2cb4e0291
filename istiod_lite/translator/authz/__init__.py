"""AuthorizationPolicy / RequestAuthentication -> the authorization filters of waypoint chains.

Pure (no I/O): a ``ConfigSnapshot`` (plus, for CUSTOM, a parsed mesh config) in, Envoy filter
protos out.  Facts: docs/istio-waypoint-shape.md §5; design and deviations: docs/authz.md.

    filters = authz_for_service(snapshot, waypoint_ref, "shop", "cart")
    inbound.http_chain(..., authz=filters.http)        # HTTP chains of the service
    tcp chain filters: [*filters.tcp, tcp_proxy]       # TCP chains of the service
    filters.clusters                                   # clusters the filters name (add them)
    authz_problems(snapshot)                           # what waypoints do not enforce, and why
"""

from istiod_lite.translator.authz.extauthz import ClusterRequest, parse_providers
from istiod_lite.translator.authz.generate import (
    EMPTY,
    AuthzFilters,
    AuthzTranslator,
    authz_for_direct,
    authz_for_service,
    authz_problems,
    translator_for,
)
from istiod_lite.translator.authz.matchers import DEFAULT_LIMITS, Limits
from istiod_lite.translator.authz.upstream import request_cluster

__all__ = [
    "DEFAULT_LIMITS",
    "EMPTY",
    "AuthzFilters",
    "AuthzTranslator",
    "ClusterRequest",
    "Limits",
    "authz_for_direct",
    "authz_for_service",
    "authz_problems",
    "parse_providers",
    "request_cluster",
    "translator_for",
]
