"""State-of-the-World ADS: how requests change a stream's state, and what to send back.

Pure functions over ``Connection``/``Subscription`` (no I/O), so every rule is unit-testable.
Rule numbers refer to docs/xds-rules.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from istiod_lite.xds.connection import Connection, new_nonce
from istiod_lite.xds.pushmemo import PushMemo
from istiod_lite.xds.resources import ResourceSnapshot, VersionedResource
from istiod_lite.xds.subscription import Subscription
from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT, FULL_STATE_TYPES
from istiod_lite.xds.wire import EncodedResponse, sotw_response


class RequestKind:
    INITIAL = "initial"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"


@dataclass(frozen=True)
class Classified:
    kind: str
    names_added: bool


def on_request(conn: Connection, req: discovery_pb2.DiscoveryRequest) -> Classified:
    """Apply one request to the stream state.  Never raises for protocol-legal input."""
    sub = conn.subs.get(req.type_url)
    if sub is None:
        sub = conn.subs[req.type_url] = Subscription(req.type_url)
    nonce = req.response_nonce
    added = sub.apply_sotw_names(req.resource_names)  # names apply whatever the nonce (R10, R16)
    if not nonce:
        # First request for this type on this stream (or a client that lost state): answer (R11).
        sub.must_respond = True
        kind = RequestKind.INITIAL
    elif nonce != sub.nonce_sent:
        kind = RequestKind.STALE  # superseded by a newer response (R10); no state change
    elif req.HasField("error_detail"):
        sub.record_nack(nonce, req.error_detail.message)
        kind = RequestKind.NACK  # never resend the rejected version (R14)
    else:
        sub.record_ack(nonce, req.version_info)
        kind = RequestKind.ACK
    if added:
        sub.must_respond = True  # added names are sent even if unchanged (R17, R24)
    if req.type_url == ENDPOINT and conn.eds_after_cds and kind != RequestKind.STALE:
        sub.must_respond = True  # the post-CDS EDS re-request looks like an ACK (R43)
        conn.eds_after_cds = False
    return Classified(kind, added)


def build_response(
    conn: Connection, sub: Subscription, snap: ResourceSnapshot, memo: PushMemo | None = None
) -> EncodedResponse | None:
    """The response this subscription needs now, or None (R18: only send on change).

    ``memo``: the server's, shared by its streams (views, diffs and large responses computed
    once); None: a fresh one, nothing shared (tests of one stream).
    """
    if memo is None:
        memo = PushMemo()
    available = snap.of_type(sub.type_url)
    if sub.wildcard:
        visible: Mapping[str, VersionedResource] = available
        version = snap.type_version(sub.type_url)
    else:
        visible, version = memo.named_view(available, frozenset(sub.names))
    if not sub.must_respond and version == sub.version_sent:
        return None
    nonce = new_nonce()
    if sub.wildcard or sub.must_respond or sub.synced_map is None or sub.type_url in FULL_STATE_TYPES:
        # LDS/CDS responses are complete even when subscribed by name (gRPC clients): a listener
        # missing from one is deleted (R27).
        send: list[VersionedResource] = list(visible.values())
    else:
        # Named types (RDS, EDS): a response may carry only what changed; absence is not
        # deletion (R28).  The client held ``synced_map``'s view, so diff the views (once).
        changed, _removed = memo.diff(sub.synced_map, visible)
        send = [visible[n] for n in changed]
    resp = sotw_response(sub.type_url, version, nonce, (r.sotw_parts for r in send),
                         key=tuple((r.name, r.version) for r in send), shared=memo.responses)
    sub.record_send(resp.nonce, version)  # a shared response keeps the nonce it was built with
    # Shared, not copied: SotW never changes ``sent`` in place (only Delta does), and a thousand
    # streams of one waypoint hold the same view.
    sub.sent = memo.versions_of(visible)
    sub.synced_map = None if sub.wildcard else visible
    if sub.type_url == CLUSTER:
        # Changed clusters warm until their endpoints arrive: resend EDS now and answer the
        # client's next EDS request even if it looks like an ACK (R42, R43).
        eds = conn.subs.get(ENDPOINT)
        if eds is not None:
            eds.must_respond = True
        conn.eds_after_cds = True
    return resp
