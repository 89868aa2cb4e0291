"""Typed, validated Istio / Gateway API / Kubernetes config model.

Importing this package registers every kind, so ``parse_object`` understands all of them.
"""

from istiod_lite.model import (
    core,  # noqa: F401  (registers kinds)
    gateway,  # noqa: F401
    gateway_routes,  # noqa: F401
    networking,  # noqa: F401
    security,  # noqa: F401
    telemetry,  # noqa: F401
)
from istiod_lite.model.base import Resource
from istiod_lite.model.errors import ConfigError
from istiod_lite.model.registry import ResourceInvalid, known_kinds, parse_object
from istiod_lite.model.snapshot import ConfigSnapshot, ResourceKey

__all__ = [
    "ConfigError",
    "ConfigSnapshot",
    "Resource",
    "ResourceInvalid",
    "ResourceKey",
    "known_kinds",
    "parse_object",
]
