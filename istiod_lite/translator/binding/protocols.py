"""Istio's protocol class of a service port, and which chains of the waypoint it gets.

Binding (which ports a service exposes through its waypoint) and the listeners (which filter chain
a port's traffic reaches) both need this vocabulary; it lives below both.
"""

from __future__ import annotations

_HTTP = frozenset({"http", "http2", "grpc", "grpc-web", "http_proxy"})
_TCP = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis"})
_H2 = frozenset({"http2", "grpc", "grpc-web"})
_APP_PROTOCOL_ALIASES = {"kubernetes.io/h2c": "http2", "kubernetes.io/ws": "http", "kubernetes.io/wss": "https"}


def port_protocol(name: str, app_protocol: str, transport: str) -> str:
    """Istio's protocol of a Service port: ``appProtocol``, else the port name's prefix
    (``http-web`` -> http), else ``unsupported`` (sniffed); UDP ports are ``udp``."""
    if transport == "UDP":
        return "udp"
    for candidate in (app_protocol, name.split("-", 1)[0]):
        c = _APP_PROTOCOL_ALIASES.get(candidate.lower(), candidate.lower())
        if c in _HTTP or c in _TCP:
            return c
    return "unsupported"


def chain_kinds(protocol: str) -> tuple[str, ...]:
    """Which chains a port gets: ``http``, ``tcp`` or both (sniffed)."""
    if protocol in _HTTP:
        return ("http",)
    if protocol in _TCP:
        return ("tcp",)
    return ("http", "tcp") if protocol == "unsupported" else ()


def is_h2(protocol: str) -> bool:
    return protocol in _H2
