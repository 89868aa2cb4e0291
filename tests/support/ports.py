"""Free ports and per-run unique loopback addresses.

Only 127.0.0.0/8 is ever handed out: the machine running the tests has no other usable network.

* "pods" (addresses something really binds) come from 127.0.2.1 .. 127.0.8.254;
* "VIPs" (service cluster IPs, mostly only referenced by config) come from 127.10.1.1 .. 127.10.254.254.

Addresses are unique within the test process (the allocator only wraps around after exhausting its
range). Separate test processes may hand out the same address, which is harmless because every
listener binds a port the kernel reports as free on that address.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import threading
from collections.abc import Iterator

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def check_loopback(host: str) -> str:
    """Return ``host`` unchanged if it is a 127.0.0.0/8 literal; raise ``ValueError`` otherwise."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP literal: {host!r} (tests may only use 127.0.0.0/8)") from None
    if addr not in LOOPBACK:
        raise ValueError(f"{host} is outside 127.0.0.0/8; tests must never target other addresses")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is currently free on ``host`` (kernel-chosen; racy by nature, like any such helper)."""
    check_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports on ``host`` (all held open at once while choosing, so no duplicates)."""
    check_loopback(host)
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free_on_all(hosts: list[str], attempts: int = 50) -> int:
    """One port number that is currently free on every host in ``hosts`` (like a pod ``targetPort``)."""
    for h in hosts:
        check_loopback(h)
    for _ in range(attempts):
        port = free_port(hosts[0])
        socks: list[socket.socket] = []
        try:
            for h in hosts:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((h, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no port free on all of {hosts} after {attempts} attempts")


def _addresses(prefix: tuple[int, int], third: range, fourth: range) -> Iterator[str]:
    return itertools.cycle(f"{prefix[0]}.{prefix[1]}.{c}.{d}" for c in third for d in fourth)


class AddressAllocator:
    """Hands out unique loopback addresses for pods and VIPs (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods = _addresses((127, 0), range(2, 9), range(1, 255))
        self._vips = _addresses((127, 10), range(1, 255), range(1, 255))

    def pod_ip(self) -> str:
        with self._lock:
            return next(self._pods)

    def pod_ips(self, n: int) -> list[str]:
        return [self.pod_ip() for _ in range(n)]

    def vip(self) -> str:
        with self._lock:
            return next(self._vips)

    def vips(self, n: int) -> list[str]:
        return [self.vip() for _ in range(n)]


ADDRESSES = AddressAllocator()


def alloc_pod_ip() -> str:
    """A fresh loopback address for a "pod" (127.0.2.x, then 127.0.3.x, ... up to 127.0.8.x)."""
    return ADDRESSES.pod_ip()


def alloc_pod_ips(n: int) -> list[str]:
    return ADDRESSES.pod_ips(n)


def alloc_vip() -> str:
    """A fresh loopback address for a service VIP / cluster IP (127.10.x.y)."""
    return ADDRESSES.vip()


def alloc_vips(n: int) -> list[str]:
    return ADDRESSES.vips(n)
