"""Base classes shared by every config kind.

Two strictness levels, on purpose:

* ``IstioModel`` — Istio and Gateway API kinds.  Unknown fields are errors, because a typo in a
  policy (``paths`` spelled ``path``) silently widening or narrowing it is the worst outcome.
* ``KubeModel`` — Kubernetes core kinds.  Users point the server at their real manifests, which
  carry containers, probes, resources and much more that we never read; those fields are accepted
  and dropped, and only what the project uses is kept.

Field names on the wire are Istio's camelCase; Python attributes are snake_case (pydantic aliases).
Every model is frozen: a snapshot is shared by the translator and never mutated.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class IstioModel(BaseModel):
    """Strict model: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=False,
        validate_default=False,
    )


class KubeModel(BaseModel):
    """Lenient model for Kubernetes core kinds: unknown fields are accepted and dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


class OwnerReference(KubeModel):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""


class ObjectMeta(KubeModel):
    """The subset of Kubernetes ObjectMeta the control plane reads.

    ``creationTimestamp`` is kept as the raw string: Istio orders services and VirtualServices by
    creation time, and RFC 3339 strings of one format sort the same way as the instants they name.
    """

    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str = ""
    resource_version: str = ""
    generation: int = 0
    uid: str = ""
    owner_references: tuple[OwnerReference, ...] = ()


class Resource(BaseModel):
    """A top-level config object: apiVersion, kind, metadata and (per kind) spec/status/etc.

    Subclasses set ``KIND``, ``GROUP``, ``VERSIONS`` and whether the kind is namespaced, and
    declare their own ``spec`` (and ``status`` where the control plane reads it).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    KIND: ClassVar[str] = ""
    GROUP: ClassVar[str] = ""  # "" is the core group
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = True
    #: Kinds whose envelope and spec are lenient (Kubernetes core kinds).
    LENIENT: ClassVar[bool] = False

    api_version: str
    kind: str
    metadata: ObjectMeta

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def name(self) -> str:
        return self.metadata.name

    @classmethod
    def api_versions(cls) -> tuple[str, ...]:
        if cls.GROUP:
            return tuple(f"{cls.GROUP}/{v}" for v in cls.VERSIONS)
        return cls.VERSIONS


class KubeResource(Resource):
    """Envelope for Kubernetes core kinds: unknown top-level fields are accepted and dropped."""

    model_config = ConfigDict(extra="ignore")
    LENIENT: ClassVar[bool] = True


def dump(model: BaseModel) -> dict[str, Any]:
    """Serialise a model back to its wire (camelCase) form, dropping unset defaults."""
    return model.model_dump(by_alias=True, exclude_defaults=True, mode="json")
