"""The translator's product: protobuf resources by type URL and name.

Plain messages, no versions: versioning is the control plane's and the xDS layer's job.  One
exception, for memory: a server keeps every service's resources for as long as the service is
unchanged, and a upb message takes 7-12x its wire size (10,000 services: ~300 MB of messages for
~50 MB of bytes), so a translator asked to (``WaypointTranslator(encoded=True)``) keeps its
per-service resources as ``Encoded`` - their deterministic serialisation - and hands those out.
Whoever needs a message parses one (``as_message``); the server serialises nothing twice.

Resources are keyed by the type URL a proxy subscribes with, so whoever versions or renders them
loops over one map instead of repeating a field per kind, and a kind of proxy whose types are not
Envoy's (ztunnel's ``istio.workload.Address``) fits the same container.  The URL is derived from
the message descriptor, so the translator needs nothing from the xDS layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeAlias, TypeVar, cast, overload

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

_M = TypeVar("_M", bound=Message)


def type_url_of(message_type: type[Message]) -> str:
    """The xDS type URL of a message type: ``type.googleapis.com/`` + its full protobuf name."""
    return "type.googleapis.com/" + str(message_type.DESCRIPTOR.full_name)


LISTENER = type_url_of(listener_pb2.Listener)
ROUTE = type_url_of(route_pb2.RouteConfiguration)
CLUSTER = type_url_of(cluster_pb2.Cluster)
ENDPOINT = type_url_of(endpoint_pb2.ClusterLoadAssignment)
SECRET = type_url_of(secret_pb2.Secret)
#: ECDS: filter configs a listener names (``config_discovery``) instead of embedding them, so they
#: change without a listener update (authorization: docs/upstream-envoy.md, "Authorization over ECDS").
EXTENSION_CONFIG = type_url_of(extension_pb2.TypedExtensionConfig)
#: What a waypoint (and a proxyless gRPC client) is served, in this order.
ENVOY_TYPES: tuple[str, ...] = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET, EXTENSION_CONFIG)


@dataclass(frozen=True, slots=True, eq=False)
class Encoded:
    """One resource kept as its deterministic serialisation (``SerializeToString(deterministic=True)``,
    the very bytes the server would produce from the message) instead of as a message.

    Compared by identity, like messages in the memos: the same object means the same resource, so the
    control plane's ``VersionedCache`` versions it once for as long as the translator re-uses it.
    """

    type_url: str
    data: bytes

    @classmethod
    def of(cls, type_url: str, message: Message) -> Encoded:
        return cls(type_url, message.SerializeToString(deterministic=True))

    def message(self) -> Message:
        """The resource parsed again: a new message on every call (nothing is cached, on purpose)."""
        return MESSAGE_TYPES[self.type_url].FromString(self.data)


#: A resource in ``EnvoyResources``: a message, or (translators asked for it) its serialisation.
Resource: TypeAlias = Message | Encoded


def as_message(resource: Resource) -> Message:
    """The resource as a protobuf message (parsed if it is ``Encoded``)."""
    return resource.message() if isinstance(resource, Encoded) else resource


class _Section(Generic[_M]):
    """``res.listeners`` etc.: a typed view of the one type URL's map in ``EnvoyResources.by_type``.

    Declared once per Envoy type below; ``SECTIONS`` (type URL -> attribute name) is collected from
    these declarations, so the rendered JSON's keys are not repeated anywhere either.

    Typed for messages: a translator asked for ``Encoded`` resources hands its output to the control
    plane, which reads ``by_type``; whoever reads a section of such output uses ``as_message``.
    """

    def __init__(self, message_type: type[_M]) -> None:
        self.type_url = type_url_of(message_type)
        self.name = ""
        MESSAGE_TYPES[self.type_url] = message_type

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        SECTIONS[self.type_url] = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Section[_M]: ...
    @overload
    def __get__(self, obj: EnvoyResources, owner: type | None = None) -> dict[str, _M]: ...

    def __get__(self, obj: EnvoyResources | None, owner: type | None = None) -> dict[str, _M] | _Section[_M]:
        if obj is None:  # on the class: the declaration itself (``EnvoyResources.listeners.type_url``)
            return self
        return cast("dict[str, _M]", obj.by_type.setdefault(self.type_url, {}))


#: Envoy's type URLs -> the ``EnvoyResources`` attribute (and rendered JSON key) for them.
SECTIONS: dict[str, str] = {}
#: Envoy's type URLs -> their message class (to parse an ``Encoded`` resource).
MESSAGE_TYPES: dict[str, type[Message]] = {}


@dataclass
class EnvoyResources:
    """type URL -> name -> message (or ``Encoded``).  Envoy's types (``ENVOY_TYPES``) are always
    present (maybe empty), in this order."""

    by_type: dict[str, dict[str, Resource]] = field(default_factory=lambda: {t: {} for t in ENVOY_TYPES})

    listeners = _Section(listener_pb2.Listener)
    routes = _Section(route_pb2.RouteConfiguration)
    clusters = _Section(cluster_pb2.Cluster)
    endpoints = _Section(endpoint_pb2.ClusterLoadAssignment)
    secrets = _Section(secret_pb2.Secret)
    extension_configs = _Section(extension_pb2.TypedExtensionConfig)

    def merge(self, other: EnvoyResources) -> None:
        """Add ``other``'s resources (later fragments win on a name clash)."""
        for type_url, named in other.by_type.items():
            self.by_type.setdefault(type_url, {}).update(named)

    def copy(self) -> EnvoyResources:
        """A new container with the same message objects (the maps are copied, not the messages)."""
        return EnvoyResources({t: dict(named) for t, named in self.by_type.items()})

    def encoded(self) -> EnvoyResources:
        """Same resources, every message replaced by its ``Encoded`` form (an ``Encoded`` is kept)."""
        return EnvoyResources({t: {n: r if isinstance(r, Encoded) else Encoded.of(t, r) for n, r in named.items()}
                               for t, named in self.by_type.items()})

    def messages(self) -> EnvoyResources:
        """Same resources, every ``Encoded`` one parsed into a message (messages are kept as they are)."""
        return EnvoyResources({t: {n: as_message(r) for n, r in named.items()} for t, named in self.by_type.items()})

    def sorted(self) -> EnvoyResources:
        """Same resources, each type ordered by name (deterministic output)."""
        return EnvoyResources({t: dict(sorted(named.items())) for t, named in self.by_type.items()})
