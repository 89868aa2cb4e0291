"""``istiod-lite proxy-status``: the sync state of every connected proxy, like ``istioctl proxy-status``."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

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
        cells = []
        for col in COLUMNS:
            t = types.get(col)
            cells.append("IGNORED" if t is None else str(t.get("state", "")))
        rows.append((str(conn.get("node_id", "")), str(conn.get("group", "")), str(conn.get("variant", "")), *cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
