"""networking.istio.io kinds: VirtualService, DestinationRule, ServiceEntry, WorkloadEntry.

Each kind lives in its own module (``networking_vs`` with ``networking_vs_http``, ``networking_dr``,
``networking_se``; shared pieces in ``networking_common``); this module is the one to import.
Importing it registers the kinds under ``networking.istio.io/{v1,v1beta1,v1alpha3}``.

Every field of the Istio API is modelled under its YAML (camelCase) name; the validation mirrors
Istio's admission webhook, so a config Istio accepts loads here and one it rejects is reported
with the path of the offending field.
"""

from __future__ import annotations

from istiod_lite.model.networking_common import (
    Destination,
    MatchLabelsSelector,
    Percent,
    PortSelector,
    PresenceStringMatch,
    StringMatch,
    WorkloadSelector,
)
from istiod_lite.model.networking_dr import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    CookieAttribute,
    DestinationRule,
    DestinationRuleSpec,
    HTTPCookie,
    HTTPSettings,
    LoadBalancerSettings,
    LocalityDistribute,
    LocalityFailover,
    LocalityLoadBalancerSetting,
    MagLev,
    OutlierDetection,
    PortTrafficPolicy,
    ProxyProtocol,
    RetryBudget,
    RingHash,
    Subset,
    TCPKeepalive,
    TCPSettings,
    TrafficPolicy,
    TunnelSettings,
    WarmupConfiguration,
)
from istiod_lite.model.networking_se import (
    Resolution,
    ServiceEntry,
    ServiceEntrySpec,
    ServicePort,
    WorkloadEntry,
    WorkloadEntrySpec,
)
from istiod_lite.model.networking_vs import (
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    RouteDestination,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
    VirtualService,
    VirtualServiceSpec,
)
from istiod_lite.model.networking_vs_http import (
    CorsPolicy,
    Delegate,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPBody,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    RegexRewrite,
)

__all__ = [
    "ClientTLSSettings", "ConnectionPoolSettings", "ConsistentHashLB", "CookieAttribute", "CorsPolicy",
    "Delegate", "Destination", "DestinationRule", "DestinationRuleSpec", "FaultAbort", "FaultDelay",
    "HTTPBody", "HTTPCookie", "HTTPDirectResponse", "HTTPFaultInjection", "HTTPMatchRequest", "HTTPMirrorPolicy",
    "HTTPRedirect", "HTTPRetry", "HTTPRewrite", "HTTPRoute", "HTTPRouteDestination", "HTTPSettings",
    "HeaderOperations", "Headers", "L4MatchAttributes", "LoadBalancerSettings", "LocalityDistribute",
    "LocalityFailover", "LocalityLoadBalancerSetting", "MagLev", "MatchLabelsSelector", "OutlierDetection",
    "Percent", "PortSelector", "PortTrafficPolicy", "PresenceStringMatch", "ProxyProtocol", "RegexRewrite",
    "Resolution", "RetryBudget", "RingHash", "RouteDestination", "ServiceEntry", "ServiceEntrySpec",
    "ServicePort", "StringMatch", "Subset", "TCPKeepalive", "TCPRoute", "TCPSettings", "TLSMatchAttributes",
    "TLSRoute", "TrafficPolicy", "TunnelSettings", "VirtualService", "VirtualServiceSpec", "WarmupConfiguration",
    "WorkloadEntry", "WorkloadEntrySpec", "WorkloadSelector",
]
