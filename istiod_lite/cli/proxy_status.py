"""``istiod-lite proxy-status``: the sync state of every connected proxy, like ``istioctl proxy-status``."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from istiod_lite.safetext import safe

COLUMNS = ("CDS", "LDS", "EDS", "RDS", "SDS")


def fetch(monitoring_addr: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    host, _, port = monitoring_addr.rpartition(":")
    host = host or "127.0.0.1"
    if host == "0.0.0.0":
        host = "127.0.0.1"
    with urllib.request.urlopen(f"http://{host}:{port}/debug/syncz", timeout=timeout) as resp:
        data: list[dict[str, Any]] = json.loads(resp.read())
    return data


def table(status: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [("NAME", "GROUP", "XDS", *COLUMNS)]
    for conn in status:
        types = conn.get("types", {})
        cells: list[object] = []
        for col in COLUMNS:
            t = types.get(col)
            cells.append("IGNORED" if t is None else t.get("state", ""))
        # Node id and group come from what the proxy said about itself: escaped, never raw to a terminal.
        rows.append(tuple(safe(c) for c in (conn.get("node_id", ""), conn.get("group", ""), conn.get("variant", ""),
                                            *cells)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
