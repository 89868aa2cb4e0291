"""``istiod-lite`` command line: serve, validate, translate, token, waypoint (bootstrap, run), hbone, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from istiod_lite.agent.bootstrap import WaypointIdentity, waypoint_bootstrap
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.controlplane.leader import LeaderElectionOptions, default_namespace
from istiod_lite.model.meshconfig import MeshConfig, MeshConfigInvalid, load_mesh_config
from istiod_lite.xds.server import XdsServerOptions

if TYPE_CHECKING:
    from istiod_lite.translator.clusters.dynamic_dns import DynamicDnsOptions


def _mesh(path: str | None) -> MeshConfig | None:
    """The ``--mesh-config`` file, or None; an invalid file is a start-up error with its field path."""
    if not path:
        return None
    try:
        return load_mesh_config(path)
    except (MeshConfigInvalid, OSError) as exc:
        raise SystemExit(f"error: --mesh-config {path}: {exc}") from None


#: Istio's environment variable (istiod reads it at start) for serving TLS ports of DYNAMIC_DNS entries.
WILDCARD_TLS_ENV = "ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS"


def _env_bool(name: str) -> bool:
    """A boolean environment variable as Go's ``strconv.ParseBool`` reads it (unset/invalid: false)."""
    return os.environ.get(name, "") in ("1", "t", "T", "TRUE", "true", "True")


def _add_dynamic_dns_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enable-wildcard-host-service-entries-for-tls", dest="wildcard_tls",
                   action=argparse.BooleanOptionalAction, default=_env_bool(WILDCARD_TLS_ENV),
                   help="serve the TLS ports of DYNAMIC_DNS (wildcard) ServiceEntries on waypoints by SNI "
                        f"(default: ${WILDCARD_TLS_ENV}, else off as in Istio: the SNI is the client's word)")
    p.add_argument("--dynamic-dns-resolver", action="append", default=[], metavar="IP[:PORT]",
                   help="name server for the waypoints' dynamic forward proxy DNS caches (repeatable); "
                        "default: none set, Envoy resolves with the proxy's system configuration, as with istiod")


def _dynamic_dns(args: argparse.Namespace) -> DynamicDnsOptions:
    from istiod_lite.translator.clusters.dynamic_dns import DynamicDnsOptions, parse_resolver

    try:
        resolvers = tuple(parse_resolver(r) for r in args.dynamic_dns_resolver)
    except ValueError as exc:
        raise SystemExit(f"error: --dynamic-dns-resolver: {exc}") from None
    return DynamicDnsOptions(wildcard_tls=args.wildcard_tls, resolvers=resolvers)


def _leader_election(args: argparse.Namespace) -> LeaderElectionOptions:
    """Kubernetes' proportions (15 s lease, 10 s renew deadline, 2 s retry) for any ``--lease-duration``."""
    lease = float(args.lease_duration)
    return LeaderElectionOptions(namespace=args.leader_election_namespace or default_namespace(),
                                 lease_duration=lease, renew_deadline=lease * 2 / 3, retry_period=lease * 2 / 15)


