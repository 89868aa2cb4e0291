"""The waypoint's workload certificate: a fresh key, a CSR, and ``CreateCertificate`` at the CA.

What Istio's agent does (``security/pkg/nodeagent/cache/secretcache.go``,
``security/pkg/nodeagent/caclient/providers/citadel/client.go``), and so what this does:

* a new private key for every certificate (P-256 by default, RSA-2048 on request), never reused
  across rotations, never written to disk: it lives in the SDS cache and in Envoy's memory;
* a CSR carrying the URI SAN ``spiffe://<td>/ns/<ns>/sa/<sa>``: the CA takes the identity from the
  caller's token and only checks that the CSR agrees (istiod-lite's CA refuses a mismatch);
* ``CreateCertificate`` over TLS, trusting only ``--root-cert``, with ``authorization: Bearer
  <token>`` read from the token file *on every call* (Kubernetes rewrites projected tokens before
  they expire) and ``clusterid``; the request metadata always has ``CertSigner`` (empty), as Istio.

The response is checked before it is served: at least two PEMs (leaf first, root last; Istio's
client rejects shorter chains), the leaf certifies *our* public key, names the identity we asked
for, and is not already expired.  Key generation and CSR signing (RSA-2048 takes tens of
milliseconds) run in a worker thread so the SDS streams on the loop never wait for them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.protobuf import struct_pb2

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.addresses import is_ip, split_host_port
from istiod_lite.agent.bootstrap import DEFAULT_CLUSTER_ID, ISTIOD_SAN

log = logging.getLogger(__name__)

KeyAlgorithm = Literal["ec-p256", "rsa-2048"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CERT_SIGNER = "CertSigner"


class CertificateError(Exception):
    """Getting a certificate failed; the rotation loop retries with backoff.

    ``code`` is the gRPC status of a refused call (``None`` for local failures such as an
    unreadable token file or a response that does not check out).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


# -- key and CSR (pure, CPU-bound: call through ``asyncio.to_thread``) -------------------------
def generate_key(algorithm: KeyAlgorithm = "ec-p256") -> PrivateKey:
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key algorithm {algorithm!r} (ec-p256 or rsa-2048)")


def build_csr(key: PrivateKey, identity: str) -> str:
    """A PEM CSR with an empty subject and exactly one URI SAN, ``identity``.

    The SAN is critical because the subject is empty (RFC 5280 4.2.1.6), as in the issued leaf.
    """
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_key_and_csr(algorithm: KeyAlgorithm, identity: str) -> tuple[PrivateKey, str]:
    key = generate_key(algorithm)
    return key, build_csr(key, identity)


# -- what the CA gave us ----------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedCertificate:
    """One key and the chain the CA issued for it; immutable, replaced whole on rotation."""

    key_pem: bytes
    #: As returned by the CA: leaf first, then intermediates, root last (each a PEM string).
    chain_pem: tuple[str, ...]
    leaf: x509.Certificate
    #: When we received it: Istio measures the lifetime for rotation from here, not from the
    #: (backdated) NotBefore.
    received_at: dt.datetime

    @property
    def serial(self) -> int:
        return int(self.leaf.serial_number)

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.received_at

    @property
    def certificate_chain_pem(self) -> bytes:
        """The TLS chain Envoy serves: every PEM of the response, root included (as Istio's agent)."""
        return "".join(p if p.endswith("\n") else p + "\n" for p in self.chain_pem).encode("ascii")

    @property
    def root_pem(self) -> bytes:
        """The trust anchor for ``ROOTCA``: the last element of the CA's response (as Istio)."""
        root = self.chain_pem[-1]
        return (root if root.endswith("\n") else root + "\n").encode("ascii")

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.not_after


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def check_response(chain: list[str], key: PrivateKey, identity: str, now: dt.datetime) -> IssuedCertificate:
    """Turn a ``CreateCertificate`` answer into an ``IssuedCertificate`` or raise ``CertificateError``."""
    if len(chain) <= 1:
        raise CertificateError(f"CA returned a chain of {len(chain)} certificate(s); expected leaf ... root")
    try:
        leaf = x509.load_pem_x509_certificate(chain[0].encode("ascii"))
        for pem in chain[1:]:
            x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateError(f"CA returned an unparsable certificate: {exc}") from exc
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != theirs:
        raise CertificateError("CA returned a certificate for a different public key")
    uris = _uri_sans(leaf)
    if uris != [identity]:
        raise CertificateError(f"CA issued {uris} but this waypoint is {identity!r} "
                               "(is the token for another service account?)")
    if now >= leaf.not_valid_after_utc:
        raise CertificateError(f"CA returned a certificate that expired at {leaf.not_valid_after_utc.isoformat()}")
    return IssuedCertificate(key_pem=key_pem(key), chain_pem=tuple(chain), leaf=leaf, received_at=now)


