"""Every warning pass over a config, behind one call.

Valid configuration that a waypoint cannot use as written is reported, never silently dropped:
bindings that do not fit, route settings it ignores, authorization it does not enforce (or
enforces differently), Telemetry it cannot honour.  The server (log lines and
``istiod_lite_config_warnings``), ``istiod-lite validate`` and the golden tests all read them from
here, so a new pass is added once and appears everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.translator.authz import authz_problems
from istiod_lite.translator.binding.waypoints import binding_problems
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.translator.config_warnings import dynamic_dns_warnings, route_warnings
from istiod_lite.translator.export_warnings import export_warnings
from istiod_lite.translator.telemetry import telemetry_warnings


@dataclass(frozen=True)
class Diagnostics:
    """The messages of each pass in the order the pass gives them (route and telemetry messages
    are sorted, binding and authorization ones follow the config); empty where nothing was found."""

    #: Waypoint bindings that do not fit (never used).
    binding: tuple[str, ...] = ()
    #: Route, DestinationRule and ServiceEntry settings a waypoint ignores, and rules it does not
    #: apply because of exportTo, precedence or merging (``export_warnings``).
    routes: tuple[str, ...] = ()
    #: Authorization a waypoint does not attach or enforces differently (fail-closed parts).
    authorization: tuple[str, ...] = ()
    #: Telemetry settings upstream Envoy cannot honour.
    telemetry: tuple[str, ...] = ()

    def categories(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(category, messages) in a fixed order; the category names are the metric's labels."""
        yield "binding", self.binding
        yield "route", self.routes
        yield "authorization", self.authorization
        yield "telemetry", self.telemetry


def diagnose(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None,
             dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS) -> Diagnostics:
    """Run every warning pass over ``snapshot`` (each pass memoises on the kinds it reads);
    ``dynamic_dns``: the server's options for ``DYNAMIC_DNS`` entries (what it leaves unserved)."""
    return Diagnostics(
        binding=tuple(binding_problems(snapshot)),
        routes=tuple(sorted([*route_warnings(snapshot), *dynamic_dns_warnings(snapshot, dynamic_dns),
                             *export_warnings(snapshot, mesh)])),
        authorization=tuple(authz_problems(snapshot, mesh_config=mesh)),
        telemetry=tuple(telemetry_warnings(snapshot, mesh)),
    )
