"""What one stream was last sent, per type, with the bytes of each resource: ``/debug/config_dump``.

The xDS layer knows no resource schema: a dump is type URLs, names, versions, delivery state and
opaque bytes.  Whoever shows it (the control plane's debug endpoint) decodes the bytes.

Where the bytes come from: a stream keeps, per type, the name -> version of every resource it
was sent (``Subscription.sent``), never the bytes; the group's current snapshot holds the bytes
of the current versions.  A resource whose sent version is still the snapshot's is dumped with
its bytes; one the snapshot has moved past (a push to this stream is pending) is dumped with
``data=None`` and ``superseded=True``: its name and version are known, its content no longer is.
"""

from __future__ import annotations

from dataclasses import dataclass

from istiod_lite.xds.connection import Connection
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.subscription import Subscription
from istiod_lite.xds.typeurls import short


@dataclass(frozen=True)
class SentResource:
    name: str
    version: str
    #: The serialised resource (``Any.value``), or None when the snapshot no longer holds this version.
    data: bytes | None

    @property
    def superseded(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class TypeDump:
    """One type on one stream: delivery state and what the client holds as far as we know."""

    type_url: str
    state: str
    version_sent: str
    version_acked: str
    nonce_sent: str
    nonce_acked: str
    nonce_nacked: str
    #: The client's last error_detail for this type ("" after an ACK).
    last_error: str
    last_send_time: float
    last_ack_time: float
    wildcard: bool
    subscribed: tuple[str, ...]
    resources: tuple[SentResource, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-able, without the bytes (the caller decodes those)."""
        return {
            "type": short(self.type_url), "type_url": self.type_url, "state": self.state,
            "version_sent": self.version_sent, "version_acked": self.version_acked,
            "nonce_sent": self.nonce_sent, "nonce_acked": self.nonce_acked, "nonce_nacked": self.nonce_nacked,
            "last_error": self.last_error, "last_send_time": self.last_send_time,
            "last_ack_time": self.last_ack_time, "wildcard": self.wildcard, "subscribed": list(self.subscribed),
        }


def dump_subscription(sub: Subscription, snap: ResourceSnapshot | None) -> TypeDump:
    available = snap.of_type(sub.type_url) if snap is not None else {}
    resources = []
    for name in sorted(sub.sent):
        version = sub.sent[name]
        current = available.get(name)
        data = current.data if current is not None and current.version == version else None
        resources.append(SentResource(name, version, bytes(data) if data is not None else None))
    return TypeDump(
        type_url=sub.type_url, state=sub.state.value, version_sent=sub.version_sent,
        version_acked=sub.version_acked, nonce_sent=sub.nonce_sent, nonce_acked=sub.nonce_acked,
        nonce_nacked=sub.nonce_nacked, last_error=sub.last_error, last_send_time=sub.last_send_time,
        last_ack_time=sub.last_ack_time, wildcard=sub.wildcard, subscribed=tuple(sorted(sub.names)),
        resources=tuple(resources))


def dump_connection(conn: Connection, snap: ResourceSnapshot | None) -> list[TypeDump]:
    """Every type the stream subscribed to, in push order."""
    return [dump_subscription(sub, snap) for sub in conn.ordered_subs()]