# -- credentials towards istiod (shared by the CA client and the xDS proxy) -------------------
class TokenError(Exception):
    """The token file cannot be used: missing, unreadable or empty."""


def read_token(path: Path) -> str:
    """The bearer token in ``path``.  Blocking: call it through ``asyncio.to_thread``.

    Callers read it again for every request or stream, never caching it, because Kubernetes
    rewrites projected tokens before they expire.
    """
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read token file {path}: {exc}") from exc
    token = text.strip()
    if not token:
        raise TokenError(f"token file {path} is empty")
    return token


def tls_server_name(address: str, override: str | None = None) -> str:
    """The name to verify on a server's certificate (and to send as SNI): ``override``, else the
    address's host if it is a DNS name, else istiod's DNS SAN (the CA's serving certificate names
    ``istiod.istio-system.svc`` and ``localhost``, not the IPs it may be reached on)."""
    if override:
        return override
    host, _ = split_host_port(address)
    return ISTIOD_SAN if is_ip(host) else host


# -- the CA client ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CaClientConfig:
    address: str
    root_cert: bytes
    token_file: Path
    #: TLS name to verify instead of the address's host (``None``: see ``tls_server_name``).
    server_name: str | None = None
    cluster_id: str = DEFAULT_CLUSTER_ID
    #: Per-call deadline: a CA that hangs must not stall rotation forever.
    timeout: float = 10.0


class CaClient:
    """``IstioCertificateService/CreateCertificate`` over one long-lived TLS channel.

    The channel reconnects by itself (gRPC), so one client serves every rotation.
    """

    def __init__(self, config: CaClientConfig) -> None:
        self.config = config
        credentials = grpc.ssl_channel_credentials(root_certificates=config.root_cert)
        options = [("grpc.ssl_target_name_override", tls_server_name(config.address, config.server_name))]
        self._channel = grpc.aio.secure_channel(config.address, credentials, options)
        self._stub = ca_pb2_grpc.IstioCertificateServiceStub(self._channel)

    async def _token(self) -> str:
        try:
            return await asyncio.to_thread(read_token, self.config.token_file)
        except TokenError as exc:
            raise CertificateError(str(exc)) from exc

    async def create_certificate(self, csr_pem: str, ttl_seconds: int) -> list[str]:
        """The PEM chain for ``csr_pem``; raises ``CertificateError`` on any failure."""
        token = await self._token()
        metadata = struct_pb2.Struct()
        metadata.fields[CERT_SIGNER].string_value = ""
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_seconds, metadata=metadata)
        call_metadata = (("authorization", f"Bearer {token}"), ("clusterid", self.config.cluster_id))
        try:
            response = await self._stub.CreateCertificate(request, metadata=call_metadata,
                                                          timeout=self.config.timeout)
        except grpc.aio.AioRpcError as exc:
            raise CertificateError(f"CreateCertificate at {self.config.address} failed: "
                                   f"{exc.code().name}: {exc.details()}", exc.code()) from exc
        return list(response.cert_chain)

    async def close(self) -> None:
        await self._channel.close()


@dataclass(frozen=True)
class CertificateRequest:
    """What to ask for: whose certificate, which key, how long (seconds; 0 = the CA's default)."""

    identity: str
    key_algorithm: KeyAlgorithm = "ec-p256"
    ttl_seconds: int = 0


async def fetch_certificate(client: CaClient, request: CertificateRequest) -> IssuedCertificate:
    """One complete issuance: new key and CSR (in a thread), CreateCertificate, response checks."""
    key, csr = await asyncio.to_thread(new_key_and_csr, request.key_algorithm, request.identity)
    chain = await client.create_certificate(csr, request.ttl_seconds)
    issued = check_response(chain, key, request.identity, utcnow())
    log.info("certificate for %s issued: serial %x, expires %s", request.identity, issued.serial,
             issued.not_after.isoformat())
    return issued
