"""CA settings as one picklable dataclass, and the functions that build the CA from them.

Picklable because process-pool signing workers rebuild the same authority and authenticators
from it (keys never cross the process boundary; each worker reads them from ``ca_dir``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from istiod_lite.ca.authn import (
    DEFAULT_AUDIENCE,
    DEFAULT_LEEWAY,
    Authenticator,
    Authenticators,
    ClientCertAuthenticator,
    JwtAuthenticator,
    TrustedIssuer,
)
from istiod_lite.ca.authority import CertificateAuthority, SigningOptions
from istiod_lite.ca.jwk import load_verification_keys
from istiod_lite.ca.keystore import CaMaterial, KeyType, load_or_create
from istiod_lite.ca.reviewgate import ReviewGate
from istiod_lite.ca.tokenreview import TokenReviewAuthenticator, TokenReviewConfig
from istiod_lite.ca.tokens import LOCAL_ISSUER, local_issuer

#: The usual ``--service-account-issuer`` of a Kubernetes cluster, for ``--jwks`` files.
KUBERNETES_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class JwksSource:
    """Keys in ``path`` (JWKS or PEM) verify tokens whose ``iss`` is ``issuer``."""

    path: Path
    issuer: str = KUBERNETES_ISSUER


@dataclass(frozen=True)
class CaConfig:
    ca_dir: Path
    trust_domain: str = "cluster.local"
    #: Key type of a *generated* root; an existing or plug-in bundle is used as it is.
    key_type: KeyType = "ec-p256"
    jwks: tuple[JwksSource, ...] = ()
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    leeway: dt.timedelta = DEFAULT_LEEWAY
    #: Issuer name accepted for tokens signed by ``issuer-key.pem``; ``None`` turns local tokens off.
    local_issuer: str | None = LOCAL_ISSUER
    signing: SigningOptions = field(default_factory=SigningOptions)
    #: Ask the Kubernetes API server about bearer tokens the JWT authenticator refused (TokenReview);
    #: ``None`` (the default, and the YAML-directory mode) never contacts a cluster.
    token_review: TokenReviewConfig | None = None
    #: Service accounts (namespace, name) of node proxies allowed to request certificates for the
    #: pods on their node (Istio's ``CA_TRUSTED_NODE_ACCOUNTS``; ``nodeauth.py``); empty: nobody.
    trusted_node_accounts: tuple[tuple[str, str], ...] = ()


def load_material(config: CaConfig) -> CaMaterial:
    return load_or_create(config.ca_dir, config.key_type, config.trust_domain)


def trusted_issuers(config: CaConfig) -> list[TrustedIssuer]:
    """Local issuer plus every ``--jwks`` source; sources naming the same issuer pool their keys."""
    pooled: dict[str, list[TrustedIssuer]] = {}
    if config.local_issuer is not None:
        pooled.setdefault(config.local_issuer, []).append(local_issuer(config.ca_dir, config.local_issuer))
    for source in config.jwks:
        keys = tuple(load_verification_keys(source.path))
        pooled.setdefault(source.issuer, []).append(TrustedIssuer(source.issuer, keys))
    return [TrustedIssuer(iss, tuple(k for t in group for k in t.keys)) for iss, group in pooled.items()]


def build_authenticators(config: CaConfig, material: CaMaterial, *, token_review: bool = True) -> Authenticators:
    """Istio's order: client certificate (renewal) first, then bearer JWTs, then TokenReview.

    TokenReview comes after the offline JWT check so that a token we can verify locally (our own
    issuer, ``--jwks`` keys) never costs an API-server round trip.  ``token_review=False`` builds
    the offline chain only: what the signing thread and worker processes run, TokenReviews going
    through ``reviewgate.ReviewGate`` instead (``build_review_gate``).
    """
    chain: list[Authenticator] = [ClientCertAuthenticator(material.signing_cert, config.trust_domain)]
    issuers = trusted_issuers(config)
    if issuers:
        chain.append(JwtAuthenticator(issuers, config.trust_domain, config.audiences, config.leeway))
    if token_review and config.token_review is not None:
        chain.append(TokenReviewAuthenticator.from_config(config.token_review, config.trust_domain,
                                                          config.audiences))
    return Authenticators(chain)


def build_review_gate(config: CaConfig, record: Callable[[str], None] = lambda outcome: None) -> ReviewGate | None:
    """The TokenReview gate when ``config.token_review`` is set; ``record`` counts its outcomes."""
    if config.token_review is None:
        return None
    return ReviewGate.from_config(config.token_review, config.trust_domain, config.audiences, record)


def build_authority(config: CaConfig, material: CaMaterial) -> CertificateAuthority:
    return CertificateAuthority(material, config.signing)
