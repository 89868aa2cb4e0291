"""The analysis message types: Istio's where Istio has one (code, name and level from Istio's
``pkg/config/analysis/msg/messages.yaml``), ``ISTL`` ones for what Istio does not check.

``ISTL`` codes are ours and stable: a script may suppress or grep them like Istio's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Levels, worst first (Istio's order).
ERROR: Final = "Error"
WARNING: Final = "Warning"
INFO: Final = "Info"
LEVELS: Final = (ERROR, WARNING, INFO)


def at_least(level: str, threshold: str) -> bool:
    """``level`` is as bad as ``threshold`` or worse."""
    return LEVELS.index(level) <= LEVELS.index(threshold)


@dataclass(frozen=True)
class MessageType:
    code: str
    name: str
    level: str
    description: str

    @property
    def documentation_url(self) -> str:
        if self.code.startswith("IST0"):
            return f"https://istio.io/latest/docs/reference/config/analysis/{self.code.lower()}/"
        return ""


# Istio's (same code, name and level as istioctl analyze).
REFERENCED_RESOURCE_NOT_FOUND = MessageType("IST0101", "ReferencedResourceNotFound", ERROR,
                                            "A resource being referenced does not exist.")
SCHEMA_VALIDATION_ERROR = MessageType("IST0106", "SchemaValidationError", ERROR,
                                      "The resource has a schema validation error.")
VIRTUAL_SERVICE_UNREACHABLE_RULE = MessageType("IST0130", "VirtualServiceUnreachableRule", WARNING,
                                               "A VirtualService rule will never be used because a previous rule "
                                               "uses the same match.")
VIRTUAL_SERVICE_INEFFECTIVE_MATCH = MessageType("IST0131", "VirtualServiceIneffectiveMatch", INFO,
                                                "A VirtualService rule match duplicates a match in a previous rule.")
SERVICE_ENTRY_ADDRESSES_REQUIRED = MessageType("IST0134", "ServiceEntryAddressesRequired", WARNING,
                                               "Virtual IP addresses are required (a waypoint matches traffic by "
                                               "address).")

# Ours: waypoint binding and what a waypoint does with config (Istio reports these, if at all, only
# as status conditions or not at all).
WAYPOINT_NOT_FOUND = MessageType("ISTL0001", "WaypointNotFound", ERROR,
                                 "An istio.io/use-waypoint label names a waypoint Gateway that does not exist.")
WAYPOINT_TRAFFIC_TYPE_MISMATCH = MessageType("ISTL0002", "WaypointTrafficTypeMismatch", ERROR,
                                             "The waypoint a label names does not take this kind of traffic "
                                             "(istio.io/waypoint-for).")
WAYPOINT_ATTACHMENT_DENIED = MessageType("ISTL0003", "WaypointAttachmentDenied", ERROR,
                                         "The waypoint's HBONE listener does not allow bindings from this namespace "
                                         "(allowedRoutes).")
L7_CONFIG_WITHOUT_WAYPOINT = MessageType("ISTL0004", "L7ConfigWithoutWaypoint", WARNING,
                                         "Routing, traffic policy, L7 security or telemetry names a service no "
                                         "waypoint serves: nothing applies it.")
SHADOWED_BY_HTTPROUTE = MessageType("ISTL0005", "ShadowedByHTTPRoute", WARNING,
                                    "A VirtualService is ignored on a waypoint because a Gateway API route (HTTPRoute, "
                                    "GRPCRoute, TCPRoute or TLSRoute) attaches to the same service.")
CONFIG_IN_WRONG_NAMESPACE = MessageType("ISTL0006", "ConfigInWrongNamespace", WARNING,
                                        "Config for a waypoint-served service is in a namespace the waypoint does not "
                                        "read it from (only its own and the service's).")
SERVICE_ENTRY_NOT_SERVABLE = MessageType("ISTL0007", "ServiceEntryNotServable", WARNING,
                                         "A ServiceEntry bound to a waypoint cannot be served by it.")
IGNORED_SETTING = MessageType("ISTL0008", "IgnoredSetting", WARNING,
                              "A setting waypoints do not support; what is done instead is in the message.")
POLICY_NOT_ON_WAYPOINT = MessageType("ISTL0009", "PolicyNotOnWaypoint", WARNING,
                                     "A policy uses a workload selector (or none) instead of targetRefs: waypoints do "
                                     "not apply it.")
AUTHORIZATION_ENFORCED_DIFFERENTLY = MessageType("ISTL0010", "AuthorizationEnforcedDifferently", WARNING,
                                                 "Part of an authorization policy cannot be enforced as written; it "
                                                 "fails closed.")
CONFIG_SUPERSEDED = MessageType("ISTL0011", "ConfigSuperseded", INFO,
                                "Another object of the same kind takes precedence for this service.")
SUBSET_SELECTS_NO_POD = MessageType("ISTL0012", "DestinationRuleSubsetSelectsNoPod", WARNING,
                                    "A DestinationRule subset's labels select no pod of the service: requests routed "
                                    "to it fail (503).")
CONFIG_NOT_EXPORTED = MessageType("ISTL0013", "ConfigNotExported", WARNING,
                                  "A DestinationRule, VirtualService, route destination or the service itself is not "
                                  "exported (exportTo) to the waypoint's namespace: the waypoint does not apply or see "
                                  "it.")
CONFIG_SHADOWED = MessageType("ISTL0014", "ConfigShadowed", WARNING,
                              "A DestinationRule is hidden by another namespace's rule searched first (the "
                              "waypoint's), or by a more specific host that is not exported to the waypoint.")
DESTINATION_RULE_MERGE_LOSS = MessageType("ISTL0015", "DestinationRuleMergeLoss", WARNING,
                                          "DestinationRules for the same host and exportTo are merged; a repeated "
                                          "subset or a later trafficPolicy is ignored.")

ALL: Final = (REFERENCED_RESOURCE_NOT_FOUND, SCHEMA_VALIDATION_ERROR, VIRTUAL_SERVICE_UNREACHABLE_RULE,
              VIRTUAL_SERVICE_INEFFECTIVE_MATCH, SERVICE_ENTRY_ADDRESSES_REQUIRED, WAYPOINT_NOT_FOUND,
              WAYPOINT_TRAFFIC_TYPE_MISMATCH, WAYPOINT_ATTACHMENT_DENIED, L7_CONFIG_WITHOUT_WAYPOINT,
              SHADOWED_BY_HTTPROUTE, CONFIG_IN_WRONG_NAMESPACE, SERVICE_ENTRY_NOT_SERVABLE, IGNORED_SETTING,
              POLICY_NOT_ON_WAYPOINT, AUTHORIZATION_ENFORCED_DIFFERENTLY, CONFIG_SUPERSEDED, SUBSET_SELECTS_NO_POD,
              CONFIG_NOT_EXPORTED, CONFIG_SHADOWED, DESTINATION_RULE_MERGE_LOSS)
