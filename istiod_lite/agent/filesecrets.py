"""Secrets read from files: the TLS credentials a DestinationRule names, as Istio's agent serves them.

The translator (``translator/clusters/upstream_tls.py``) never puts a DestinationRule's file paths into
Envoy's config.  It names SDS secrets instead, and the agent reads the files:

* ``file-root:<path>`` -- a CA bundle, served as ``validation_context.trusted_ca``;
  ``file-root:system`` is the system's bundle (the first of Istio's well-known paths that exists);
* ``file-cert:<cert-path>~<key-path>`` -- a certificate chain and its key, served as
  ``tls_certificate``.

A file is read when Envoy first asks for a secret naming it (never before, so the agent reads only
what the waypoint's config uses), then watched: ``poll`` compares each file's ``stat`` signature
(inode, size, mtime, ctime -- so an atomic rename, a Kubernetes ``..data`` symlink swap or a chmod
all count) and re-reads only what changed.  Content is checked before it is served, because one
bad secret in an SDS response makes Envoy reject the whole response: every PEM must parse, and a
key must belong to the first certificate.

A file that is missing, unreadable or invalid is logged and *not served*: Envoy keeps the cluster
warming (``initial_fetch_timeout: 0s``) and the secret is served as soon as a change makes the file
valid.  A secret that was valid and then breaks keeps its last good version (withdrawing it would
not make any connection work).  Secrets no stream asks for any more are dropped after two polls.

Only files under the agent's credential directories are read (``--credential-dir``, default
``DEFAULT_CREDENTIAL_DIRS``), checked on the file's real path at every read: a DestinationRule is
written by a namespace's users, and must not make the agent hand Envoy any file the agent can read
(on a single host, the CA's key).  The system bundle (``file-root:system``) is always allowed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from istiod_lite.safetext import safe

log = logging.getLogger(__name__)

FILE_ROOT_PREFIX = "file-root:"
FILE_CERT_PREFIX = "file-cert:"
#: ``file-root:system``: the system CA bundle (Istio: ``security.FileRootSystemCACert``).
SYSTEM_ROOTS = "system"
#: Where the system bundle is looked for, in order (Istio's list, pkg/security).
SYSTEM_CA_BUNDLES: tuple[str, ...] = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",  # OpenSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7
    "/etc/ssl/cert.pem",  # Alpine
)
#: Where DestinationRule credentials may be read from unless ``--credential-dir`` is given: Istio's
#: conventional mount points, ``/etc/certs`` (where Istio's DestinationRule examples mount user
#: certificates, ``sidecar.istio.io/userVolumeMount``) and ``/etc/istio`` (the proxy's own mounts).
DEFAULT_CREDENTIAL_DIRS: tuple[Path, ...] = (Path("/etc/certs"), Path("/etc/istio"))
#: A file's identity and content version as ``stat`` sees it; None: it cannot be stat'ed.
Signature = tuple[tuple[int, int, int, int, int] | None, ...]


class FileSecretError(Exception):
    """A secret's files cannot be served (missing, unreadable, not PEM, key not matching)."""


def is_file_secret(name: str) -> bool:
    return name.startswith((FILE_ROOT_PREFIX, FILE_CERT_PREFIX))


@dataclass(frozen=True)
class FileSecretSource:
    """What one secret name refers to: a CA bundle ``(ca,)`` or a certificate and key ``(cert, key)``."""

    name: str
    paths: tuple[Path, ...]

    @property
    def is_root(self) -> bool:
        return len(self.paths) == 1


def system_ca_bundle(candidates: Iterable[str] = SYSTEM_CA_BUNDLES) -> Path:
    """The first system bundle that exists (else the first candidate, so the error names it)."""
    paths = [Path(p) for p in candidates]
    return next((p for p in paths if p.is_file()), paths[0])


def parse_name(name: str) -> FileSecretSource:
    """The files of a ``file-root:``/``file-cert:`` secret name; ``FileSecretError`` if malformed."""
    if name.startswith(FILE_ROOT_PREFIX):
        path = name[len(FILE_ROOT_PREFIX):]
        if not path:
            raise FileSecretError(f"{name!r}: no path")
        return FileSecretSource(name, (system_ca_bundle() if path == SYSTEM_ROOTS else Path(path),))
    if name.startswith(FILE_CERT_PREFIX):
        parts = name[len(FILE_CERT_PREFIX):].split("~")
        if len(parts) != 2 or not all(parts):
            raise FileSecretError(f"{name!r}: expected file-cert:<cert-path>~<key-path>")
        return FileSecretSource(name, (Path(parts[0]), Path(parts[1])))
    raise FileSecretError(f"{name!r} is not a file secret")


