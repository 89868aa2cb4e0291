"""``istiod-lite hbone forward|inbound``: send traffic into a waypoint as ztunnel would, and receive it.

``forward`` is the client-side ztunnel: plain TCP in, HTTP/2 CONNECT over mTLS to a waypoint's
15008 out.  ``inbound`` is the destination ztunnel of a pod: HBONE in on ``<podIP>:15008``, plain
TCP out to the app.  ``node`` takes its destinations from the control plane's ztunnel xDS, as
ztunnel does (waypoint, else the pod over HBONE or plaintext; follows every push; enforces L4
policy on captured plaintext).  All run Envoy in the foreground until SIGINT/SIGTERM (see
docs/hbone.md, docs/ztunnel.md).
Wired into the main parser with ``add_hbone_parser(sub)``; also runnable as
``python -m istiod_lite.cli.hbone_cmd``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

import grpc

from istiod_lite.addresses import is_ip, split_host_port
from istiod_lite.hbone.caclient import DEFAULT_CA_SERVER_NAME, DEFAULT_CERT_TTL_S, CaClient, CaRequestError
from istiod_lite.hbone.config import (
    DEFAULT_TRUST_DOMAIN,
    HBONE_PORT,
    Endpoint,
    HboneConfig,
    InboundTerminator,
    OutboundTunnel,
    workload_spiffe_id,
)
from istiod_lite.hbone.credentials import CredentialError
from istiod_lite.hbone.node import HboneNode, NodeConfig, describe
from istiod_lite.hbone.proxy import CaCredentials, CredentialSource, FileCredentials, HboneError, HboneProxy
from istiod_lite.hbone.xdsclient import ztunnel_node


class UsageError(ValueError):
    """A flag combination that cannot work; reported like argparse errors (exit 2)."""


def _endpoint(text: str, default_port: int | None = None) -> Endpoint:
    try:
        return Endpoint.parse(text, default_port=default_port)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _spec(text: str, flag: str, *, optional_right: bool = False) -> tuple[str, str | None]:
    left, sep, right = text.partition("=")
    if not left or (not sep and not optional_right) or (sep and not right):
        raise UsageError(f"{flag} expects LISTEN={'[' if optional_right else ''}TARGET{']' if optional_right else ''},"
                         f" got {text!r}")
    return left, right or None


def _identity(args: argparse.Namespace) -> str | None:
    if args.identity is None:
        return None
    try:
        return workload_spiffe_id(args.identity, args.trust_domain)
    except ValueError as exc:
        raise UsageError(f"--identity: {exc}") from exc


def _credentials(args: argparse.Namespace, identity: str | None) -> CredentialSource:
    if args.root_cert is None:
        raise UsageError("--root-cert is required (the mesh root that peers' certificates must chain to)")
    if args.ca_address:
        if args.cert or args.key:
            raise UsageError("give either --cert/--key or --ca-address/--token-file, not both")
        if not args.token_file:
            raise UsageError("--ca-address needs --token-file")
        if identity is None:
            raise UsageError("--ca-address needs --identity NS/SA (the SPIFFE ID to request)")
        try:
            roots = Path(args.root_cert).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --root-cert: {exc}") from exc
        client = CaClient(args.ca_address, Path(args.token_file), roots, server_name=args.ca_server_name,
                          ttl_s=args.cert_ttl)
        return CaCredentials(client, identity)
    if not (args.cert and args.key):
        raise UsageError("credentials: give --cert and --key, or --ca-address and --token-file")
    return FileCredentials(Path(args.cert), Path(args.key), Path(args.root_cert))


def forward_config(args: argparse.Namespace) -> HboneConfig:
    """The tunnels of ``hbone forward``: ``--listen``/``--destination`` plus each ``--forward-spec``."""
    waypoint = _endpoint(args.waypoint, HBONE_PORT)
    pairs: list[tuple[str, str]] = []
    if args.listen or args.destination:
        if not (args.listen and args.destination):
            raise UsageError("--listen and --destination go together")
        pairs.append((args.listen, args.destination))
    for spec in args.forward_spec or ():
        listen, dest = _spec(spec, "--forward-spec")
        assert dest is not None
        pairs.append((listen, dest))
    if not pairs:
        raise UsageError("nothing to forward: give --listen and --destination, or --forward-spec")
    tunnels = tuple(OutboundTunnel(_endpoint(listen), _endpoint(dest), waypoint) for listen, dest in pairs)
    return _config(args, outbound=tunnels)


def inbound_config(args: argparse.Namespace) -> HboneConfig:
    """The terminators of ``hbone inbound``: ``--listen``/``--forward`` plus each ``--inbound-spec``."""
    pairs: list[tuple[str, str | None]] = []
    if args.listen:
        pairs.append((args.listen, args.forward))
    elif args.forward:
        raise UsageError("--forward needs --listen")
    for spec in args.inbound_spec or ():
        pairs.append(_spec(spec, "--inbound-spec", optional_right=True))
    if not pairs:
        raise UsageError("nothing to serve: give --listen POD_IP[:15008], or --inbound-spec")
    try:
        terminators = tuple(
            InboundTerminator(_endpoint(listen, HBONE_PORT), _endpoint(fwd) if fwd else None) for listen, fwd in pairs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return _config(args, inbound=terminators)


def _config(args: argparse.Namespace, *, outbound: tuple[OutboundTunnel, ...] = (),
            inbound: tuple[InboundTerminator, ...] = ()) -> HboneConfig:
    try:
        return HboneConfig(outbound=outbound, inbound=inbound, trust_domain=args.trust_domain,
                           connect_timeout_s=args.connect_timeout, admin=_endpoint(args.admin_address))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _ready_lines(proxy: HboneProxy) -> list[str]:
    lines = [f"forward {addr} -> CONNECT {t.destination} via {t.waypoint}"
             for addr, t in zip(proxy.outbound_addresses, proxy.config.outbound, strict=True)]
    lines += [f"inbound {addr} -> {t.forward or 'CONNECT authority (this IP only)'}"
              for addr, t in zip(proxy.inbound_addresses, proxy.config.inbound, strict=True)]
    assert proxy.credentials is not None
    lines.append(f"identity {', '.join(proxy.credentials.uri_sans)} until {proxy.credentials.not_after.isoformat()}")
    return lines


def _write_ready_file(path: Path, proxy: HboneProxy) -> None:
    data = {
        "outbound": [str(a) for a in proxy.outbound_addresses],
        "inbound": [str(a) for a in proxy.inbound_addresses],
        "admin": str(proxy.admin),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # readers never see half a file


async def run_proxy(proxy: HboneProxy, ready_file: Path | None = None) -> int:
    """Start, announce readiness, and run until a signal (exit 0) or until Envoy dies (exit 1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(proxy.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal during start-up: start() cleans up when cancelled
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        stopping.cancel()
        try:
            starting.result()
        except (HboneError, CredentialError, CaRequestError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for line in _ready_lines(proxy):
            print(line)
        print(f"ready (Envoy admin http://{proxy.admin})", flush=True)
        if ready_file is not None:
            _write_ready_file(ready_file, proxy)
        exited = asyncio.create_task(proxy.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stopping.cancel()
            try:
                message = f"Envoy exited with code {exited.result()}\n{proxy.log_tail()}"
            except HboneError as exc:
                message = str(exc)
            print(f"error: {message}", file=sys.stderr)
            await proxy.stop()
            return 1
        exited.cancel()
        await proxy.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The ``hbone node`` flags as a ``NodeConfig`` (raises ``UsageError``)."""
    routes = []
    for spec in args.route or ():
        listen, dest = _spec(spec, "--route")
        assert dest is not None
        routes.append((_endpoint(listen), _endpoint(dest)))
    plaintext = []
    for spec in args.plaintext or ():
        listen, app = _spec(spec, "--plaintext")
        assert app is not None
        plaintext.append((_endpoint(listen), _endpoint(app)))
    pods = tuple(_endpoint(ip, HBONE_PORT).host for ip in args.inbound_pod or ())
    node = ztunnel_node(pod=args.pod_name, namespace=args.pod_namespace, ip=args.node_ip, node_name=args.node_name,
                        cluster_id=args.cluster_id)
    try:
        return NodeConfig(node=node, capture=args.capture, routes=tuple(routes), inbound_pods=pods,
                          plaintext=tuple(plaintext), trust_domain=args.trust_domain,
                          connect_timeout_s=args.connect_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _xds_channel(args: argparse.Namespace) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    if args.xds_plaintext:
        return grpc.aio.insecure_channel(args.xds_address), ()
    if not (args.root_cert and args.token_file):
        raise UsageError("the secure xDS port needs --root-cert and --token-file (or --xds-plaintext)")
    try:
        roots = Path(args.root_cert).read_bytes()
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read xDS credentials: {exc}") from exc
    host, _ = split_host_port(args.xds_address)
    name = args.ca_server_name or (DEFAULT_CA_SERVER_NAME if is_ip(host) else None)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(args.xds_address, creds, options=options), (("authorization", f"Bearer {token}"),)


async def run_node(node: HboneNode, ready_file: Path | None = None) -> int:
    """Start the node, print where things go, and run until a signal (0) or Envoy dies (1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await node.start()
        except (HboneError, CredentialError, CaRequestError, OSError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        dests = [d for _, d in node.config.routes] + node.captured
        for line in describe(node.table, dests):
            print(line)
        for addr, (_, dest) in zip(node.route_addresses, node.config.routes, strict=True):
            print(f"route {addr} -> {dest}")
        for addr, (_, app) in zip(node.plaintext_addresses, node.config.plaintext, strict=True):
            print(f"plaintext {addr} -> {app} (L4 policy enforced)")
        for ip in node.config.inbound_pods:
            print(f"inbound {ip}:{HBONE_PORT} -> CONNECT authority (this IP only; L4 policy enforced on the "
                  "peer's identity)")
        print(f"ready (Envoy admin http://{node.proxy.admin})", flush=True)
        if ready_file is not None:
            data = {"routes": [str(a) for a in node.route_addresses], "captured": [str(a) for a in node.captured],
                    "plaintext": [str(a) for a in node.plaintext_addresses], "admin": str(node.proxy.admin)}
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(ready_file)
        exited = asyncio.create_task(node.proxy.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stopping.cancel()
            print(f"error: Envoy exited\n{node.proxy.log_tail()}", file=sys.stderr)
            await node.stop()
            return 1
        exited.cancel()
        await node.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def _run_node(args: argparse.Namespace) -> int:
    try:
        config = node_config(args)
        identity = _identity(args)
        credentials = _credentials(args, identity)
    except UsageError as exc:
        print(f"istiod-lite hbone node: error: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        try:
            channel, metadata = _xds_channel(args)
        except UsageError as exc:
            print(f"istiod-lite hbone node: error: {exc}", file=sys.stderr)
            return 2
        async with channel:
            node = HboneNode(config, credentials, channel, metadata=metadata, identity=identity,
                             concurrency=args.concurrency, log_level=args.envoy_log_level)
            return await run_node(node, Path(args.ready_file) if args.ready_file else None)

    return asyncio.run(main())


def _run(args: argparse.Namespace) -> int:
    try:
        config = forward_config(args) if args.hbone_command == "forward" else inbound_config(args)
        identity = _identity(args)
        credentials = _credentials(args, identity)
    except UsageError as exc:
        print(f"istiod-lite hbone {args.hbone_command}: error: {exc}", file=sys.stderr)
        return 2
    proxy = HboneProxy(config, credentials, identity=identity, concurrency=args.concurrency,
                       log_level=args.envoy_log_level, workdir=Path(args.workdir) if args.workdir else None)
    return asyncio.run(run_proxy(proxy, Path(args.ready_file) if args.ready_file else None))


def _add_common(p: argparse.ArgumentParser) -> None:
    ident = p.add_argument_group("identity and credentials")
    ident.add_argument("--identity", metavar="NS/SA",
                       help="workload identity spiffe://<td>/ns/NS/sa/SA (required with --ca-address; "
                            "with --cert the certificate is checked against it)")
    ident.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                       help="mesh trust domain; peers must present a URI SAN spiffe://<td>/... "
                            "(default %(default)s)")
    ident.add_argument("--root-cert", metavar="FILE", help="mesh root certificate(s), PEM (required)")
    ident.add_argument("--cert", metavar="FILE", help="certificate chain, PEM (leaf first)")
    ident.add_argument("--key", metavar="FILE", help="private key of --cert, PEM")
    ident.add_argument("--ca-address", metavar="HOST:PORT", help="get a certificate from this CA (istiod :15012)")
    ident.add_argument("--token-file", metavar="FILE", help="service-account token for the CA (re-read on renewal)")
    ident.add_argument("--ca-server-name", metavar="NAME",
                       help="name to verify in the CA's certificate (default istiod.istio-system.svc "
                            "when --ca-address is an IP)")
    ident.add_argument("--cert-ttl", type=int, default=DEFAULT_CERT_TTL_S, metavar="SECONDS",
                       help="requested certificate lifetime; renewed at half (default %(default)s)")
    run = p.add_argument_group("Envoy")
    run.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads (default %(default)s)")
    run.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS")
    run.add_argument("--admin-address", default="127.0.0.1:0", metavar="HOST:PORT",
                     help="Envoy admin (stats: /stats); default a free port on 127.0.0.1")
    run.add_argument("--envoy-log-level", default="warning")
    run.add_argument("--workdir", metavar="DIR", help="keep bootstrap, secrets and Envoy log here (default: temp)")
    run.add_argument("--ready-file", metavar="FILE",
                     help="once serving, write the bound addresses here as JSON (removed at exit)")


def add_hbone_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hbone forward``, ``hbone inbound`` and ``hbone node`` to the main parser's sub-commands."""
    hbone = subparsers.add_parser("hbone", help="HBONE tunnels like ztunnel's (client and destination side)",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_subcommands(hbone)
    return hbone


def _add_subcommands(hbone: argparse.ArgumentParser) -> None:
    sub = hbone.add_subparsers(dest="hbone_command", required=True)
    fwd = sub.add_parser("forward", help="plain TCP in, HTTP/2 CONNECT over mTLS to a waypoint out",
                         description="Accept plain TCP on --listen and tunnel each connection to --waypoint as "
                                     "CONNECT --destination over mTLS (TLS 1.3, ALPN h2), as ztunnel does.")
    fwd.add_argument("--listen", metavar="IP:PORT", help="plain TCP listener (port 0: any free port)")
    fwd.add_argument("--destination", metavar="IP:PORT", help="CONNECT authority, usually a service VIP:port")
    fwd.add_argument("--forward-spec", action="append", metavar="LISTEN=DEST",
                     help="another tunnel through the same waypoint; repeatable")
    fwd.add_argument("--waypoint", required=True, metavar="IP[:PORT]", help="the waypoint's HBONE address (:15008)")
    _add_common(fwd)
    fwd.set_defaults(func=_run)

    inb = sub.add_parser("inbound", help="terminate HBONE on POD_IP:15008 and hand the stream to the app",
                         description="Accept HBONE (mTLS with a mesh client certificate required) and forward each "
                                     "CONNECT stream to --forward, or, without it, to the CONNECT authority, which "
                                     "must then name the listening IP.")
    inb.add_argument("--listen", metavar="IP[:PORT]", help="HBONE listener, normally POD_IP:15008")
    inb.add_argument("--forward", metavar="IP:PORT", help="the app; default: the CONNECT authority")
    inb.add_argument("--inbound-spec", action="append", metavar="LISTEN[=APP]",
                     help="another terminator in the same Envoy; repeatable")
    _add_common(inb)
    inb.set_defaults(func=_run)

    node = sub.add_parser("node", help="a ztunnel stand-in driven by the control plane's ztunnel xDS",
                          description="Follow the control plane's ztunnel xDS (Delta ADS, Address + Authorization) "
                                      "and send each connection where ztunnel would: a service VIP to its waypoint "
                                      "over HBONE, else to a workload (HBONE for ambient pods, plaintext otherwise). "
                                      "Changes apply to the next connection, without a restart.")
    node.add_argument("--xds-address", required=True, metavar="HOST:PORT",
                      help="istiod-lite's xDS (secure :15012 with --root-cert/--token-file, or plaintext "
                           "with --xds-plaintext)")
    node.add_argument("--xds-plaintext", action="store_true", help="the plaintext gRPC port (tests, laptops)")
    node.add_argument("--capture", action="store_true",
                      help="bind every service VIP:port the control plane serves (those bindable on this host, "
                           "e.g. loopback VIPs); stands in for ztunnel's traffic redirection")
    node.add_argument("--route", action="append", metavar="LISTEN=DEST",
                      help="plain TCP on LISTEN goes where the mesh sends DEST (a VIP:port or pod IP:port); "
                           "repeatable")
    node.add_argument("--inbound-pod", action="append", metavar="POD_IP",
                      help="terminate HBONE on POD_IP:15008 for this node's pod; each CONNECT is checked against "
                           "the served L4 policies with the peer certificate's identity (refused: 401); "
                           "repeatable")
    node.add_argument("--plaintext", action="append", metavar="LISTEN=APP",
                      help="captured plain TCP for the pod at LISTEN's IP, relayed to APP if the served L4 "
                           "policies allow a connection without identity (STRICT refuses); repeatable")
    who = node.add_argument_group("node identity (ztunnel's xDS node)")
    who.add_argument("--node-name", default="node-a", help="Kubernetes node name (NODE_NAME)")
    who.add_argument("--pod-name", default="ztunnel-local", help="the ztunnel pod's name")
    who.add_argument("--pod-namespace", default="istio-system")
    who.add_argument("--node-ip", default="127.0.0.1", help="the ztunnel pod's IP (INSTANCE_IPS)")
    who.add_argument("--cluster-id", default="Kubernetes")
    _add_common(node)
    node.set_defaults(func=_run_node)


def main(argv: list[str] | None = None) -> int:
    """``python -m istiod_lite.cli.hbone_cmd forward|inbound|node ...`` (same as ``istiod-lite hbone ...``)."""
    parser = argparse.ArgumentParser(prog="istiod-lite hbone", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO")
    _add_subcommands(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
