"""DestinationRule file credentials are read only from the agent's credential directories
(``--credential-dir``; default Istio's /etc/certs and /etc/istio): a DestinationRule must not make
the agent serve, say, the CA's key to Envoy (issue 14, finding 6b)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from istiod_lite.agent.filesecrets import DEFAULT_CREDENTIAL_DIRS, FileSecrets
from istiod_lite.cli.agent_cmd import config_from_args
from tests.unit.test_agent_cli import parse
from tests.unit.test_agent_sds_files import Pki


async def test_a_file_outside_the_default_credential_dirs_is_not_served(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    pki = Pki(tmp_path)
    files = FileSecrets()
    assert not await files.request([pki.root_name, pki.cert_name])
    assert files.secrets() == {}
    assert all("credential" in why for why in files.watched().values()), files.watched()
    assert any("--credential-dir" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_only_the_configured_directories_are_read(tmp_path: Path) -> None:
    allowed, other = tmp_path / "certs", tmp_path / "ca"
    allowed.mkdir()
    other.mkdir()
    good, secret = Pki(allowed), Pki(other)
    files = FileSecrets(credential_dirs=(allowed,))
    await files.request([good.root_name, good.cert_name, secret.root_name, secret.cert_name])
    assert set(files.secrets()) == {good.root_name, good.cert_name}
    # Not through a symlink inside the directory, nor through "..".
    (allowed / "link.pem").symlink_to(secret.key_path)
    (allowed / "linkca.pem").symlink_to(secret.ca_path)
    sneaky = [f"file-root:{allowed / 'linkca.pem'}", f"file-root:{allowed}/../ca/ca.pem",
              f"file-cert:{good.cert_path}~{allowed / 'link.pem'}"]
    await files.request(sneaky)
    assert set(files.secrets()) == {good.root_name, good.cert_name}


async def test_a_symlink_swapped_to_point_outside_is_not_served(tmp_path: Path) -> None:
    allowed, other = tmp_path / "certs", tmp_path / "ca"
    allowed.mkdir()
    other.mkdir()
    good, secret = Pki(allowed, "good"), Pki(other)
    link = allowed / "root.pem"
    link.symlink_to(good.ca_path)
    files = FileSecrets(credential_dirs=(allowed,))
    name = f"file-root:{link}"
    await files.request([name])
    before = files.secrets()[name]
    link.unlink()
    link.symlink_to(secret.ca_path)
    await files.poll()
    assert files.secrets()[name] == before  # the last good version, not the outside file
    assert "credential" in files.watched()[name] or files.watched()[name] == ""


async def test_the_system_bundle_is_always_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from istiod_lite.agent import filesecrets

    bundle = Pki(tmp_path).ca_path
    monkeypatch.setattr(filesecrets, "system_ca_bundle", lambda: bundle)
    files = FileSecrets(credential_dirs=())
    await files.request(["file-root:system"])
    assert set(files.secrets()) == {"file-root:system"}
    assert files.secrets()["file-root:system"].validation_context.trusted_ca.inline_bytes == bundle.read_bytes()


def test_credential_dir_flag() -> None:
    assert config_from_args(parse()).credential_dirs == DEFAULT_CREDENTIAL_DIRS
    config = config_from_args(parse("--credential-dir", "/a", "--credential-dir", "/b/"))
    assert config.credential_dirs == (Path("/a"), Path("/b"))
