"""``istiod-lite token create``: mint a service-account token from the local issuer.

Stands in for ``kubectl create token`` when there is no cluster: the token carries the claims of
a projected Kubernetes service-account token and is accepted by the CA in ``--ca-dir`` (see
``istiod_lite.ca.tokens``).  Wired into the main parser with ``add_token_parser(sub)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from istiod_lite.ca.authn import DEFAULT_AUDIENCE
from istiod_lite.ca.errors import CaMaterialError
from istiod_lite.ca.tokens import DEFAULT_TOKEN_DURATION, create_token
from istiod_lite.model.types import parse_duration


def _duration(text: str) -> dt.timedelta:
    """argparse type: a Go duration (``1h``, ``30m``, ``90s``) that is strictly positive."""
    try:
        value = parse_duration(text)
    except ValueError as exc:  # PydanticCustomError is a ValueError
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {exc}") from exc
    if value.nanos <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return dt.timedelta(seconds=value.total_seconds)


def run_token_create(args: argparse.Namespace) -> int:
    """Print the token on stdout (only the token, so ``$(istiod-lite token create ...)`` works)."""
    audiences: list[str] = args.audience or [DEFAULT_AUDIENCE]
    try:
        token = create_token(Path(args.ca_dir), args.namespace, args.service_account, args.duration, audiences)
    except (ValueError, CaMaterialError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def add_token_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``token create`` to the main parser's sub-commands; returns the ``token`` parser."""
    token = subparsers.add_parser("token", help="service-account tokens from the local issuer")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="print a signed service-account token accepted by the CA in --ca-dir",
        description="Print a Kubernetes-style service-account JWT signed by the local issuer key "
                    "(issuer-key.pem in --ca-dir, created if missing).")
    create.add_argument("--ca-dir", required=True, metavar="DIR")
    create.add_argument("--namespace", "-n", required=True)
    create.add_argument("--service-account", required=True, metavar="SA")
    create.add_argument("--duration", type=_duration, default=DEFAULT_TOKEN_DURATION, metavar="D",
                        help="lifetime as a Go duration, e.g. 1h, 30m (default 1h)")
    create.add_argument("--audience", action="append", metavar="A",
                        help=f"audience; repeat for several (default {DEFAULT_AUDIENCE})")
    create.set_defaults(func=run_token_create)
    return token
