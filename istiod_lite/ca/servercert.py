"""istiod's own TLS certificate for the secure gRPC port, issued by the mesh CA and kept fresh.

Istio serves 15012 with a DNS certificate (``istiod.istio-system.svc``) signed by the mesh CA and
asks for, but does not require, a client certificate verified against the mesh roots
(``VerifyClientCertIfGiven``): workloads holding a certificate may renew with it, new workloads use
a bearer token.

gRPC Python cannot do "verify if given": ``ssl_server_credentials`` and
``dynamic_ssl_server_credentials`` map ``require_client_auth=False`` to
``GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE`` (grpc ``_cython/_cygrpc/credentials.pyx.pxi``), so on
such a port the client certificate never reaches us and only tokens authenticate.  Renewal with a
certificate therefore needs a port built with ``require_client_auth=True`` (mTLS only); see
docs/ca.md.

gRPC's dynamic credentials ask us for the certificate at each handshake, so the certificate is
re-issued once half its lifetime has passed, without restarting the server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Callable, Sequence

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.ca.authority import CertificateAuthority, utcnow

DEFAULT_SERVER_SANS = ("istiod.istio-system.svc", "localhost")
SERVER_CERT_TTL = dt.timedelta(hours=24)


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def server_sans(extra: Sequence[str] = ()) -> list[str]:
    """Istio's default istiod names plus ``extra`` (deduplicated, order kept)."""
    return list(dict.fromkeys([*DEFAULT_SERVER_SANS, *extra]))


class ServerCertificate:
    """Issues and re-issues istiod's serving certificate; the gRPC fetcher calls ``refresh``."""

    def __init__(self, ca: CertificateAuthority, sans: Sequence[str], ttl: dt.timedelta = SERVER_CERT_TTL,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._ca = ca
        self._names = [_general_name(s) for s in server_sans(sans)]
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self.key_pem, self.chain_pem, self.renew_at = self._issue()

    def _issue(self) -> tuple[bytes, bytes, dt.datetime]:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self._ca.issue(key.public_key(), self._names, self._ttl)
        chain = leaf + "".join(self._ca.material.chain_tail_pem[:-1])
        not_after = x509.load_pem_x509_certificate(leaf.encode()).not_valid_after_utc
        renew_at = self._clock() + (not_after - self._clock()) / 2
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, chain.encode(), renew_at

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.chain_pem)], root_certificates=self._ca.material.root_pem.encode())

    def refresh(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when due, else ``None`` (keep)."""
        if self._clock() < self.renew_at:
            return None
        with self._lock:
            if self._clock() < self.renew_at:
                return None
            self.key_pem, self.chain_pem, self.renew_at = self._issue()
            return self.configuration()


def server_credentials(ca: CertificateAuthority, sans: Sequence[str] = (), *,
                       require_client_auth: bool = False) -> grpc.ServerCredentials:
    """TLS credentials for a secure gRPC port, with a CA-issued certificate for
    ``istiod.istio-system.svc``, ``localhost`` and ``sans`` (IP literals become IP SANs).

    ``require_client_auth=False`` (the 15012 default): no client certificate is asked for, callers
    authenticate with a bearer token.  ``True``: every client must present a certificate that
    chains to the mesh roots (renewal/mTLS-only port).
    """
    cert = ServerCertificate(ca, sans)
    return grpc.dynamic_ssl_server_credentials(cert.configuration(), cert.refresh,
                                               require_client_authentication=require_client_auth)
