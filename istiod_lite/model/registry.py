"""Which (apiVersion, kind) pairs the control plane understands, and turning a dict into a model.

Kind modules register their classes with ``@register(KindDeclaration(...))``; ``parse_object`` is
the one entry point the sources use, so the YAML directory and the Kubernetes watch validate
identically.  ``declared_kinds`` is what the watch list, the ClusterRole, the xDS types a change
affects and the waypoint's read set are derived from (``model/kind_declaration.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from istiod_lite.model.base import Resource
from istiod_lite.model.errors import ConfigError, errors_from_validation
from istiod_lite.model.ignored_kinds import CLUSTER_SCOPED, ignored_reason
from istiod_lite.model.kind_declaration import DeclaredKind, KindDeclaration, WaypointRead

_BY_API: dict[tuple[str, str], type[Resource]] = {}
_BY_KIND: dict[str, type[Resource]] = {}
_DECLARED: dict[str, DeclaredKind] = {}

R = TypeVar("R", bound=type[Resource])


def register(declaration: KindDeclaration) -> Callable[[R], R]:
    """Class decorator: make the class parseable under each of its apiVersions, and record its
    declaration (a kind cannot be registered without saying how it is watched, what its changes
    affect and how waypoints read it)."""

    def add(cls: R) -> R:
        if cls.KIND in _BY_KIND:
            raise ValueError(f"kind {cls.KIND} registered twice")
        for api_version in cls.api_versions():
            _BY_API[(api_version, cls.KIND)] = cls
        _BY_KIND[cls.KIND] = cls
        _DECLARED[cls.KIND] = DeclaredKind(cls.KIND, cls.GROUP, cls.VERSIONS[0], cls.NAMESPACED, declaration)
        return cls

    return add


def kind_class(kind: str) -> type[Resource] | None:
    return _BY_KIND.get(kind)


def known_kinds() -> dict[str, type[Resource]]:
    return dict(_BY_KIND)


def declared_kinds() -> tuple[DeclaredKind, ...]:
    """Every registered kind with its declaration, in registration order."""
    return tuple(_DECLARED.values())


def kinds_read_whole_by_waypoints() -> tuple[str, ...]:
    """The kinds a waypoint's translation reads every object of (``WaypointRead.WHOLE``)."""
    return tuple(d.kind for d in _DECLARED.values() if d.declaration.waypoint is WaypointRead.WHOLE)


class UnknownKind(Exception):
    """apiVersion/kind is not one we serve; the document is reported and skipped."""


class KindIgnored(Exception):
    """A kind real manifests carry that waypoints have no use for (``model/ignored_kinds.py``):
    ``notice`` says which object and why; it is reported as ignored, not as an error."""

    def __init__(self, notice: ConfigError) -> None:
        super().__init__(str(notice))
        self.notice = notice


def parse_object(obj: Any, *, source: str = "", doc_index: int | None = None) -> Resource:
    """Validate one decoded document.  Raises ``ResourceInvalid`` carrying every error found."""
    if not isinstance(obj, dict):
        raise ResourceInvalid([ConfigError("document is not a mapping", source=source, doc_index=doc_index)])
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = meta.get("name", "") if isinstance(meta.get("name", ""), str) else ""
    namespace = meta.get("namespace", "") if isinstance(meta.get("namespace", ""), str) else ""
    ctx = {"source": source, "doc_index": doc_index, "kind": str(kind or ""), "namespace": namespace, "name": name}
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise ResourceInvalid([ConfigError("apiVersion and kind are required strings", **ctx)])  # type: ignore[arg-type]
    cls = _BY_API.get((api_version, kind))
    if cls is None and (reason := ignored_reason(api_version, kind)) is not None:
        if not namespace and kind not in CLUSTER_SCOPED:
            ctx["namespace"] = "default"
        raise KindIgnored(ConfigError(f"{api_version}/{kind} is ignored: {reason}", **ctx))  # type: ignore[arg-type]
    if cls is None:
        known = sorted(v for (v, k) in _BY_API if k == kind)
        hint = f" (supported apiVersions: {', '.join(known)})" if known else ""
        raise ResourceInvalid(
            [ConfigError(f"unsupported apiVersion/kind {api_version}/{kind}{hint}", field_path="apiVersion", **ctx)]  # type: ignore[arg-type]
        )
    if cls.NAMESPACED and not namespace:
        obj = {**obj, "metadata": {**meta, "namespace": "default"}}
        ctx["namespace"] = "default"
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise ResourceInvalid(errors_from_validation(exc, **ctx)) from None  # type: ignore[arg-type]


class ResourceInvalid(Exception):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
