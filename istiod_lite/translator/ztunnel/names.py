"""Istio's names for the workload API: type URLs, workload uids, resource names, and the options they use."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from istiod_lite._generated.istio.security import authorization_pb2
from istiod_lite._generated.istio.workload import workload_pb2
from istiod_lite.translator.core.output import type_url_of

#: ``type.googleapis.com/istio.workload.Address`` and ``type.googleapis.com/istio.security.Authorization``.
ADDRESS = type_url_of(workload_pb2.Address)
AUTHORIZATION = type_url_of(authorization_pb2.Authorization)

#: Names istiod gives the policies it generates (``_`` cannot appear in a Kubernetes name, so they
#: never clash with a user's policy).
STATIC_STRICT = "istio_converted_static_strict"
CONVERTED_PEER_AUTHN_PREFIX = "converted_peer_authentication_"


@dataclass(frozen=True)
class ZtunnelOptions:
    """The control plane's settings that appear in workload addresses."""

    #: istiod's ``CLUSTER_ID`` (default ``Kubernetes``): the prefix of every workload uid.
    cluster_id: str = "Kubernetes"
    #: The local network (istiod's ``NETWORK``; empty: single network).
    network: str = ""
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    domain: str = "cluster.local"

    @property
    def workload_trust_domain(self) -> str:
        """istiod leaves the field empty for the default trust domain (ztunnel assumes it)."""
        return "" if self.trust_domain == "cluster.local" else self.trust_domain


def pod_uid(opts: ZtunnelOptions, namespace: str, name: str) -> str:
    return f"{opts.cluster_id}//Pod/{namespace}/{name}"


def workload_entry_uid(opts: ZtunnelOptions, namespace: str, name: str) -> str:
    return f"{opts.cluster_id}/networking.istio.io/WorkloadEntry/{namespace}/{name}"


def service_entry_uid(opts: ZtunnelOptions, namespace: str, name: str, address: str) -> str:
    return f"{opts.cluster_id}/networking.istio.io/ServiceEntry/{namespace}/{name}/{address}"


def endpoint_slice_uid(opts: ZtunnelOptions, namespace: str, name: str, address: str) -> str:
    return f"{opts.cluster_id}/discovery.k8s.io/EndpointSlice/{namespace}/{name}/{address}"


def namespaced(namespace: str, name: str) -> str:
    """``namespace/name``: a Service's resource name (with its hostname) and a policy's."""
    return f"{namespace}/{name}"


def ip_bytes(text: str) -> bytes | None:
    """The raw bytes of an IP address (4 or 16), or None if ``text`` is not one."""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None


def network_address(network: str, text: str) -> workload_pb2.NetworkAddress | None:
    """An IP or CIDR as a ``NetworkAddress`` (a CIDR carries its prefix length); None if neither."""
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None
        return workload_pb2.NetworkAddress(network=network, address=net.network_address.packed,
                                           length=net.prefixlen)
    raw = ip_bytes(text)
    return None if raw is None else workload_pb2.NetworkAddress(network=network, address=raw)
