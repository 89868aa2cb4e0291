"""Everything the rest of the control plane needs to know about a config kind, declared once.

Why: a kind used to be listed by hand in four places (the cluster watch list, the ClusterRole,
the xDS types a change affects, the waypoint's read set), and forgetting the last one silently
served stale config.  Now each model class is registered with a ``KindDeclaration``
(``@register(KindDeclaration(...))``, ``model/registry.py``) and those places are derived from it:
``sources/kube.py`` ``KINDS``, ``deploy/rbac.yaml`` (``scripts/gen_rbac.py``),
``controlplane/affects.py`` ``AFFECTS`` and ``translator/waypoint/translator.py`` ``_READ_KINDS``.

The model knows nothing of xDS: the resource types a change affects are plain strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The Envoy resource types a config change can alter, by their xDS short names.
LDS, RDS, CDS, EDS, ECDS = "LDS", "RDS", "CDS", "EDS", "ECDS"
XDS_TYPES = frozenset({LDS, RDS, CDS, EDS, ECDS})


class WaypointRead(enum.Enum):
    """How a waypoint's translation (``WaypointTranslator``) reads the kind.

    Its whole-waypoint shortcut returns the previous output when nothing it reads changed; a kind
    read but not accounted for there would serve stale config, so every kind says which it is.
    """

    #: Every object of the kind: compared whole (the kind's map in the snapshot, ``_READ_KINDS``).
    WHOLE = "whole"
    #: Only through the waypoint's bindings (``translator/binding/waypoints.py``): the bound objects are
    #: compared, and a change that rebinds shows up in them.
    BOUND = "bound"
    #: A narrower selection the translator computes and compares itself (VirtualServices of the
    #: relevant namespaces, HTTPRoutes attached to bound services).
    NARROWER = "narrower"
    #: Not by ``WaypointTranslator`` but by a later stage with its own memo (Telemetry's access
    #: logs: ``translator/telemetry/apply.py``).
    AFTER = "after"
    #: Not read by waypoints at all.
    NONE = "none"


class StatusWriter(enum.Enum):
    """Who writes the kind's ``status`` subresource (each needs ``patch`` on ``<plural>/status``)."""

    NONE = "none"
    #: The cluster source writes why an object was rejected (``sources/kube_status.py``).
    REJECTIONS = "rejections"
    #: The waypoint controller writes a waypoint Gateway's address (``controlplane/waypoint_controller.py``).
    WAYPOINT_CONTROLLER = "waypoint-controller"


@dataclass(frozen=True)
class KindDeclaration:
    """What a kind's model class does not already say (its ``KIND``, ``GROUP``, ``VERSIONS`` and
    ``NAMESPACED`` class variables do: the first version is the one watched)."""

    #: The API's resource name: ``/apis/<group>/<version>/<plural>``, RBAC rules, CRD names.
    plural: str
    #: The xDS types a change to an object of the kind can alter (empty: none).
    affects: frozenset[str]
    waypoint: WaypointRead
    #: Defined by a CustomResourceDefinition (deploy/crds-*.yaml), which a cluster may lack; the
    #: watch tolerates its absence.  False for built-in Kubernetes kinds.
    crd: bool = True
    status: StatusWriter = StatusWriter.NONE
    #: The ambient status writer (controlplane/ambient_status.py) also patches the kind's status:
    #: istiod's binding conditions (needs ``patch`` on ``<plural>/status`` too).
    ambient_status: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.affects) - XDS_TYPES
        if unknown:
            raise ValueError(f"affects: unknown xDS types {sorted(unknown)} (known: {sorted(XDS_TYPES)})")
        if not self.plural or self.plural != self.plural.lower():
            raise ValueError(f"plural must be a lowercase resource name, not {self.plural!r}")


@dataclass(frozen=True)
class DeclaredKind:
    """A registered kind: its model class's identity plus its declaration, for whoever derives from it."""

    kind: str
    group: str
    #: The version the cluster is watched at (the model class's first ``VERSIONS`` entry).
    version: str
    namespaced: bool
    declaration: KindDeclaration

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def plural(self) -> str:
        return self.declaration.plural

    @property
    def resource_name(self) -> str:
        """``plural.group`` as RBAC and CRDs name it (a core kind: just the plural)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural
