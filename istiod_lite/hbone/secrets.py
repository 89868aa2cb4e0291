"""Write credentials as Envoy file-based SDS resources, replacing them atomically.

Each file holds one ``Secret`` with its PEM inline, so a certificate and its key always change
together (one rename), and Envoy, which watches each file for a rename onto it, reloads it
without dropping connections.  The certificate file holds a private key: it is created 0600 inside
a 0700 directory and never exists half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

from istiod_lite.ca.keystore import write_atomic
from istiod_lite.hbone.bootstrap import CERT_SECRET, ROOT_SECRET, SecretFiles
from istiod_lite.hbone.credentials import Credentials

_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _document(secret: dict[str, object]) -> bytes:
    return json.dumps({"resources": [{"@type": _SECRET_TYPE, **secret}]}, indent=1).encode()


def write_secrets(directory: Path, credentials: Credentials) -> SecretFiles:
    """Write (or replace) ``default`` and ``ROOTCA`` in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = SecretFiles(certificate=directory / "default.json", roots=directory / "ROOTCA.json")
    certificate = _document({
        "name": CERT_SECRET,
        "tls_certificate": {
            "certificate_chain": {"inline_string": credentials.chain_pem},
            "private_key": {"inline_string": credentials.key_pem},
        },
    })
    roots = _document({"name": ROOT_SECRET, "validation_context": {"trusted_ca": {
        "inline_string": credentials.roots_pem}}})
    write_atomic(files.certificate, certificate, 0o600)
    # Rewriting unchanged roots would make Envoy rebuild every TLS context for nothing.
    if not files.roots.exists() or files.roots.read_bytes() != roots:
        write_atomic(files.roots, roots, 0o644)
    return files
