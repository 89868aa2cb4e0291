"""Incremental (Delta) ADS: request handling and response building, without I/O.

Rule numbers refer to docs/xds-rules.md.
"""

from __future__ import annotations

import sys

from envoy.service.discovery.v3 import discovery_pb2

from istiod_lite.xds.connection import Connection, new_nonce
from istiod_lite.xds.pushmemo import PushMemo
from istiod_lite.xds.resources import ResourceSnapshot, VersionedResource
from istiod_lite.xds.subscription import Subscription
from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT
from istiod_lite.xds.wire import EncodedResponse, delta_response

#: Keep each response under gRPC's default 4 MiB receive limit (R50), with room for framing.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024


def on_request(conn: Connection, req: discovery_pb2.DeltaDiscoveryRequest) -> str:
    """Apply one request; returns "initial", "ack", "nack" or "change"."""
    sub = conn.subs.get(req.type_url)
    first = sub is None
    if sub is None:
        sub = conn.subs[req.type_url] = Subscription(req.type_url)
        # Reconnect: the client tells us what it holds; we send only what differs and remove
        # what no longer exists (R33).
        # Names interned (versions made canonical in ``build_responses``): a thousand reconnecting
        # streams must not each keep their own copy of every name they hold.
        held = req.initial_resource_versions
        if held:
            intern = sys.intern
            sub.sent.update({intern(name): version for name, version in held.items()})
        sub.must_respond = True
    kind = "initial" if first else "change"
    nonce = req.response_nonce
    if nonce and nonce == sub.nonce_sent:
        if req.HasField("error_detail"):
            sub.record_nack(nonce, req.error_detail.message)
            kind = "nack"
        else:
            sub.record_ack(nonce, sub.version_sent)
            kind = "ack"
    # Subscription changes apply even with a stale nonce or a NACK (R16, R35).
    sub.apply_delta(req.resource_names_subscribe, req.resource_names_unsubscribe, first,
                    req.initial_resource_versions if first else None)
    return kind


def build_responses(
    conn: Connection, sub: Subscription, snap: ResourceSnapshot, memo: PushMemo | None = None
) -> list[EncodedResponse]:
    """Zero or more responses (more than one only when the change exceeds the size cap).

    ``memo``: the server's, shared by its streams (diffs and large responses computed once);
    None: a fresh one, nothing shared (tests of one stream).
    """
    if memo is None:
        memo = PushMemo()
    available = snap.of_type(sub.type_url)
    if sub.synced_map is not None and not sub.must_respond and not sub.announce:
        # Fast path: the subscription is unchanged since ``sent`` matched ``synced_map``, so only
        # what changed between the two maps can differ for this client.
        if sub.synced_map is available:
            return []
        diff_changed, diff_removed = memo.diff(sub.synced_map, available)
        changed = [r for n in diff_changed if sub.wants(n) and sub.sent.get(n) != (r := available[n]).version]
        removed = [n for n in diff_removed if n in sub.sent]
    else:
        visible = sub.visible(available)
        sent = sub.sent
        changed = []
        for n, r in visible.items():
            held = sent.get(n)
            if held != r.version:
                changed.append(r)
            elif held is not r.version:
                sent[n] = r.version  # the client's equal string (a reconnect's) -> the shared one
        removed = sorted(n for n in sub.sent if n not in visible)
        removed += sorted(n for n in sub.announce if n not in visible and n not in sub.sent)
        sub.announce.clear()
    sub.synced_map = available
    if not changed and not removed and not sub.must_respond:
        return []
    system_version = snap.type_version(sub.type_url)
    batches: list[list[VersionedResource]] = [[]]
    size = 0
    for r in changed:
        if size and size + r.delta_len > MAX_RESPONSE_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(r)
        size += r.delta_len + 8
        sub.sent[r.name] = r.version
    for n in removed:
        sub.sent.pop(n, None)
    responses = [
        delta_response(sub.type_url, system_version, new_nonce(), (r.delta_parts for r in batch),
                       removed if i == len(batches) - 1 else (), key=tuple((r.name, r.version) for r in batch),
                       shared=memo.responses)
        for i, batch in enumerate(batches)
    ]
    sub.record_send(responses[-1].nonce, system_version)
    if sub.type_url == CLUSTER and changed:
        # Changed clusters warm until endpoints arrive: resend every subscribed EDS (R42, R43).
        eds = conn.subs.get(ENDPOINT)
        if eds is not None:
            eds.sent.clear()
            eds.synced_map = None
            eds.must_respond = True
    return responses


