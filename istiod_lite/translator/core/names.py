"""Istio's resource names for waypoints (``BuildSubsetKey`` and friends)."""

from __future__ import annotations

DEFAULT_DOMAIN = "cluster.local"


def service_fqdn(name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{domain}"


def inbound_vip_cluster(port: int, host: str, protocol: str = "http", subset: str = "") -> str:
    """``inbound-vip|<port>|<protocol>[/<subset>]|<host>``."""
    sub = f"{protocol}/{subset}" if subset else protocol
    return f"inbound-vip|{port}|{sub}|{host}"


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


CONNECT_ORIGINATE = "connect_originate"
ORIGINAL_DST_KEY = "envoy.filters.listener.original_dst"
