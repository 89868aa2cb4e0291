"""Per-type subscription and delivery state of one stream (SotW and Delta share it).

Rule numbers (R21 ...) refer to docs/xds-rules.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from istiod_lite.xds.resources import VersionedResource
from istiod_lite.xds.typeurls import WILDCARD_TYPES

WILDCARD = "*"


class SyncState(StrEnum):
    NOT_SENT = "NOT SENT"
    SYNCED = "SYNCED"
    STALE = "STALE"
    ERROR = "ERROR"


@dataclass
class Subscription:
    """What the client asked for of one type, and what we believe it holds."""

    type_url: str
    #: Explicit ``*`` or legacy wildcard (R21).
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    #: Once any name (including ``*``) was sent, an empty list no longer means wildcard (R21).
    ever_named: bool = False
    #: name -> version the client holds, as far as we know (Delta; SotW keeps it for status).
    sent: dict[str, str] = field(default_factory=dict)
    #: Respond on the next evaluation even if nothing differs (initial request, names added,
    #: first wildcard request, re-request after a cluster change).
    must_respond: bool = False
    #: Delta: names that must be answered, with the resource or in ``removed_resources`` (R26).
    announce: set[str] = field(default_factory=set)
    #: The resource map (Delta: the type's; SotW: the named view) ``sent`` was last brought in
    #: line with, while the subscription was unchanged; lets the next push look only at what
    #: changed since.
    synced_map: Mapping[str, VersionedResource] | None = field(default=None, repr=False, compare=False)

    # delivery status
    nonce_sent: str = ""
    nonce_acked: str = ""
    version_sent: str = ""
    version_acked: str = ""
    last_error: str = ""
    nonce_nacked: str = ""
    last_send_time: float = 0.0
    last_ack_time: float = 0.0
    responses: int = 0
    #: Monotonic time of the config change behind the newest response (0: none known), and how
    #: long after that change the client ACKed it: config change -> proxy confirmed, per proxy
    #: (``/debug/syncz``; ``bench/bench_xds_push.py`` reads it).
    sent_trigger: float = 0.0
    ack_convergence: float | None = None

    # -- SotW ------------------------------------------------------------------------------------
    def apply_sotw_names(self, names: Iterable[str]) -> bool:
        """Replace the subscription with a SotW request's ``resource_names``.

        Returns True if a name was added (those must be sent even if unchanged, R17/R24).
        """
        requested = set(names)
        if self.type_url in WILDCARD_TYPES and not requested and not self.ever_named:
            added = not self.wildcard
            self.wildcard = True
            return added
        self.ever_named = self.ever_named or bool(requested)
        wildcard = WILDCARD in requested
        requested.discard(WILDCARD)
        added = bool(requested - self.names) or (wildcard and not self.wildcard)
        if requested != self.names or wildcard != self.wildcard:
            self.synced_map = None
        self.wildcard = wildcard
        self.names = requested
        return added

    # -- Delta -----------------------------------------------------------------------------------
    def apply_delta(self, subscribe: Iterable[str], unsubscribe: Iterable[str], first: bool,
                    held: Mapping[str, str] | None = None) -> set[str]:
        """Apply a Delta request's changes.  Returns names the client must be sent again (R30/R32).

        ``held``: on a new stream's first request, the versions the client says it holds
        (``initial_resource_versions``); a name subscribed with a held version is sent only if that
        version is not the current one (R33), so a reconnect does not resend every named resource."""
        # Interned: a thousand streams naming the same resources share one string per name.
        sub, unsub = {sys.intern(n) for n in subscribe}, set(unsubscribe)
        resend: set[str] = set()
        if sub or unsub or first:
            self.synced_map = None
        if first and not sub and self.type_url in WILDCARD_TYPES:
            self.wildcard = True  # legacy wildcard on the first request (R21)
            self.must_respond = True
        if sub:
            self.ever_named = True
        if WILDCARD in sub:
            self.wildcard = True
            self.must_respond = True
            sub.discard(WILDCARD)
        if WILDCARD in unsub:
            self.wildcard = False
            unsub.discard(WILDCARD)
        for name in sub:
            self.names.add(name)
            if first and held is not None and name in held:
                continue  # reconnect: ``sent`` holds the client's version; build_responses compares (R33)
            self.sent.pop(name, None)  # client may have forgotten it: always answer (R32)
            resend.add(name)
        for name in unsub:
            if name not in self.names:
                continue  # phantom unsubscribe (R31)
            self.names.discard(name)
            if self.wildcard:
                self.sent.pop(name, None)  # still covered by wildcard: must be re-sent (R30)
                resend.add(name)
            else:
                self.sent.pop(name, None)  # the client drops it itself; nothing to send
        if resend:
            self.must_respond = True
            self.announce |= resend
        return resend

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def visible(self, available: Mapping[str, VersionedResource]) -> dict[str, VersionedResource]:
        """The resources of this type the client should hold right now."""
        if self.wildcard:
            return dict(available)
        names = self.names
        if len(names) * 4 < len(available):  # a few names: look each up (sorted, as ``available`` is)
            return {n: available[n] for n in sorted(names) if n in available}
        # Most of them (EDS/RDS/ECDS follow the listeners and clusters): one pass in the snapshot's
        # order, which is sorted by name, instead of sorting thousands of names per response.
        return {n: r for n, r in available.items() if n in names}

    # -- status ----------------------------------------------------------------------------------
    def record_send(self, nonce: str, version: str) -> None:
        self.nonce_sent = nonce
        self.version_sent = version
        self.last_send_time = time.time()
        self.responses += 1
        self.must_respond = False

    def record_ack(self, nonce: str, version: str) -> None:
        self.nonce_acked = nonce
        self.version_acked = version
        self.last_error = ""
        self.last_ack_time = time.time()
        if nonce == self.nonce_sent and self.sent_trigger:
            self.ack_convergence = time.monotonic() - self.sent_trigger

    def record_nack(self, nonce: str, message: str) -> None:
        self.nonce_nacked = nonce
        self.last_error = message or "rejected without a message"
        self.last_ack_time = time.time()

    @property
    def state(self) -> SyncState:
        if not self.nonce_sent:
            return SyncState.NOT_SENT
        if self.nonce_nacked and self.nonce_nacked == self.nonce_sent:
            return SyncState.ERROR
        if self.nonce_acked == self.nonce_sent:
            return SyncState.SYNCED
        return SyncState.STALE

    def status(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "nonce_sent": self.nonce_sent,
            "nonce_acked": self.nonce_acked,
            "version_sent": self.version_sent,
            "version_acked": self.version_acked,
            "last_error": self.last_error,
            "last_send_time": self.last_send_time,
            "wildcard": self.wildcard,
            "names": len(self.names),
            "responses": self.responses,
            "ack_convergence_ms": None if self.ack_convergence is None else round(self.ack_convergence * 1000, 1),
        }
