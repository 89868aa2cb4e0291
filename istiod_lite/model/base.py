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

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

#: One set object per distinct combination of explicitly set field names (see ``_share_fields_set``).
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_FIELDS_SETS_LIMIT = 8192


def _share_fields_set(model: BaseModel) -> BaseModel:
    """Give a frozen model the one shared ``__pydantic_fields_set__`` equal to its own.

    Why: pydantic keeps a fresh ``set`` of the explicitly set field names in every instance, and a
    set costs 216-728 bytes: 80 MB of the 220 MB a 10,000-service config takes (bench/bench_scale.py),
    though a config has only a few hundred distinct combinations.  Safe for frozen models only:
    nothing mutates their set (assignment is refused; ``model_copy`` copies the set before adding
    to it), so an equal shared one is indistinguishable.
    """
    if not model.model_config.get("frozen"):
        return model  # a subclass that allows assignment would add to the shared set
    own = model.__pydantic_fields_set__
    key = frozenset(own)
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        if len(_FIELDS_SETS) >= _FIELDS_SETS_LIMIT:
            return model
        shared = _FIELDS_SETS[key] = set(key)
    object.__setattr__(model, "__pydantic_fields_set__", shared)
    return model


class _SharedFieldsSet(BaseModel):
    """Base of every frozen config model: instances share their fields-set (``_share_fields_set``)."""

    @model_validator(mode="after")
    def _share(self) -> Any:
        return _share_fields_set(self)


class IstioModel(_SharedFieldsSet):
    """Strict model: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=False,
        validate_default=False,
    )


class KubeModel(_SharedFieldsSet):
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
    #: Set while an object is being deleted (a terminating pod is an unhealthy workload).
    deletion_timestamp: str = ""


class Resource(_SharedFieldsSet):
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
