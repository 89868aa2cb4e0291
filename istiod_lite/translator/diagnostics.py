"""Every warning pass over a config, behind one call.

Valid configuration that a waypoint cannot use as written is reported, never silently dropped:
bindings that do not fit, route settings it ignores, authorization it does not enforce (or
enforces differently), Telemetry it cannot honour.  The server (log lines and
``istiod_lite_config_warnings``), ``istiod-lite validate`` and the golden tests all read them from
here, so a new pass is added once and appears everywhere.
"""

from __future__ import annotations

import re
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


#: Every message names its subject first ("Kind ns/name: ..."), possibly after a scope such as
#: "TCP chains: "; a message about no single object (e.g. several CUSTOM providers) has none.
_SUBJECT = re.compile(r"^(?:[A-Za-z ]+: )?([A-Z][A-Za-z]+) ([a-z0-9][-a-z0-9.]*)/([^\s:;,]+)")


@dataclass(frozen=True)
class Finding:
    """One diagnostics message with the object it is about, for tools (``explain``, ``analyze``)
    that attach messages to objects; the text is exactly the message the server logs."""

    category: str
    message: str
    #: The subject object; ("", "", "") when the message is about no single object.
    kind: str = ""
    namespace: str = ""
    name: str = ""

    def is_about(self, kind: str, namespace: str, name: str) -> bool:
        return (self.kind, self.namespace, self.name) == (kind, namespace, name)

    @property
    def detail(self) -> str:
        """The message after its subject ("Kind ns/name: " or "Kind ns/name "), for a reader who
        already knows the subject; a scope before the subject ("TCP chains: ") is kept."""
        if not self.kind:
            return self.message
        subject = f"{self.kind} {self.namespace}/{self.name}"
        head, sep, tail = self.message.partition(subject)
        if not sep:
            return self.message
        return head + tail.removeprefix(":").lstrip()


def finding(category: str, message: str) -> Finding:
    """``message`` with its subject parsed from its leading "Kind ns/name"."""
    m = _SUBJECT.match(message)
    if m is None:
        return Finding(category, message)
    return Finding(category, message, m.group(1), m.group(2), m.group(3))


def findings(found: Diagnostics) -> list[Finding]:
    """Every message of ``found`` as a ``Finding``, category by category."""
    return [finding(category, message) for category, messages in found.categories() for message in messages]


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
