"""Istio's resource names for waypoints (``BuildSubsetKey`` and friends)."""

from __future__ import annotations

DEFAULT_DOMAIN = "cluster.local"


def service_fqdn(name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{domain}"


def resolve_shortname(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """Istio's ``ResolveShortnameToFQDN``: a name without a dot is a Service of ``namespace``;
    ``*``, IP addresses and names with a dot stay as written."""
    if not host or host == "*" or "." in host or ":" in host:
        return host  # ":": an IPv6 address (IPv4 ones have dots)
    return service_fqdn(host, namespace, domain)


def inbound_vip_cluster(port: int, host: str, protocol: str = "http", subset: str = "") -> str:
    """``inbound-vip|<port>|<protocol>[/<subset>]|<host>``."""
    sub = f"{protocol}/{subset}" if subset else protocol
    return f"inbound-vip|{port}|{sub}|{host}"


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


CONNECT_ORIGINATE = "connect_originate"
ORIGINAL_DST_KEY = "envoy.filters.listener.original_dst"
