"""The command line of ``istiod-lite explain request``: load the config (directory or cluster),
build the waypoint's Envoy resources as the server does, turn the arguments into a
``RequestQuery`` (host -> VIP through the listener's own matcher, NS/SA -> SPIFFE ID) and print the
explanation (human text or ``-o json``)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from istiod_lite.explain.envoy_eval.config import EnvoyConfig, unpack
from istiod_lite.explain.request import MAIN_INTERNAL, ExplainError, Explanation, RequestQuery, explain
from istiod_lite.explain.request_text import render_text


def add_request_parser(explain_sub: Any) -> None:
    """Register ``explain request`` under the ``explain`` command's subparsers."""
    r = explain_sub.add_parser("request", help="what a waypoint does with one HTTP request (from its Envoy config)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="DIR")
    src.add_argument("--kubeconfig", metavar="FILE", help="read the config from a cluster instead")
    r.add_argument("--mesh-config", metavar="FILE")
    r.add_argument("--waypoint", required=True, metavar="NS/NAME")
    r.add_argument("--from", dest="peer", required=True, metavar="SPIFFE_ID|NS/SA",
                   help="the client's identity (its HBONE certificate)")
    r.add_argument("--to", dest="dest", required=True, metavar="HOST:PORT",
                   help="service host (FQDN, name.namespace) or VIP, and port")
    r.add_argument("--method", default="GET")
    r.add_argument("--path", default="/")
    r.add_argument("-H", "--header", action="append", default=[], metavar="'name: value'")
    r.add_argument("--jwt", metavar="TOKEN", help="sent as 'authorization: Bearer TOKEN'")
    r.add_argument("--source-ip", metavar="IP", help="the client's address (for ipBlocks rules); default unknown")
    r.add_argument("-o", "--output", choices=["text", "json"], default="text")
    r.set_defaults(func=run_explain_request)


def _peer(text: str, trust_domain: str) -> str:
    if text.startswith("spiffe://"):
        return text
    ns, sep, sa = text.partition("/")
    if not sep or not ns or not sa or "/" in sa:
        raise ExplainError(f"--from must be a SPIFFE ID or NAMESPACE/SERVICEACCOUNT, got {text!r}")
    return f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"


def _hosts_by_vip(cfg: EnvoyConfig) -> dict[str, set[str]]:
    """VIP -> the service hosts whose chains its ranges lead to (chain names end in ``|host``)."""
    out: dict[str, set[str]] = {}
    lst = cfg.listeners.get(MAIN_INTERNAL)
    if lst is None or not lst.HasField("filter_chain_matcher"):
        return out

    def actions(m: matcher_pb2.Matcher) -> list[str]:
        names: list[str] = []
        tree = m.matcher_tree
        for om in list(tree.exact_match_map.map.values()) + ([m.on_no_match] if m.HasField("on_no_match") else []):
            names += actions(om.matcher) if om.HasField("matcher") else [om.action.name]
        return names

    ipm = unpack(lst.filter_chain_matcher.matcher_tree.custom_match.typed_config)
    if isinstance(ipm, ip_pb2.IPMatcher):
        for rm in ipm.range_matchers:
            hosts = {a.rsplit("|", 1)[-1] for a in (actions(rm.on_match.matcher) if rm.on_match.HasField("matcher")
                                                   else [rm.on_match.action.name])}
            for r in rm.ranges:
                out.setdefault(r.address_prefix, set()).update(h for h in hosts if "." in h)
    return out


def resolve_destination(cfg: EnvoyConfig, dest: str) -> tuple[str, int, str]:
    """HOST:PORT -> (VIP, port, host for the default authority)."""
    host, sep, port_text = dest.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ExplainError(f"--to must be HOST:PORT, got {dest!r}")
    port = int(port_text)
    try:
        ipaddress.ip_address(host)
        return host, port, host
    except ValueError:
        pass
    vips = _hosts_by_vip(cfg)
    exact = sorted(ip for ip, hosts in vips.items() if host in hosts)
    if not exact:
        exact = sorted(ip for ip, hosts in vips.items() if any(h.startswith(host + ".") for h in hosts))
    if not exact:
        known = sorted({h for hs in vips.values() for h in hs})
        raise ExplainError(f"host {host!r} is not served by this waypoint (it serves: {', '.join(known) or 'none'})")
    return exact[0], port, host


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ExplainError(f"-H must be 'name: value', got {text!r}")
    return name.strip().lower(), value.strip()


def build_query(cfg: EnvoyConfig, args: argparse.Namespace, trust_domain: str) -> RequestQuery:
    ip, port, host = resolve_destination(cfg, args.dest)
    headers = [parse_header(h) for h in args.header]
    authority = next((v for k, v in headers if k == "host"), None) or (host if port == 80 else f"{host}:{port}")
    headers = [(k, v) for k, v in headers if k != "host"]
    if args.jwt:
        headers.append(("authorization", f"Bearer {args.jwt}"))
    if not args.path.startswith("/"):
        raise ExplainError(f"--path must start with '/', got {args.path!r}")
    return RequestQuery(dest_ip=ip, dest_port=port, method=args.method.upper(), path=args.path, authority=authority,
                        headers=tuple(headers), peer_principal=_peer(args.peer, trust_domain), source_ip=args.source_ip)


def run_explain_request(args: argparse.Namespace) -> int:
    from istiod_lite.model.meshconfig import MeshConfigInvalid, load_mesh_config
    from istiod_lite.translator import WaypointAssembly, WaypointRef, find_waypoints

    logging.getLogger("istiod_lite.sources").setLevel(logging.ERROR)
    try:
        mesh = load_mesh_config(args.mesh_config) if args.mesh_config else None
    except (MeshConfigInvalid, OSError) as exc:
        print(f"error: --mesh-config {args.mesh_config}: {exc}", file=sys.stderr)
        return 2
    if args.config:
        from istiod_lite.sources import DirectorySource

        update = DirectorySource(Path(args.config)).load()
    else:
        from istiod_lite.sources.kube import KubeSource, KubeSourceOptions

        source = KubeSource(KubeSourceOptions(kubeconfig=Path(args.kubeconfig), sync_timeout=30.0,
                                              report_status=False))
        try:
            update = source.load()
        finally:
            source.close()
    for err in update.errors:
        print(f"warning: skipped invalid resource: {err}", file=sys.stderr)
    try:
        ref = WaypointRef.parse(args.waypoint)
        if ref not in {w.ref for w in find_waypoints(update.snapshot)}:
            raise ExplainError(f"no waypoint Gateway {ref} (class istio-waypoint) in the config")
        cfg = EnvoyConfig.of(WaypointAssembly(ref, mesh=mesh).proxy_resources(update.snapshot))
        query = build_query(cfg, args, mesh.trust_domain if mesh is not None else "cluster.local")
        exp: Explanation = explain(cfg, query)
    except (ExplainError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(exp.to_json(), indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_text(exp))
    return 0
