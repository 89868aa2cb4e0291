"""``istiod-lite hbone``: flags -> config and credential source; mistakes exit 2 before Envoy starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from istiod_lite.cli.hbone_cmd import add_hbone_parser, forward_config, inbound_config, main
from istiod_lite.hbone import CaCredentials, Endpoint, FileCredentials
from istiod_lite.hbone.config import HBONE_PORT

FILES = ["--cert", "c.pem", "--key", "k.pem", "--root-cert", "r.pem"]


def parse(*argv: str) -> argparse.Namespace:
    """Through ``add_hbone_parser``, exactly as the main ``istiod-lite`` parser will be wired."""
    parser = argparse.ArgumentParser(prog="istiod-lite")
    add_hbone_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["hbone", *argv])


def test_forward_flags_and_specs() -> None:
    args = parse("forward", "--listen", "127.0.0.1:7000", "--destination", "127.10.0.1:9080",
                 "--forward-spec", "127.0.0.1:7001=127.10.0.2:80", "--waypoint", "127.0.1.1", *FILES)
    config = forward_config(args)
    assert [(str(t.listen), str(t.destination), str(t.waypoint)) for t in config.outbound] == [
        ("127.0.0.1:7000", "127.10.0.1:9080", "127.0.1.1:15008"),
        ("127.0.0.1:7001", "127.10.0.2:80", "127.0.1.1:15008"),
    ]
    assert config.trust_domain == "cluster.local"


def test_inbound_flags_and_specs() -> None:
    args = parse("inbound", "--listen", "127.0.2.1", "--forward", "127.0.0.1:8080",
                 "--inbound-spec", "127.0.2.2", "--inbound-spec", "127.0.2.3:15009=127.0.0.1:8081",
                 "--trust-domain", "example.org", *FILES)
    config = inbound_config(args)
    assert [(t.listen, t.forward) for t in config.inbound] == [
        (Endpoint("127.0.2.1", HBONE_PORT), Endpoint("127.0.0.1", 8080)),
        (Endpoint("127.0.2.2", HBONE_PORT), None),
        (Endpoint("127.0.2.3", 15009), Endpoint("127.0.0.1", 8081)),
    ]
    assert config.peer_san_prefix == "spiffe://example.org/"


@pytest.mark.parametrize(("argv", "message"), [
    (["forward", "--waypoint", "127.0.1.1", *FILES], "nothing to forward"),
    (["forward", "--waypoint", "127.0.1.1", "--listen", "127.0.0.1:1", *FILES], "go together"),
    (["forward", "--waypoint", "wp.local:15008", "--forward-spec", "127.0.0.1:1=127.10.0.1:80", *FILES], "not an IP"),
    (["forward", "--waypoint", "127.0.1.1", "--forward-spec", "127.0.0.1:1", *FILES], "LISTEN=TARGET"),
    (["inbound", "--listen", "0.0.0.0", *FILES], "relay to any host"),
    (["inbound", "--forward", "127.0.0.1:80", *FILES], "--forward needs --listen"),
    (["inbound", "--listen", "127.0.2.1", "--cert", "c", "--key", "k"], "--root-cert is required"),
    (["inbound", "--listen", "127.0.2.1", "--root-cert", "r"], "give --cert and --key"),
    (["inbound", "--listen", "127.0.2.1", "--identity", "default", *FILES], "NAMESPACE/SERVICE_ACCOUNT"),
    (["inbound", "--listen", "127.0.2.1", *FILES, "--ca-address", "127.0.0.1:15012", "--token-file", "t"],
     "not both"),
    (["inbound", "--listen", "127.0.2.1", "--root-cert", "r", "--ca-address", "127.0.0.1:15012",
      "--token-file", "t"], "needs --identity"),
])
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_credential_sources(tmp_path: Path) -> None:
    from istiod_lite.cli.hbone_cmd import _credentials, _identity

    args = parse("inbound", "--listen", "127.0.2.1", *FILES)
    assert isinstance(_credentials(args, _identity(args)), FileCredentials)
    root = tmp_path / "root.pem"
    root.write_text("ROOT")
    args = parse("forward", "--waypoint", "127.0.1.1", "--identity", "shop/sleep", "--root-cert", str(root),
                 "--ca-address", "127.0.0.1:15012", "--token-file", "t", "--cert-ttl", "600")
    source = _credentials(args, _identity(args))
    assert isinstance(source, CaCredentials)
    assert source.spiffe_id == "spiffe://cluster.local/ns/shop/sa/sleep"
    assert source.client.ttl_s == 600 and source.client.roots_pem == "ROOT"


def test_missing_credential_files_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = ["--cert", str(tmp_path / "c"), "--key", str(tmp_path / "k"), "--root-cert", str(tmp_path / "r")]
    assert main(["inbound", "--listen", "127.0.2.1", "--forward", "127.0.0.1:80", *missing]) == 1
    assert "cannot read certificate" in capsys.readouterr().err
