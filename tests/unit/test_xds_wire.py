"""Pre-encoded responses are byte-identical to the protobuf messages they stand for."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from istiod_lite.xds import wire
from istiod_lite.xds.resources import VersionedResource

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def resources(n: int) -> list[VersionedResource]:
    # Long names push lengths past one varint byte (>127) to exercise multi-byte lengths.
    return [VersionedResource.from_message(f"c{i}" + "x" * 200 * i, CDS, cluster_pb2.Cluster(name=f"c{i}" * 50))
            for i in range(n)]


def test_sotw_response_matches_protobuf() -> None:
    rs = resources(3)
    enc = wire.sotw_response(CDS, "v1", "n-1", (r.sotw_parts for r in rs))
    want = discovery_pb2.DiscoveryResponse(version_info="v1", type_url=CDS, nonce="n-1")
    want.resources.extend(r.any for r in rs)
    assert enc.SerializeToString() == want.SerializeToString()
    assert enc.decode() == want
    assert enc.ByteSize() == want.ByteSize()
    assert [r.value for r in enc.resources] == [r.any.value for r in rs]  # attribute access decodes


def test_delta_response_matches_protobuf() -> None:
    rs = resources(4)
    enc = wire.delta_response(CDS, "sys", "n-2", (r.delta_parts for r in rs), ["gone-a", "gone-b"])
    want = discovery_pb2.DeltaDiscoveryResponse(system_version_info="sys", type_url=CDS, nonce="n-2",
                                                removed_resources=["gone-a", "gone-b"])
    for r in rs:
        want.resources.add(name=r.name, version=r.version, resource=r.any)
    assert enc.SerializeToString() == want.SerializeToString()
    assert enc.nonce == "n-2" and enc.type_url == CDS


def test_empty_responses() -> None:
    assert wire.sotw_response(CDS, "", "n", ()).decode() == discovery_pb2.DiscoveryResponse(type_url=CDS, nonce="n")
    assert wire.delta_response(CDS, "", "n", (), ()).SerializeToString() == \
        discovery_pb2.DeltaDiscoveryResponse(type_url=CDS, nonce="n").SerializeToString()


def test_varint_boundaries() -> None:
    for n in (1, 127, 128, 300, 16383, 16384, 2**21 + 3):
        text = "a" * n
        assert wire.field(1, text.encode()) == discovery_pb2.DiscoveryResponse(version_info=text).SerializeToString()
    assert wire._varint(300) == b"\xac\x02"
    assert wire._varint(2**28 + 5) == bytes([0x85, 0x80, 0x80, 0x80, 0x01])


def test_a_large_response_is_built_once_and_shared_by_every_stream_that_gets_it() -> None:
    """Streams getting byte-identical content get the same response object, nonce included; a
    response that also removes names is per stream; the bytes stay exactly protobuf's."""
    big = [VersionedResource.from_message("big", CDS, cluster_pb2.Cluster(name="b" * 100_000))]
    key = tuple((r.name, r.version) for r in big)
    shared = wire.SharedResponses()
    one = wire.delta_response(CDS, "sys", "n-1", (r.delta_parts for r in big), (), key=key, shared=shared)
    two = wire.delta_response(CDS, "sys", "n-2", iter(()), (), key=key, shared=shared)  # from the cache
    assert two is one and two.nonce == "n-1"
    want = discovery_pb2.DeltaDiscoveryResponse(system_version_info="sys", type_url=CDS, nonce="n-1")
    want.resources.add(name="big", version=big[0].version, resource=big[0].any)
    assert one.SerializeToString() == want.SerializeToString()
    gone = wire.delta_response(CDS, "sys", "n-3", (r.delta_parts for r in big), ["old"], key=key, shared=shared)
    assert gone is not one and gone.nonce == "n-3" and list(gone.decode().removed_resources) == ["old"]
    s1 = wire.sotw_response(CDS, "v", "a", (r.sotw_parts for r in big), key=key, shared=shared)
    s2 = wire.sotw_response(CDS, "v", "b", iter(()), key=key, shared=shared)
    want_s = discovery_pb2.DiscoveryResponse(version_info="v", type_url=CDS, nonce="a", resources=[big[0].any])
    assert s2 is s1 and s1.SerializeToString() == want_s.SerializeToString()
    # A different version is a different response, never a stale one; small ones are never shared.
    other = wire.sotw_response(CDS, "v2", "c", (r.sotw_parts for r in big), key=key, shared=shared)
    assert other.decode().version_info == "v2" and other.nonce == "c"
    small = resources(1)
    k = tuple((r.name, r.version) for r in small)
    first = wire.delta_response(CDS, "s", "x", (r.delta_parts for r in small), (), key=k, shared=shared)
    assert wire.delta_response(CDS, "s", "y", (r.delta_parts for r in small), (), key=k, shared=shared) is not first


def test_responses_are_shared_only_within_one_holder() -> None:
    """Each ADS server owns its ``SharedResponses``: another server (or no holder) builds its own."""
    big = [VersionedResource.from_message("big", CDS, cluster_pb2.Cluster(name="b" * 100_000))]
    key = tuple((r.name, r.version) for r in big)
    mine, theirs = wire.SharedResponses(), wire.SharedResponses()
    one = wire.sotw_response(CDS, "v", "a", (r.sotw_parts for r in big), key=key, shared=mine)
    two = wire.sotw_response(CDS, "v", "b", (r.sotw_parts for r in big), key=key, shared=theirs)
    unshared = wire.sotw_response(CDS, "v", "c", (r.sotw_parts for r in big), key=key)
    assert (one.nonce, two.nonce, unshared.nonce) == ("a", "b", "c")
    assert one.SerializeToString()[:-1] == two.SerializeToString()[:-1] == unshared.SerializeToString()[:-1]
    assert len(mine) == len(theirs) == 1
    mine.clear()
    assert len(mine) == 0
    assert wire.sotw_response(CDS, "v", "d", (r.sotw_parts for r in big), key=key, shared=mine).nonce == "d"
