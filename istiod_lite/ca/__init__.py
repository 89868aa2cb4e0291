"""istiod-lite's certificate authority: Istio's ``IstioCertificateService`` (Citadel) in Python.

Public API (everything else in this package is an implementation detail):

* ``CaConfig``, ``JwksSource`` -- settings; ``CaRuntime.create(config)`` -- the wired service;
* ``load_or_create`` / ``CaMaterial`` -- key material in a directory (Istio plug-in CA layout);
* ``CertificateAuthority.sign_csr`` -- CSR + authenticated SPIFFE ID -> chain;
* ``Authenticator``, ``Authenticators``, ``JwtAuthenticator``, ``ClientCertAuthenticator``,
  ``Identity`` -- caller authentication;
* ``create_token`` -- Kubernetes-shaped service-account tokens from the local issuer;
* ``server_credentials`` -- TLS for the secure gRPC port, certificate issued by this CA;
* ``CaError`` -- a refusal: a gRPC status for the client, a private reason for the log.

See docs/ca.md for the rules and the choices made.
"""

from istiod_lite.ca.authn import (
    AuthenticationError,
    Authenticator,
    Authenticators,
    ClientCertAuthenticator,
    JwtAuthenticator,
    TrustedIssuer,
)
from istiod_lite.ca.authority import CertificateAuthority, SigningOptions
from istiod_lite.ca.config import KUBERNETES_ISSUER, CaConfig, JwksSource
from istiod_lite.ca.errors import CaError, CaMaterialError
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.keystore import CaMaterial, load_or_create
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.servercert import server_credentials
from istiod_lite.ca.service import CaService
from istiod_lite.ca.tokens import LOCAL_ISSUER, create_token

__all__ = [
    "KUBERNETES_ISSUER",
    "LOCAL_ISSUER",
    "AuthenticationError",
    "Authenticator",
    "Authenticators",
    "CaConfig",
    "CaError",
    "CaMaterial",
    "CaMaterialError",
    "CaRuntime",
    "CaService",
    "CertificateAuthority",
    "ClientCertAuthenticator",
    "Identity",
    "JwksSource",
    "JwtAuthenticator",
    "SigningOptions",
    "TrustedIssuer",
    "create_token",
    "load_or_create",
    "server_credentials",
]