def _serve(args: argparse.Namespace) -> int:
    from istiod_lite.ca.config import CaConfig, JwksSource
    from istiod_lite.ca.tokenreview import TokenReviewConfig
    from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
    from istiod_lite.controlplane.waypoint_controller import WaypointControllerOptions

    ca = None
    if args.ca_dir:
        jwks = []
        for spec in args.jwks:
            issuer, sep, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
            jwks.append(JwksSource(Path(path), issuer) if sep and issuer else JwksSource(Path(path)))
        review = None
        if args.kubeconfig or args.token_review_in_cluster or args.in_cluster:
            review = TokenReviewConfig(kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
                                       context=args.kube_context)
        ca = CaConfig(ca_dir=Path(args.ca_dir), trust_domain=args.trust_domain, jwks=tuple(jwks), token_review=review)
    secure = args.secure_grpc_addr if ca is not None else ""
    if secure.startswith(":"):
        secure = "0.0.0.0" + secure
    if ca is None:
        logging.getLogger("istiod_lite").warning("no --ca-dir: the secure port (CA and authenticated xDS) is off")
    kube = None
    if (args.kubeconfig or args.in_cluster) and not args.no_cluster_config:
        from istiod_lite.sources import KubeSourceOptions

        kube = KubeSourceOptions(kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
                                 context=args.kube_context)
    if kube is None and not args.config:
        raise SystemExit("error: serve needs --config DIR, a cluster (--kubeconfig FILE or --in-cluster), or both")
    options = ControlPlaneOptions(
        config_dir=Path(args.config) if args.config else None,
        kube=kube,
        waypoint_controller=WaypointControllerOptions(image=args.waypoint_image, istiod_address=args.istiod_address,
                                                      trust_domain=args.trust_domain)
        if kube is not None and args.waypoint_image else None,
        leader_election=_leader_election(args) if kube is not None and args.leader_elect else None,
        grpc_addr="" if args.no_plaintext else args.grpc_addr,
        secure_grpc_addr=secure,
        ca=ca,
        server_sans=tuple(args.server_san),
        mtls_grpc_addr=args.mtls_grpc_addr if ca is not None else "",
        ca_workers=args.ca_workers,
        trust_domain=args.trust_domain,
        mesh=_mesh(args.mesh_config),
        dynamic_dns=_dynamic_dns(args),
        monitoring_addr=args.monitoring_addr,
        poll_interval=args.poll_interval,
        debounce=DebounceOptions(quiet=args.debounce_quiet, max_delay=args.debounce_max),
        xds=XdsServerOptions(
            write_timeout=args.stream_write_timeout,
            max_new_streams_per_second=args.max_new_streams_per_second,
            max_syncing_streams=args.max_syncing_streams,
            max_loop_lag=args.max_loop_lag_ms / 1000,
            initial_sync_timeout=args.initial_sync_timeout,
            admission_wait=args.admission_wait,
            max_concurrent_pushes=args.max_concurrent_pushes,
        ),
        max_connection_age=args.max_connection_age,
    )

    async def run() -> None:
        cp = ControlPlane(options)
        await cp.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log = logging.getLogger("istiod_lite")
        log.info("shutting down: draining xDS streams over %.1fs (a second signal skips the rest)",
                 args.shutdown_drain_duration)
        drain = asyncio.ensure_future(cp.drain(args.shutdown_drain_duration))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, drain.cancel)
        try:
            await drain
        except asyncio.CancelledError:
            log.warning("drain cut short by a second signal")
        await cp.stop()

    asyncio.run(run())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from istiod_lite.sources import DirectorySource

    logging.getLogger("istiod_lite.sources").setLevel(logging.ERROR)  # errors are printed below, once
    from istiod_lite.translator.diagnostics import diagnose

    update = DirectorySource(Path(args.config)).load()
    for err in update.errors:
        print(err)
    mesh = _mesh(getattr(args, "mesh_config", None))
    found = diagnose(update.snapshot, mesh, _dynamic_dns(args))
    for label, messages in (("binding", found.binding), ("ignored", found.routes),
                            ("authorization", found.authorization), ("telemetry", found.telemetry)):
        for message in messages:
            print(f"warning: {label}: {message}", file=sys.stderr)
    n = len(update.snapshot)
    print(f"{n} resource(s) valid, {len(update.errors)} error(s)", file=sys.stderr)
    return 1 if update.errors else 0


def _translate(args: argparse.Namespace) -> int:
    from istiod_lite.cli.render import render
    from istiod_lite.sources import DirectorySource
    from istiod_lite.translator import WaypointAssembly, WaypointRef, find_waypoints

    logging.getLogger("istiod_lite.sources").setLevel(logging.ERROR)
    update = DirectorySource(Path(args.config)).load()
    for err in update.errors:
        print(f"warning: skipped invalid resource: {err}", file=sys.stderr)
    try:
        ref = WaypointRef.parse(args.waypoint)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ref not in {w.ref for w in find_waypoints(update.snapshot)}:
        print(f"error: no waypoint Gateway {ref} (class istio-waypoint) in {args.config}", file=sys.stderr)
        return 1
    # The very assembly the server serves each proxy of the waypoint (at the waypoint's address).
    assembly = WaypointAssembly(ref, mesh=_mesh(args.mesh_config), dynamic_dns=_dynamic_dns(args))
    sys.stdout.write(render(assembly.proxy_resources(update.snapshot), args.output))
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    identity = WaypointIdentity(
        name=args.name, namespace=args.namespace, service_account=args.service_account or "", ip=args.ip,
    )
    boot = waypoint_bootstrap(identity, args.xds_address, admin_port=args.admin_port, delta=not args.sotw)
    print(json.dumps(boot, indent=2, sort_keys=True))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from istiod_lite.cli.demo import run_demo

    return asyncio.run(run_demo(Path(args.config), requests=args.requests, keep_running=args.keep_running))


