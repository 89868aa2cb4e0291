"""Which (apiVersion, kind) pairs the control plane understands, and turning a dict into a model.

Kind modules register their classes with ``@register``; ``parse_object`` is the one entry point
the sources use, so the YAML directory and the Kubernetes watch validate identically.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from istiod_lite.model.base import Resource
from istiod_lite.model.errors import ConfigError, errors_from_validation

_BY_API: dict[tuple[str, str], type[Resource]] = {}
_BY_KIND: dict[str, type[Resource]] = {}

R = TypeVar("R", bound=type[Resource])


def register(cls: R) -> R:
    """Class decorator: make ``cls`` parseable under each of its apiVersions."""
    for api_version in cls.api_versions():
        _BY_API[(api_version, cls.KIND)] = cls
    _BY_KIND[cls.KIND] = cls
    return cls


def kind_class(kind: str) -> type[Resource] | None:
    return _BY_KIND.get(kind)


def known_kinds() -> dict[str, type[Resource]]:
    return dict(_BY_KIND)


class UnknownKind(Exception):
    """apiVersion/kind is not one we serve; the document is reported and skipped."""


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
