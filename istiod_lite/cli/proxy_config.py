"""``istiod-lite proxy-config NS/NAME [listeners|routes|clusters|endpoints|secrets|all]``.

Like ``istioctl proxy-config``, from the server's side: what the server last sent each connected
proxy that ``NS/NAME`` names, and whether the proxy ACKed it or NACKed it (with Envoy's error).
It reads ``/debug/config_dump`` on the monitoring port (loopback only, as ``proxy-status`` reads
``/debug/syncz``); ``NS/NAME`` is a waypoint Gateway (every connected replica), a waypoint pod, or
a node id.  ``-o json`` prints the endpoint's JSON for the chosen sections (protobuf JSON of each
resource, as ``istiod-lite translate`` prints it).

Why not Envoy's admin config dump: that shows what the proxy runs; this shows what the control
plane sent and the proxy's answer, which is what explains "my change did not arrive" (a NACK, a
stream that is STALE) - and it needs no access to the proxy's pod.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from istiod_lite.safetext import safe

SECTIONS: dict[str, str] = {"listeners": "LDS", "routes": "RDS", "clusters": "CDS", "endpoints": "EDS",
                            "secrets": "SDS"}
ORDER = ("listeners", "routes", "clusters", "endpoints", "secrets")

#: What the server can say about secrets (the waypoint's agent serves SDS to its Envoy locally).
SECRETS_NOTE = ("secrets: not served by this server: the waypoint's agent fetches its certificate from the CA "
                "and serves it to Envoy over its local SDS socket, and the CA does not record what it issued; "
                "ask the proxy (istioctl proxy-config secret, or Envoy's /certs) for the certificate in use")


class ProxyConfigError(Exception):
    """The server could not be asked, or refused: the message says why (exit status 1)."""


def fetch(monitoring_addr: str, proxy: str, timeout: float = 10.0) -> dict[str, Any]:
    host, _, port = monitoring_addr.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/debug/config_dump?" + urllib.parse.urlencode({"proxyID": proxy})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        if exc.code == 404:
            raise ProxyConfigError(f"no connected proxy is {proxy!r} (a waypoint NS/NAME, a pod NS/NAME or a "
                                   f"node id; see istiod-lite proxy-status): {detail}") from None
        raise ProxyConfigError(f"{url}: HTTP {exc.code}: {detail}") from None
    except OSError as exc:
        raise ProxyConfigError(f"cannot reach {monitoring_addr}: {exc}") from None
    return data


# -- helpers over protobuf JSON ---------------------------------------------------------------------
def _typed(obj: Any) -> dict[str, Any]:
    return obj.get("typed_config") or {} if isinstance(obj, dict) else {}


def _table(header: Sequence[str], rows: list[tuple[str, ...]]) -> str:
    cells = [tuple(header), *(tuple(safe(c) for c in r) for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _address(addr: dict[str, Any] | None) -> tuple[str, str]:
    if not addr:
        return "-", "-"
    sock = addr.get("socket_address")
    if sock:
        return str(sock.get("address", "")), str(sock.get("port_value", ""))
    internal = addr.get("envoy_internal_address")
    if internal:
        target = internal.get("endpoint_id") or ""
        return f"{target} via {internal.get('server_listener_name', '')}".strip(), "-"
    pipe = addr.get("pipe")
    if pipe:
        return f"unix:{pipe.get('path', '')}", "-"
    return "-", "-"


def _chain_destination(chain: dict[str, Any]) -> str:
    """Where a filter chain sends traffic: its route config (HCM), cluster (TCP proxy) or filter."""
    for f in chain.get("filters", ()):
        cfg = _typed(f)
        rds = cfg.get("rds")
        if rds:
            return f"Route: {rds.get('route_config_name', '')}"
        if cfg.get("route_config"):
            return f"Inline Route: {cfg['route_config'].get('name', '')}"
        if "cluster" in cfg and str(cfg.get("@type", "")).endswith("TcpProxy"):
            return f"Cluster: {cfg['cluster']}"
        wc = cfg.get("weighted_clusters")
        if wc:
            return "Clusters: " + ", ".join(c.get("name", "") for c in wc.get("clusters", ()))
    names = [f.get("name", "") for f in chain.get("filters", ())]
    return ",".join(names) or "-"


def listener_rows(resources: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for lst in resources:
        address, port = ("internal", "-") if "internal_listener" in lst else _address(lst.get("address"))
        chains = list(lst.get("filter_chains", ()))
        if lst.get("default_filter_chain"):
            chains.append({**lst["default_filter_chain"], "name": lst["default_filter_chain"].get("name") or
                           "(default)"})
        if not chains:
            rows.append((lst.get("name", ""), address, port, "-", "-"))
        for chain in chains:
            rows.append((lst.get("name", ""), address, port, chain.get("name") or "-", _chain_destination(chain)))
    return rows


def _match(match: dict[str, Any]) -> str:
    for key in ("prefix", "path", "path_separated_prefix"):
        if key in match:
            path = f"{match[key]}{'*' if key != 'path' else ''}"
            break
    else:
        regex = (match.get("safe_regex") or {}).get("regex")
        path = f"regex {regex}" if regex is not None else ("CONNECT" if "connect_matcher" in match else "/*")
    extra = [h.get("name", "") for h in match.get("headers", ())]
    return path + (f" (headers: {', '.join(extra)})" if extra else "")


def _config_name(meta: dict[str, Any] | None) -> str:
    """``/apis/networking.istio.io/v1/namespaces/NS/virtual-service/NAME`` -> ``NAME.NS`` (as istioctl)."""
    path = (((meta or {}).get("filter_metadata") or {}).get("istio") or {}).get("config", "")
    parts = str(path).strip("/").split("/")
    if len(parts) >= 2 and "namespaces" in parts:
        ns = parts[parts.index("namespaces") + 1] if parts.index("namespaces") + 1 < len(parts) else ""
        return f"{parts[-1]}.{ns}" if ns else parts[-1]
    return "-"


def route_rows(resources: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for rc in resources:
        for vh in rc.get("virtual_hosts", ()):
            domains = vh.get("domains", ())
            shown = ", ".join(domains[:3]) + (f" + {len(domains) - 3} more" if len(domains) > 3 else "")
            routes: list[dict[str, Any]] = list(vh.get("routes", ())) or [{}]
            for route in routes:
                rows.append((rc.get("name", ""), vh.get("name", ""), shown or "-",
                             _match(route.get("match", {})) if route else "-", _config_name(route.get("metadata"))))
    return rows


def cluster_rows(resources: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in resources:
        name = c.get("name", "")
        parts = name.split("|")
        if len(parts) == 4:
            direction, port, subset, host = parts
        else:
            direction, port, subset, host = "-", "-", "-", name
        ctype = c.get("type") or ("ORIGINAL_DST" if c.get("lb_policy") == "CLUSTER_PROVIDED" else "-")
        if "cluster_type" in c:
            ctype = c["cluster_type"].get("name", ctype)
        rows.append((host, port or "-", subset or "-", direction, ctype, _config_name(c.get("metadata"))))
    return rows


def endpoint_rows(resources: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for cla in resources:
        cluster = cla.get("cluster_name", "")
        for locality in cla.get("endpoints", ()):
            for lb in locality.get("lb_endpoints", ()):
                address, port = _address((lb.get("endpoint") or {}).get("address"))
                shown = f"{address}:{port}" if port not in ("-", "") else address
                # Outlier detection happens in the proxy; the server cannot see its verdicts.
                rows.append((shown, lb.get("health_status", "HEALTHY"), "n/a (proxy-side)", cluster))
    return rows


def secret_rows(resources: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for s in resources:
        kind = "Cert Chain" if "tls_certificate" in s else "CA" if "validation_context" in s else "-"
        rows.append((s.get("name", ""), kind))
    return rows


_RENDERERS: dict[str, tuple[tuple[str, ...], Callable[[list[dict[str, Any]]], list[tuple[str, ...]]]]] = {
    "listeners": (("NAME", "ADDRESS", "PORT", "CHAIN", "DESTINATION"), listener_rows),
    "routes": (("NAME", "VIRTUAL HOST", "DOMAINS", "MATCH", "VIRTUAL SERVICE"), route_rows),
    "clusters": (("SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"), cluster_rows),
    "endpoints": (("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"), endpoint_rows),
    "secrets": (("RESOURCE NAME", "TYPE"), secret_rows),
}


def delivery(entry: dict[str, Any] | None) -> str:
    """One line: the type's state, versions and, after a NACK, Envoy's error."""
    if entry is None:
        return "not subscribed"
    state = entry.get("state", "")
    line = f"{state}: sent {entry.get('version_sent') or '-'}, acked {entry.get('version_acked') or '-'}"
    if state == "ERROR":
        line = f"NACKED (ERROR): sent {entry.get('version_sent') or '-'}, last acked " \
               f"{entry.get('version_acked') or '-'}; Envoy: {entry.get('last_error', '')}"
    elif state == "SYNCED":
        line = f"ACKED (SYNCED): version {entry.get('version_acked') or '-'}"
    superseded = sum(1 for r in entry.get("resources", ()) if r.get("superseded"))
    if superseded:
        line += f"; {superseded} resource(s) superseded by a newer config not yet pushed"
    return line


def sections_of(which: str) -> tuple[str, ...]:
    return ORDER if which == "all" else (which,)


def text(dump: dict[str, Any], which: str) -> str:
    out: list[str] = []
    for proxy in dump.get("proxies", ()):
        by_type = {t.get("type"): t for t in proxy.get("dump", ())}
        out.append(f"Proxy {safe(proxy.get('node_id', ''))} (group {safe(proxy.get('group', ''))}, "
                   f"{safe(proxy.get('variant', ''))})")
        for section in sections_of(which):
            short = SECTIONS[section]
            entry = by_type.get(short)
            out.append("")
            out.append(f"{section.upper()} [{short}] {safe(delivery(entry))}")
            if section == "secrets" and (entry is None or not entry.get("resources")):
                out.append(SECRETS_NOTE)
                continue
            if entry is None:
                continue
            resources = [r["resource"] for r in entry.get("resources", ()) if r.get("resource")]
            header, rows_of = _RENDERERS[section]
            out.append(_table(header, rows_of(resources)))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def as_json(dump: dict[str, Any], which: str) -> str:
    """The chosen sections' types of each proxy (``all``: every type it subscribed to, ECDS too)."""
    wanted = None if which == "all" else {SECTIONS[s] for s in sections_of(which)}
    proxies = []
    for proxy in dump.get("proxies", ()):
        types = [t for t in proxy.get("dump", ()) if wanted is None or t.get("type") in wanted]
        proxies.append({**proxy, "dump": types})
    return json.dumps({"proxies": proxies}, indent=2, sort_keys=True) + "\n"


def run(proxy: str, which: str, monitoring_addr: str, output: str) -> int:
    if "/" not in proxy and "~" not in proxy:
        print(f"error: {proxy!r}: give NAMESPACE/NAME (a waypoint or its pod) or a node id", file=sys.stderr)
        return 2
    try:
        dump = fetch(monitoring_addr, proxy)
    except ProxyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(as_json(dump, which) if output == "json" else text(dump, which))
    return 0


def add_proxy_config_parser(sub: Any) -> None:
    pc = sub.add_parser("proxy-config", help="what the server last sent a connected proxy, and its ACK/NACK "
                                             "(like istioctl proxy-config, from the server's side)")
    pc.add_argument("proxy", metavar="NS/NAME",
                    help="a waypoint Gateway (all its connected replicas), a waypoint pod, or a node id")
    pc.add_argument("section", nargs="?", default="all", choices=[*ORDER, "all"])
    pc.add_argument("--monitoring-addr", default="127.0.0.1:15014", metavar="HOST:PORT")
    pc.add_argument("-o", "--output", choices=["table", "json"], default="table")
    pc.set_defaults(func=lambda args: run(args.proxy, args.section, args.monitoring_addr, args.output))