def _proxy_status(args: argparse.Namespace) -> int:
    from istiod_lite.cli.proxy_status import fetch, table

    try:
        status = fetch(args.monitoring_addr)
    except OSError as exc:
        print(f"error: cannot reach {args.monitoring_addr}: {exc}", file=sys.stderr)
        return 1
    print(table(status))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="istiod-lite", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve xDS for waypoints from a YAML config directory and/or a cluster")
    s.add_argument("--config", metavar="DIR",
                   help="YAML config directory; optional when a cluster is watched (with both, a resource defined "
                        "in both is taken from the directory and reported as a conflict)")
    s.add_argument("--grpc-addr", default="0.0.0.0:15010", metavar="HOST:PORT", help="plaintext xDS")
    s.add_argument("--secure-grpc-addr", default=":15012", metavar="HOST:PORT",
                   help="TLS port: CA (CreateCertificate) and authenticated xDS; served when --ca-dir is given")
    s.add_argument("--no-plaintext", action="store_true", help="do not serve plaintext xDS (--grpc-addr)")
    s.add_argument("--ca-dir", metavar="DIR",
                   help="CA key material (Istio plug-in files, or a root generated there once) and the local "
                        "token issuer key")
    s.add_argument("--jwks", action="append", default=[], metavar="[ISSUER=]FILE",
                   help="trust tokens from this issuer, verified with the keys in FILE (JWKS or PEM); repeatable")
    s.add_argument("--server-san", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP in the secure port's certificate; repeatable")
    s.add_argument("--trust-domain", default="cluster.local")
    s.add_argument("--mesh-config", metavar="FILE",
                   help="Istio MeshConfig YAML (accessLogFile, accessLogEncoding, defaultProviders, "
                        "extensionProviders, "
                        "rootNamespace)")
    s.add_argument("--mtls-grpc-addr", default="", metavar="HOST:PORT",
                   help="also serve the CA and xDS on an mTLS-only port (client certificate renewals); off by default")
    s.add_argument("--kubeconfig", metavar="FILE",
                   help="watch this cluster's Services, Pods, Gateways, Istio config, ... as a config source, and "
                        "(with --ca-dir) authenticate callers' tokens with its TokenReview")
    s.add_argument("--kube-context", metavar="NAME", help="kubeconfig context (default: current)")
    s.add_argument("--in-cluster", action="store_true",
                   help="like --kubeconfig, with the pod's in-cluster service-account configuration")
    s.add_argument("--waypoint-image", metavar="IMAGE",
                   help="with a cluster: deploy each istio-waypoint Gateway (ServiceAccount, Deployment running "
                        "'istiod-lite waypoint run' in IMAGE, Service) and write its status")
    s.add_argument("--istiod-address", default="istiod-lite.istio-system.svc", metavar="HOST",
                   help="how deployed waypoints reach this server (port 15012 is appended)")
    s.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="with a cluster: only the replica holding the Lease istiod-lite-leader writes to it (status, "
                        "waypoint controller); every replica serves xDS and the CA (default: on)")
    s.add_argument("--leader-election-namespace", default="", metavar="NS",
                   help="namespace of the leader Lease (default: the pod's, POD_NAMESPACE, else istio-system)")
    s.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                   help="how long a leader's Lease lasts without renewal: the longest takeover after a leader "
                        "dies (renew deadline 2/3 and retry 2/15 of it, Kubernetes' defaults at 15 s)")
    s.add_argument("--no-cluster-config", action="store_true",
                   help="use the cluster only for TokenReview, not as a config source")
    s.add_argument("--token-review-in-cluster", action="store_true",
                   help="TokenReview with the in-cluster service-account configuration (implied by --in-cluster)")
    s.add_argument("--ca-workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="certificate-signing worker processes (0: one background thread)")
    s.add_argument("--monitoring-addr", default="0.0.0.0:15014", metavar="HOST:PORT")
    s.add_argument("--debounce-quiet", type=float, default=0.1, metavar="SECONDS")
    s.add_argument("--debounce-max", type=float, default=10.0, metavar="SECONDS")
    s.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS",
                   help="how often the config directory is checked for changes")
    s.add_argument("--max-syncing-streams", type=int, default=50, metavar="N",
                   help="admit a new xDS stream only while fewer than N are in their initial sync (0 = no bound)")
    s.add_argument("--max-loop-lag-ms", type=float, default=25.0, metavar="MS",
                   help="hold new xDS streams back while the event loop lags more than this (0 = off); "
                        "never while no other stream is syncing")
    s.add_argument("--initial-sync-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a stream stops counting as syncing after this long, synced or not")
    s.add_argument("--admission-wait", type=float, default=10.0, metavar="SECONDS",
                   help="longest wait of a new stream for admission; then RESOURCE_EXHAUSTED (the client retries)")
    s.add_argument("--max-new-streams-per-second", type=float, default=0.0, metavar="RATE",
                   help="also a fixed admission rate, as istiod's PILOT_MAX_REQUESTS_PER_SECOND (istiod-lite "
                        "before: 25, burst 100); 0 (default) = off")
    s.add_argument("--stream-write-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="close a stream whose writes stay blocked this long")
    s.add_argument("--max-concurrent-pushes", type=int, default=100, metavar="N",
                   help="streams building or writing a push at once (istiod: PILOT_PUSH_THROTTLE)")
    s.add_argument("--max-connection-age", type=float, default=1800.0, metavar="SECONDS",
                   help="close xDS connections after this age (gRPC adds jitter) to rebalance replicas; 0 = never")
    s.add_argument("--shutdown-drain-duration", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT: fail /ready, stop accepting, and close the open xDS streams with "
                        "UNAVAILABLE spread evenly over this time (proxies keep their config and reconnect to "
                        "another replica), then exit; as istiod's --shutdownDuration, which cuts them all at "
                        "its end. Keep it below the pod's terminationGracePeriodSeconds (30 s by default)")
    _add_dynamic_dns_args(s)
    s.set_defaults(func=_serve)

    from istiod_lite.cli.hbone_cmd import add_hbone_parser
    from istiod_lite.cli.token_cmd import add_token_parser

    add_token_parser(sub)
    add_hbone_parser(sub)

    v = sub.add_parser("validate", help="validate a config directory; exit 1 on any error")
    v.add_argument("--config", required=True, metavar="DIR")
    v.add_argument("--mesh-config", metavar="FILE",
                   help="Istio MeshConfig YAML (root namespace, ext_authz and telemetry providers for the checks)")
    _add_dynamic_dns_args(v)
    v.set_defaults(func=_validate)

    t = sub.add_parser("translate", help="print a waypoint's Envoy resources")
    t.add_argument("--config", required=True, metavar="DIR")
    t.add_argument("--waypoint", required=True, metavar="NS/NAME")
    t.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    t.add_argument("--mesh-config", metavar="FILE", help="Istio MeshConfig YAML (access logging)")
    _add_dynamic_dns_args(t)
    t.set_defaults(func=_translate)

    w = sub.add_parser("waypoint", help="waypoint proxy helpers")
    wsub = w.add_subparsers(dest="waypoint_command", required=True)
    from istiod_lite.cli.agent_cmd import add_run_parser

    add_run_parser(wsub)
    b = wsub.add_parser("bootstrap", help="print an Envoy bootstrap for a waypoint")
    b.add_argument("--name", required=True)
    b.add_argument("--namespace", required=True)
    b.add_argument("--service-account", default="")
    b.add_argument("--ip", default="127.0.1.1")
    b.add_argument("--xds-address", required=True, metavar="HOST:PORT")
    b.add_argument("--admin-port", type=int, default=15000)
    b.add_argument("--sotw", action="store_true", help="use State-of-the-World ADS instead of Delta")
    b.set_defaults(func=_bootstrap)

    ps = sub.add_parser("proxy-status", help="sync state of every connected proxy (like istioctl proxy-status)")
    ps.add_argument("--monitoring-addr", default="127.0.0.1:15014", metavar="HOST:PORT")
    ps.set_defaults(func=_proxy_status)

    # explain request (issue 16): the ``explain`` command's subparsers, shared with ``explain service``.
    from istiod_lite.explain.request_cli import add_request_parser

    ex = sub.add_parser("explain", help="explain what the mesh does with a service or a request")
    add_request_parser(ex.add_subparsers(dest="explain_command", required=True))

    d = sub.add_parser("demo", help="run the control plane, a real Envoy waypoint and demo pods; show traffic")
    d.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "examples" / "bookinfo"))
    d.add_argument("--requests", type=int, default=200)
    d.add_argument("--keep-running", action="store_true")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
