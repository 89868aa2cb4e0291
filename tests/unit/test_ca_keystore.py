"""Key material: generate once and reuse, file modes, plug-in bundles, refusal of broken bundles."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from istiod_lite.ca.errors import CaMaterialError
from istiod_lite.ca.jwk import parse_verification_keys, public_jwk
from istiod_lite.ca.keystore import (
    CA_CERT,
    CA_KEY,
    CERT_CHAIN,
    GENERATED_MARKER,
    ISSUER_JWKS,
    ISSUER_KEY,
    ROOT_CERT,
    load_or_create,
    load_or_create_issuer_key,
)
from tests.unit.test_ca_fixtures import key_pem, make_intermediate_bundle, p256, pem, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_self_signed_root_generated_once_and_reused(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "ca", trust_domain="example.org")
    second = load_or_create(tmp_path / "ca", trust_domain="ignored-now")
    assert first.self_signed and second.self_signed
    assert first.signing_cert == second.signing_cert == first.roots[0]
    assert first.intermediates == ()
    root = first.signing_cert
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "example.org"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert root.not_valid_after_utc - root.not_valid_before_utc >= dt.timedelta(days=3650)
    assert isinstance(first.signing_key, ec.EllipticCurvePrivateKey)
    assert first.signing_key.curve.name == "secp256r1"


def test_file_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    assert _mode(ca_dir / CA_KEY) == 0o600
    assert _mode(ca_dir / ISSUER_KEY) == 0o600
    assert _mode(ca_dir / ROOT_CERT) == 0o644
    assert _mode(ca_dir / CA_CERT) == 0o644
    assert _mode(ca_dir / ISSUER_JWKS) == 0o644
    assert (ca_dir / GENERATED_MARKER).exists()
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp")]


def test_rsa_root_option(tmp_path: Path) -> None:
    material = load_or_create(tmp_path / "ca", key_type="rsa-2048")
    assert isinstance(material.signing_key, rsa.RSAPrivateKey)
    assert material.signing_key.key_size == 2048


def test_unknown_key_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown key type"):
        load_or_create(tmp_path / "ca", key_type="dsa")  # type: ignore[arg-type]


def test_plugin_intermediate_bundle(tmp_path: Path) -> None:
    root, inter = make_intermediate_bundle(tmp_path / "ca")
    material = load_or_create(tmp_path / "ca")
    assert not material.self_signed
    assert material.signing_cert == inter
    assert material.intermediates == (inter,)
    assert material.roots == (root,)
    assert material.chain_tail_pem == (pem(inter), pem(root))
    # The plug-in files are untouched; only the issuer key was added.
    assert (tmp_path / "ca" / ISSUER_KEY).exists()
    assert not (tmp_path / "ca" / GENERATED_MARKER).exists()


@pytest.mark.parametrize("missing", [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT])
def test_partial_bundle_is_fatal(tmp_path: Path, missing: str) -> None:
    make_intermediate_bundle(tmp_path / "ca")
    (tmp_path / "ca" / missing).unlink()
    with pytest.raises(CaMaterialError, match=f"partial CA bundle.*{missing}"):
        load_or_create(tmp_path / "ca")


def test_key_not_matching_cert(tmp_path: Path) -> None:
    make_intermediate_bundle(tmp_path / "ca")
    write_private(tmp_path / "ca" / CA_KEY, key_pem(p256()))
    with pytest.raises(CaMaterialError, match="does not match"):
        load_or_create(tmp_path / "ca")


def test_chain_not_leading_to_root(tmp_path: Path) -> None:
    make_intermediate_bundle(tmp_path / "ca")
    other_root, _ = make_intermediate_bundle(tmp_path / "other")
    (tmp_path / "ca" / ROOT_CERT).write_text(pem(other_root))
    (tmp_path / "ca" / CERT_CHAIN).write_text((tmp_path / "ca" / CA_CERT).read_text())
    with pytest.raises(CaMaterialError, match="does not lead"):
        load_or_create(tmp_path / "ca")


def test_garbage_cert_file(tmp_path: Path) -> None:
    make_intermediate_bundle(tmp_path / "ca")
    (tmp_path / "ca" / CA_CERT).write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CaMaterialError):
        load_or_create(tmp_path / "ca")


def test_leaf_as_signing_cert_is_refused(tmp_path: Path) -> None:
    from istiod_lite.ca.authority import CertificateAuthority
    from tests.unit.test_ca_fixtures import SPIFFE, build_csr

    ca = CertificateAuthority(load_or_create(tmp_path / "ca"))
    key = p256()
    leaf_pem = ca.sign_csr(build_csr(key), SPIFFE, 3600)[0]
    bundle = tmp_path / "bad"
    bundle.mkdir()
    (bundle / CA_CERT).write_text(leaf_pem)
    write_private(bundle / CA_KEY, key_pem(key))
    (bundle / CERT_CHAIN).write_text("")
    (bundle / ROOT_CERT).write_text(ca.material.root_pem)
    with pytest.raises(CaMaterialError, match="not a CA"):
        load_or_create(bundle)


def test_issuer_key_and_jwks(tmp_path: Path) -> None:
    key = load_or_create_issuer_key(tmp_path / "ca")
    again = load_or_create_issuer_key(tmp_path / "ca")
    assert key.private_numbers() == again.private_numbers()
    jwks = json.loads((tmp_path / "ca" / ISSUER_JWKS).read_text())
    assert jwks["keys"] == [public_jwk(key.public_key())]
    assert jwks["keys"][0]["alg"] == "ES256" and "d" not in jwks["keys"][0]
    [vk] = parse_verification_keys((tmp_path / "ca" / ISSUER_JWKS).read_text())
    assert vk.key == key.public_key() and vk.kid == jwks["keys"][0]["kid"]


def test_jwk_thumbprint_matches_rfc7638_example() -> None:
    # RFC 7638 section 3.1: the example RSA key and its thumbprint.
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
         "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
         "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_"
         "xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
    key = rsa.RSAPublicNumbers(65537, int.from_bytes(base64.urlsafe_b64decode(n + "=="), "big")
                               ).public_key()
    assert public_jwk(key)["kid"] == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# -- who may have put the files there (issue 14, finding 4) -----------------------------------------

_OTHER_UID = 54321


def _chown_or_skip(path: Path, uid: int) -> None:
    try:
        os.chown(path, uid, -1, follow_symlinks=False)
    except PermissionError as exc:
        pytest.skip(f"cannot give {path} to uid {uid} to simulate another user: {exc}")


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777, 0o757])
def test_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    ca_dir.chmod(mode)
    with pytest.raises(CaMaterialError, match=rf"{ca_dir}.*writable by group or others"):
        load_or_create(ca_dir)
    with pytest.raises(CaMaterialError, match="writable by group or others"):
        load_or_create_issuer_key(ca_dir)  # `token create` reads the same directory
    assert list(ca_dir.iterdir()) == []  # nothing was generated in it


def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir(mode=0o700)
    _chown_or_skip(ca_dir, _OTHER_UID)
    with pytest.raises(CaMaterialError, match=rf"{ca_dir}.*owned by uid {_OTHER_UID}"):
        load_or_create(ca_dir)


def test_existing_ca_in_a_directory_taken_over_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    _chown_or_skip(ca_dir, _OTHER_UID)
    with pytest.raises(CaMaterialError, match="owned by uid"):
        load_or_create(ca_dir)


@pytest.mark.parametrize("name", [CA_KEY, ISSUER_KEY, ROOT_CERT])
def test_file_owned_by_another_user_is_refused(tmp_path: Path, name: str) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    _chown_or_skip(ca_dir / name, _OTHER_UID)
    with pytest.raises(CaMaterialError, match=rf"{ca_dir / name}.*owned by uid {_OTHER_UID}"):
        load_or_create(ca_dir)


@pytest.mark.parametrize("name", [CA_KEY, ISSUER_KEY])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_readable_by_others_is_refused(tmp_path: Path, name: str, mode: int) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    (ca_dir / name).chmod(mode)
    with pytest.raises(CaMaterialError, match=rf"{ca_dir / name}.*0o?{mode:o}.*0600"):
        load_or_create(ca_dir)


def test_certificate_writable_by_others_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    (ca_dir / ROOT_CERT).chmod(0o666)
    with pytest.raises(CaMaterialError, match=rf"{ca_dir / ROOT_CERT}.*writable by group or others"):
        load_or_create(ca_dir)


@pytest.mark.parametrize("name", [CA_KEY, ISSUER_KEY, CA_CERT, ROOT_CERT])
def test_symlinked_file_is_refused(tmp_path: Path, name: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    load_or_create(elsewhere)
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    (ca_dir / name).unlink()
    (ca_dir / name).symlink_to(elsewhere / name)
    with pytest.raises(CaMaterialError, match=rf"{ca_dir / name}.*symbolic link"):
        load_or_create(ca_dir)


def test_dangling_key_symlink_is_refused_not_replaced(tmp_path: Path) -> None:
    # A dangling link must not read as "no key yet": writing through it would plant our key elsewhere,
    # and generating a new issuer key would silently change every token's signer.
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    (ca_dir / ISSUER_KEY).unlink()
    (ca_dir / ISSUER_KEY).symlink_to(tmp_path / "planted")
    with pytest.raises(CaMaterialError, match="symbolic link"):
        load_or_create(ca_dir)
    assert not (tmp_path / "planted").exists()


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    load_or_create(real)
    (tmp_path / "ca").symlink_to(real)
    with pytest.raises(CaMaterialError, match=rf"{tmp_path / 'ca'}.*symbolic link"):
        load_or_create(tmp_path / "ca")


def test_group_readable_directory_and_certificates_are_accepted(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create(ca_dir)
    ca_dir.chmod(0o755)
    (ca_dir / ROOT_CERT).chmod(0o644)
    assert load_or_create(ca_dir).self_signed
