"""Get a workload certificate from the mesh CA, as Istio's agent does (``IstioCertificateService``).

A fresh P-256 key per request (it never leaves this process except into Envoy's secret file), a
CSR carrying the SPIFFE ID as its only SAN, and ``CreateCertificate`` over TLS with the
service-account token as ``authorization: Bearer``.  The CA takes the identity from the token, not
from the CSR; the returned leaf is still checked against the identity asked for, so a token for
another service account is an error here rather than a surprise at the peer.

The CA's serving certificate names ``istiod.istio-system.svc`` and ``localhost``; a CA reached by
IP is verified against ``istiod.istio-system.svc`` (gRPC's ``ssl_target_name_override``), exactly
the name an in-cluster workload would use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.addresses import is_ip, split_host_port
from istiod_lite.hbone.credentials import CredentialError, Credentials

DEFAULT_CA_SERVER_NAME = "istiod.istio-system.svc"
#: Istio's ``SECRET_TTL`` default.
DEFAULT_CERT_TTL_S = 24 * 3600


class CaRequestError(RuntimeError):
    """The CA refused or could not be reached; the message carries the gRPC status."""


def new_key_and_csr(spiffe_id: str) -> tuple[str, str]:
    """A P-256 key (PKCS#8 PEM) and a CSR for it with the single URI SAN ``spiffe_id`` (empty subject)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class CaClient:
    """Where the CA is and how to trust it; ``request`` may be called repeatedly (renewal)."""

    address: str
    token_file: Path
    roots_pem: str
    server_name: str | None = None
    ttl_s: int = DEFAULT_CERT_TTL_S
    timeout_s: float = 10.0

    def _channel(self) -> grpc.aio.Channel:
        host, _ = split_host_port(self.address)
        name = self.server_name or (DEFAULT_CA_SERVER_NAME if is_ip(host) else None)
        options = [("grpc.ssl_target_name_override", name)] if name else []
        creds = grpc.ssl_channel_credentials(root_certificates=self.roots_pem.encode())
        return grpc.aio.secure_channel(self.address, creds, options=options)

    def _token(self) -> str:
        # Read at each request: projected tokens are rotated on disk by the kubelet.
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise CaRequestError(f"cannot read token file {self.token_file}: {exc}") from exc
        if not token:
            raise CaRequestError(f"token file {self.token_file} is empty")
        return token

    async def request(self, spiffe_id: str) -> Credentials:
        """A new key and a certificate for ``spiffe_id``; raises ``CaRequestError``."""
        key_pem, csr_pem = new_key_and_csr(spiffe_id)
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=self.ttl_s)
        metadata = (("authorization", f"Bearer {self._token()}"),)
        async with self._channel() as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            try:
                response = await stub.CreateCertificate(request, metadata=metadata, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise CaRequestError(f"CA {self.address}: {exc.code().name}: {exc.details()}") from exc
        chain = [str(c) for c in response.cert_chain]
        # Istio's clients refuse a chain without the root as its last element.
        if len(chain) < 2:
            raise CaRequestError(f"CA {self.address} returned a chain of {len(chain)} certificate(s)")
        try:
            leaf_and_intermediates = "".join(p if p.endswith("\n") else p + "\n" for p in chain[:-1])
            x509.load_pem_x509_certificates(leaf_and_intermediates.encode())
        except ValueError as exc:
            raise CredentialError(f"CA {self.address} returned unparsable certificates: {exc}") from exc
        # Trust anchors stay the operator's --root-cert: the CA's word about its own root is not
        # what decides whom we trust.
        return Credentials(chain_pem=leaf_and_intermediates, key_pem=key_pem, roots_pem=self.roots_pem)
