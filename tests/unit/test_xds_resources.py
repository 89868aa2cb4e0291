"""``VersionedResource`` encodes by hand exactly what the protobuf messages would serialise to."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from istiod_lite.xds.resources import VersionedResource, content_version

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


@pytest.mark.parametrize("name, data", [
    ("c", cluster_pb2.Cluster(name="c").SerializeToString()),
    ("x" * 300, cluster_pb2.Cluster(name="y" * 20_000).SerializeToString()),  # multi-byte lengths
    ("empty", b""),  # an empty message: Any.value is omitted, the Any itself is not
    ("", b"\x0a\x01z"),  # proto3 omits an empty name
])
def test_bytes_match_the_messages(name: str, data: bytes) -> None:
    vr = VersionedResource.from_bytes(name, CDS, data)
    packed = any_pb2.Any(type_url=CDS, value=data)
    want = discovery_pb2.Resource(name=name, version=content_version(data), resource=packed)
    assert vr.delta_bytes == want.SerializeToString(deterministic=True)
    assert bytes(vr.any_bytes) == packed.SerializeToString(deterministic=True)
    assert vr.any == packed and vr.size == len(data) and vr.version == content_version(data)


def test_from_message_serialises_deterministically() -> None:
    msg = cluster_pb2.Cluster(name="c", metadata={"filter_metadata": {"b": {}, "a": {}}})
    vr = VersionedResource.from_message("c", CDS, msg)
    assert vr.any.value == msg.SerializeToString(deterministic=True)
    assert discovery_pb2.Resource.FromString(vr.delta_bytes).resource.value == vr.any.value
