"""``istiod-lite explain service`` and ``istiod-lite analyze``: the CLI side of ``istiod_lite.explain``.

Config comes from ``--config DIR``, from a cluster (``--kubeconfig FILE``: one list of every kind
through the same Kubernetes source ``serve`` watches, then closed; nothing is written to the
cluster), or from both merged (the directory wins a conflict, as in ``serve``).

``analyze`` exits as ``istioctl analyze`` does: 79 when, in the default log output, a message is
at ``--failure-threshold`` (default Error) or worse; 0 otherwise, and always 0 with ``-o json|yaml``
(istioctl sets the exit code only for the log format).  A config that cannot be read at all
(missing directory, unreachable cluster) exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from istiod_lite.model import ConfigError, ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig, MeshConfigInvalid, load_mesh_config

#: istioctl's ``ExitAnalyzerFoundIssues``.
EXIT_ANALYZER_FOUND_ISSUES = 79


class ConfigUnavailable(Exception):
    """The config could not be read at all."""


def load_config(args: argparse.Namespace) -> tuple[ConfigSnapshot, tuple[ConfigError, ...]]:
    """The snapshot and load errors from ``--config`` and/or ``--kubeconfig``."""
    from istiod_lite.sources import DirectorySource, KubeSource, KubeSourceOptions, MergedSource
    from istiod_lite.sources.contract import Source

    logging.getLogger("istiod_lite.sources").setLevel(logging.CRITICAL)  # errors are reported by the command
    sources: list[Source] = []
    names: list[str] = []
    kube: KubeSource | None = None
    if args.config:
        root = Path(args.config)
        if not root.is_dir():
            raise ConfigUnavailable(f"--config {args.config}: not a directory")
        sources.append(DirectorySource(root))
        names.append("directory")
    if args.kubeconfig:
        try:
            kube = KubeSource(KubeSourceOptions(kubeconfig=Path(args.kubeconfig), context=args.kube_context,
                                                sync_timeout=args.kube_timeout, report_status=False))
        except ValueError as exc:
            raise ConfigUnavailable(str(exc)) from None
        sources.append(kube)
        names.append("cluster")
    if not sources:
        raise ConfigUnavailable("give --config DIR, --kubeconfig FILE, or both")
    try:
        update = sources[0].load() if len(sources) == 1 else MergedSource(sources, names).load()
    except (TimeoutError, RuntimeError) as exc:
        raise ConfigUnavailable(f"cluster: {exc}") from None
    finally:
        if kube is not None:
            kube.close()
    return update.snapshot, update.errors


def _mesh(path: str | None) -> MeshConfig | None:
    if not path:
        return None
    try:
        return load_mesh_config(path)
    except (MeshConfigInvalid, OSError) as exc:
        raise ConfigUnavailable(f"--mesh-config {path}: {exc}") from None


def _explain_service(args: argparse.Namespace) -> int:
    from istiod_lite.explain import TargetNotFound, explain_service
    from istiod_lite.explain.render import service_text

    try:
        snapshot, errors = load_config(args)
        mesh = _mesh(args.mesh_config)
        found = explain_service(snapshot, args.service, mesh)
    except (ConfigUnavailable, TargetNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if errors:
        print(f"warning: {len(errors)} invalid resource(s) skipped (istiod-lite analyze lists them)", file=sys.stderr)
    if args.output == "json":
        sys.stdout.write(json.dumps({"services": [x.to_dict() for x in found]}, indent=2) + "\n")
    else:
        sys.stdout.write(service_text(found))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from istiod_lite.explain.analyze import analyze, exceeds

    try:
        snapshot, errors = load_config(args)
        found = analyze(snapshot, errors, _mesh(args.mesh_config))
    except ConfigUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_messages(found, args.output))
    if not found:
        print(f"\u2714 No validation issues found when analyzing {describe_target(args)}.", file=sys.stderr)
    if args.output == "log" and exceeds(found, args.failure_threshold):
        print(f"Analyzers found issues when analyzing {describe_target(args)} (at or above "
              f"{args.failure_threshold}).", file=sys.stderr)
        return EXIT_ANALYZER_FOUND_ISSUES
    return 0


def render_messages(found: list[Any], fmt: str) -> str:
    """``log`` (one line each), ``json`` (a list, indented) or ``yaml``; empty output for no message
    in the log format, ``[]`` in the others."""
    if fmt == "log":
        return "".join(x.log_line() + "\n" for x in found)
    data = [x.to_dict() for x in found]
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=True, default_flow_style=False) if data else "[]\n"
    return json.dumps(data, indent=2) + "\n"


def describe_target(args: argparse.Namespace) -> str:
    parts = [f"directory {args.config}"] if args.config else []
    if args.kubeconfig:
        parts.append("the cluster")
    return " and ".join(parts)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="DIR", help="YAML config directory (optional with --kubeconfig)")
    p.add_argument("--kubeconfig", metavar="FILE", help="read the config from this cluster (one list, read only)")
    p.add_argument("--kube-context", metavar="NAME", help="kubeconfig context (default: current)")
    p.add_argument("--kube-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up on the cluster after this long")
    p.add_argument("--mesh-config", metavar="FILE", help="Istio MeshConfig YAML (root namespace, providers)")


def add_explain_parsers(sub: Any) -> None:
    """``explain service`` (``explain`` takes one sub-command per question) and ``analyze``."""
    e = sub.add_parser("explain", help="why config does (not) apply (explain service NS/NAME) and what a "
                                       "waypoint does with a request (explain request)")
    esub = e.add_subparsers(dest="explain_command", required=True)
    s = esub.add_parser("service", help="which waypoint serves a service, and what applies to it there (and what "
                                        "does not, and why)")
    s.add_argument("service", metavar="NS/NAME", help="a Service, a ServiceEntry host (NS/HOST) or a ServiceEntry")
    _config_args(s)
    s.add_argument("-o", "--output", choices=["text", "json"], default="text")
    s.set_defaults(func=_explain_service)
    from istiod_lite.cli.explain_request_cmd import add_request_parser

    add_request_parser(esub)

    a = sub.add_parser("analyze", help="analysis messages with Istio's codes (and ISTL codes for waypoint issues "
                                       "Istio does not check); exit 79 on messages at --failure-threshold or worse")
    _config_args(a)
    a.add_argument("--failure-threshold", choices=["Info", "Warning", "Error"], default="Error",
                   help="the level at which the log output exits 79 (default Error, as istioctl)")
    a.add_argument("-o", "--output", choices=["log", "json", "yaml"], default="log")
    a.set_defaults(func=_analyze)
