"""The agent's private Unix sockets (SDS and the xDS proxy): where they live and how they are opened.

Both sockets are served to the local Envoy only, and whoever can connect gets what is behind them
(the private key over SDS; the waypoint's identity towards istiod over the xDS proxy).  File
permissions are the only access control, as with Istio's agent-private volume: each socket sits in
its own directory created 0700, and the socket itself is made 0600 once bound.  The 0700 directory
keeps other users out during the short window between ``bind`` and ``chmod`` (no process-wide
``umask`` games: other threads may be creating files at the same time).
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

#: ``sun_path`` is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


def check_socket_path(path: Path, what: str = "socket") -> None:
    """Refuse a path the kernel cannot bind (it would fail later with an obscure gRPC error)."""
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise ValueError(f"{what} path {path} is longer than {MAX_SOCKET_PATH} bytes (the Unix socket "
                         "limit); choose a shorter --work-dir")


async def start_on_socket(server: grpc.aio.Server, path: Path) -> None:
    """Bind ``server`` to ``unix:<path>`` in a private (0700) directory, start it, make it 0600.

    A stale socket left by a previous run is removed first (gRPC would refuse to bind over it).
    Raises ``OSError`` for the directory and ``RuntimeError`` when gRPC cannot bind.
    """
    if path.parent.is_symlink():  # chmod and bind would follow it out of the work dir
        raise OSError(f"{path.parent} is a symbolic link")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask and ignored for existing dirs
    path.unlink(missing_ok=True)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    os.chmod(path, 0o600)
