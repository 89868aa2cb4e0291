"""Address helpers shared by the server, the agent and the CLI."""

from __future__ import annotations

import ipaddress


def split_host_port(addr: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[::1]:PORT"`` or ``":PORT"`` (all interfaces) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