def signature(source: FileSecretSource) -> Signature:
    out: list[tuple[int, int, int, int, int] | None] = []
    for path in source.paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def allowed_path(path: Path, credential_dirs: Sequence[Path]) -> Path:
    """``path``'s real location (symlinks and ``..`` resolved), if that lies under one of the
    ``credential_dirs`` (themselves resolved); ``FileSecretError`` otherwise.  Reading the returned
    path, not ``path``, means a symlink swapped after the check does not lead outside."""
    real = Path(os.path.realpath(path))
    if any(real.is_relative_to(os.path.realpath(d)) for d in credential_dirs):
        return real
    dirs = ", ".join(map(str, credential_dirs)) or "none"
    raise FileSecretError(f"{path} is outside the credential directories ({dirs}); the agent reads "
                          "DestinationRule credentials only there (agent flag --credential-dir)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileSecretError(f"cannot read {path}: {exc.strerror or exc}") from None


def _certificates(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise FileSecretError(f"{path}: no valid PEM certificate")
    return certs


def load_secret(source: FileSecretSource, credential_dirs: Sequence[Path] | None = None) -> secret_pb2.Secret:
    """Read and check ``source``'s files; the secret, inline (blocking: run it in a thread).

    ``credential_dirs``: the only directories files may be read from (``None``: anywhere, for
    callers that chose the paths themselves); the system bundle is always allowed."""
    if credential_dirs is not None and source.name != FILE_ROOT_PREFIX + SYSTEM_ROOTS:
        source = FileSecretSource(source.name, tuple(allowed_path(p, credential_dirs) for p in source.paths))
    if source.is_root:
        (ca_path,) = source.paths
        ca = _read(ca_path)
        _certificates(ca_path, ca)
        return secret_pb2.Secret(
            name=source.name,
            validation_context=common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=ca)))
    cert_path, key_path = source.paths
    chain, key_pem = _read(cert_path), _read(key_path)
    leaf = _certificates(cert_path, chain)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise FileSecretError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise FileSecretError(f"{key_path} is not the key of the first certificate in {cert_path}")
    return secret_pb2.Secret(
        name=source.name,
        tls_certificate=common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(inline_bytes=chain),
                                                  private_key=base_pb2.DataSource(inline_bytes=key_pem)))


@dataclass
class _Watched:
    source: FileSecretSource | None  # None: the name is malformed (never served)
    signature: Signature = ()
    secret: secret_pb2.Secret | None = None
    error: str = ""
    idle_polls: int = 0


def _refresh(w: _Watched, first: bool, credential_dirs: Sequence[Path] | None) -> bool:
    """Re-read ``w`` if its files changed (always when ``first``); True if its served secret changed.

    Blocking (stat and read): run in a thread."""
    if w.source is None:
        return False
    sig = signature(w.source)
    if not first and sig == w.signature:
        return False
    w.signature = sig
    try:
        secret = load_secret(w.source, credential_dirs)
    except FileSecretError as exc:
        if str(exc) != w.error:
            w.error = str(exc)
            if w.secret is None:
                log.warning("SDS secret %s not served: %s (Envoy waits for it; re-read when the files change)",
                            safe(w.source.name), safe(exc))
            else:
                log.warning("SDS secret %s: %s; keeping the last good version", safe(w.source.name), safe(exc))
        return False
    w.error = ""
    if w.secret is not None and w.secret == secret:
        return False
    log.info("SDS secret %s %s from %s", safe(w.source.name), "loaded" if w.secret is None else "changed",
             safe(", ".join(map(str, w.source.paths))))
    w.secret = secret
    return True


@dataclass
class FileSecrets:
    """The file secrets Envoy asked for, with their last good content; files are read only under
    ``credential_dirs`` (``None``: anywhere)."""

    credential_dirs: Sequence[Path] | None = DEFAULT_CREDENTIAL_DIRS
    _watched: dict[str, _Watched] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def secrets(self) -> dict[str, secret_pb2.Secret]:
        """Every file secret that can be served now (name -> secret)."""
        return {name: w.secret for name, w in self._watched.items() if w.secret is not None}

    def watched(self) -> dict[str, str]:
        """name -> "" if served, else why not (for status and tests)."""
        return {name: ("" if w.secret is not None else w.error or "not loaded") for name, w in self._watched.items()}

    async def request(self, names: Iterable[str]) -> bool:
        """Start serving the file secrets among ``names`` (read now); True if a secret became available."""
        async with self._lock:
            new: list[_Watched] = []
            for name in names:
                w = self._watched.get(name)
                if w is not None:
                    w.idle_polls = 0
                    continue
                if not is_file_secret(name):
                    continue
                try:
                    w = _Watched(parse_name(name))
                except FileSecretError as exc:
                    log.warning("SDS secret not served: %s", safe(exc))
                    w = _Watched(None, error=str(exc))
                self._watched[name] = w
                new.append(w)
            if not new:
                return False
            dirs = self.credential_dirs
            changed = await asyncio.to_thread(lambda: [_refresh(w, True, dirs) for w in new])
            return any(changed)

    async def poll(self, wanted: set[str] | None = None) -> bool:
        """Re-read the secrets whose files changed; drop those not in ``wanted`` for two polls running.

        True if the set of servable secrets changed."""
        async with self._lock:
            removed = False
            if wanted is not None:
                for name, w in list(self._watched.items()):
                    w.idle_polls = 0 if name in wanted else w.idle_polls + 1
                    if w.idle_polls >= 2:
                        del self._watched[name]
                        removed = removed or w.secret is not None
                        log.info("SDS secret %s no longer requested; stopped watching it", safe(name))
            current, dirs = list(self._watched.values()), self.credential_dirs
            changed = await asyncio.to_thread(lambda: [_refresh(w, False, dirs) for w in current])
            return removed or any(changed)
