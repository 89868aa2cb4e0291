"""The local token issuer and ``istiod-lite token create``."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.ca.jwk import public_jwk
from istiod_lite.ca.keystore import ISSUER_KEY, load_or_create_issuer_key
from istiod_lite.ca.tokens import LOCAL_ISSUER, create_token, service_account_uid
from istiod_lite.cli.token_cmd import add_token_parser


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return tuple(json.loads(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))) for x in (h, p))  # type: ignore[return-value]


def test_claims_match_a_kubernetes_service_account_token(tmp_path: Path) -> None:
    token = create_token(tmp_path / "ca", "bookinfo", "reviews", dt.timedelta(hours=2), now=1_000_000)
    header, claims = decode(token)
    key = load_or_create_issuer_key(tmp_path / "ca")
    assert header == {"alg": "ES256", "kid": public_jwk(key.public_key())["kid"], "typ": "JWT"}
    assert claims["iss"] == LOCAL_ISSUER
    assert claims["sub"] == "system:serviceaccount:bookinfo:reviews"
    assert claims["aud"] == ["istio-ca"]
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1_000_000, 1_000_000, 1_000_000 + 7200)
    assert claims["kubernetes.io"] == {
        "namespace": "bookinfo",
        "serviceaccount": {"name": "reviews", "uid": service_account_uid("bookinfo", "reviews")},
    }
    assert claims["jti"] != decode(create_token(tmp_path / "ca", "bookinfo", "reviews"))[1]["jti"]


def test_issuer_key_created_on_first_use(tmp_path: Path) -> None:
    create_token(tmp_path / "fresh", "default", "default")
    assert (tmp_path / "fresh" / ISSUER_KEY).exists()


def test_several_audiences(tmp_path: Path) -> None:
    _, claims = decode(create_token(tmp_path, "default", "default", audience=["istio-ca", "other"]))
    assert claims["aud"] == ["istio-ca", "other"]


@pytest.mark.parametrize(("ns", "sa", "kw"), [
    ("Default", "sa", {}),
    ("ns", "a:b", {}),
    ("", "sa", {}),
    ("ns", "sa", {"duration": dt.timedelta(0)}),
    ("ns", "sa", {"audience": []}),
    ("ns", "sa", {"audience": [""]}),
])
def test_invalid_requests(tmp_path: Path, ns: str, sa: str, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        create_token(tmp_path, ns, sa, **kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="istiod-lite")
    add_token_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_prints_only_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["token", "create", "--ca-dir", str(tmp_path), "--namespace", "bookinfo",
                                 "--service-account", "reviews", "--duration", "90m", "--audience", "a",
                                 "--audience", "b"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    _, claims = decode(out.strip())
    assert claims["exp"] - claims["iat"] == 5400
    assert claims["aud"] == ["a", "b"]


def test_cli_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["token", "create", "--ca-dir", str(tmp_path), "-n", "default",
                                 "--service-account", "default"])
    assert args.func(args) == 0
    _, claims = decode(capsys.readouterr().out.strip())
    assert claims["exp"] - claims["iat"] == 3600 and claims["aud"] == ["istio-ca"]


@pytest.mark.parametrize("duration", ["0s", "1x", "--duration=-1h"])
def test_cli_bad_duration(tmp_path: Path, duration: str) -> None:
    argv = ["token", "create", "--ca-dir", str(tmp_path), "-n", "default", "--service-account", "default"]
    argv += [duration] if duration.startswith("--") else ["--duration", duration]
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)


def test_cli_bad_name_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["token", "create", "--ca-dir", str(tmp_path), "-n", "Bad_NS",
                                 "--service-account", "default"])
    assert args.func(args) == 1
    assert "invalid namespace" in capsys.readouterr().err
