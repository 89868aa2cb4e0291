"""Clusters for the services the authorization filters call: ext_authz providers and remote JWKS.

The filters name ``outbound|<port>||<host>`` (Istio's ``BuildSubsetKey``); a waypoint has no
outbound clusters of its own, so the translator adds them (``waypoint._authz_resources``):

* a host that is a known service (Kubernetes Service FQDN or ServiceEntry host) gets that
  service's ordinary outbound clusters (EDS or DNS, its DestinationRule applied; endpoints
  through HBONE when ambient), as Istio's JWKS/ext_authz clusters are the service's outbound ones;
* any other host - a JWKS URI outside the mesh, or a port the service does not declare - gets a
  cluster of its own (``request_cluster``, see ``translator/clusters/for_host.py``): HTTP/2 for a gRPC
  ext_authz service, TLS for an ``https`` JWKS URI.
  Istio instead lets istiod fetch such keys (``PILOT_JWT_ENABLE_REMOTE_JWKS=hybrid``); this
  translator does no I/O.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from istiod_lite.translator.authz.extauthz import ClusterRequest
from istiod_lite.translator.clusters.for_host import host_cluster


def request_cluster(req: ClusterRequest) -> cluster_pb2.Cluster:
    """A cluster straight to ``req.host:req.port`` (no service in the registry backs it)."""
    return host_cluster(req.name, req.host, req.port, h2=req.h2, tls=req.tls)
