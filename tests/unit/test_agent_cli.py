"""``istiod-lite waypoint run`` arguments -> agent settings (the run itself is in tests/e2e)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from istiod_lite.cli.agent_cmd import EXIT_USAGE, add_run_parser, config_from_args, run_waypoint

REQUIRED = ["--name", "wp", "--namespace", "ns1", "--token-file", "/t", "--xds-address", "127.0.0.1:15012",
            "--root-cert", "/root.pem", "--envoy-bin", "/bin/true"]


def parse(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="istiod-lite")
    sub = parser.add_subparsers(dest="command", required=True)
    waypoint = sub.add_parser("waypoint")
    add_run_parser(waypoint.add_subparsers(dest="waypoint_command", required=True))
    return parser.parse_args(["waypoint", "run", *REQUIRED, *extra])


def test_defaults_are_istios() -> None:
    args = parse()
    assert args.func is run_waypoint
    config = config_from_args(args)
    assert config.spiffe == "spiffe://cluster.local/ns/ns1/sa/wp"  # the SA defaults to the waypoint name
    assert config.ca_address == "127.0.0.1:15012"  # CA and xDS share istiod's secure port
    assert config.xds_tls and config.delta
    assert config.cert_ttl == 24 * 3600
    assert config.key_algorithm == "ec-p256"
    assert config.envoy.admin_port == 15000 and config.envoy.binary == "/bin/true"
    assert config.envoy.drain_timeout == 5.0
    # pilot-agent's drain: ProxyConfig drainDuration 45s, the immediate strategy, terminationDrainDuration 5s.
    assert config.envoy.drain_duration == 45.0 and config.envoy.drain_strategy == "immediate"
    assert config.envoy.termination_drain_duration == 5.0
    assert config.work_dir is None
    assert config.rotation.grace_ratio == 0.5


def test_options() -> None:
    config = config_from_args(parse(
        "--service-account", "sa1", "--trust-domain", "example.org", "--ca-address", "localhost:15012",
        "--cert-ttl", "20s", "--key-type", "rsa-2048", "--plaintext-xds", "--sotw", "--admin-port", "0",
        "--work-dir", "/tmp/wp", "--drain-timeout", "1.5s", "--max-restarts", "3", "--ip", "127.0.1.9"))
    assert config.spiffe == "spiffe://example.org/ns/ns1/sa/sa1"
    assert config.ca_address == "localhost:15012"
    assert config.cert_ttl == 20 and config.key_algorithm == "rsa-2048"
    assert not config.xds_tls and not config.delta
    assert config.envoy.admin_port == 0 and config.envoy.max_restarts == 3
    assert config.envoy.drain_timeout == 1.5
    assert config.work_dir == Path("/tmp/wp")
    assert config.identity.ip == "127.0.1.9"


def test_drain_options() -> None:
    config = config_from_args(parse("--drain-duration", "10s", "--drain-strategy", "gradual",
                                    "--termination-drain-duration", "0s"))
    assert config.envoy.drain_duration == 10.0 and config.envoy.drain_strategy == "gradual"
    assert config.envoy.termination_drain_duration == 0.0


@pytest.mark.parametrize("bad", [["--drain-strategy", "slow"], ["--drain-duration", "0s"],
                                 ["--termination-drain-duration", "-1s"]])
def test_bad_drain_values_are_rejected(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*bad)


@pytest.mark.parametrize("bad", [["--cert-ttl", "0s"], ["--cert-ttl", "soon"], ["--xds-address", "nope"]])
def test_bad_values_are_usage_errors(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*bad)
    assert info.value.code == 2


def test_invalid_identity_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_waypoint(parse("--service-account", "Not_Valid")) == EXIT_USAGE
    assert "invalid service account" in capsys.readouterr().err
    assert run_waypoint(parse("--cert-ttl", "0.5s")) == EXIT_USAGE


def test_ttl_is_whole_seconds() -> None:
    assert config_from_args(parse("--cert-ttl", "1m30s")).cert_ttl == int(dt.timedelta(seconds=90).total_seconds())


def test_envoy_gets_the_drain_flags(tmp_path: Path) -> None:
    from istiod_lite.agent.runner import WaypointAgent

    def envoy_argv(*extra: str) -> list[str]:
        config = config_from_args(parse("--work-dir", str(tmp_path / "wp"), *extra))
        return WaypointAgent(config).supervisor.command()

    cmd = envoy_argv()
    assert cmd[cmd.index("--drain-time-s") + 1] == "45" and cmd[cmd.index("--drain-strategy") + 1] == "immediate"
    cmd = envoy_argv("--drain-duration", "2500ms", "--drain-strategy", "gradual")
    assert cmd[cmd.index("--drain-time-s") + 1] == "3"  # Envoy takes whole seconds: rounded up
    assert cmd[cmd.index("--drain-strategy") + 1] == "gradual"
