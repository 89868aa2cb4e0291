"""The local token issuer: Kubernetes-shaped service-account JWTs without a Kubernetes cluster.

Without an API server there is nobody to mint the ``istio-token`` a workload presents to the CA,
so istiod-lite signs its own, with the claims a projected Kubernetes service-account token has
(``iss``, ``sub`` = ``system:serviceaccount:<ns>:<sa>``, ``aud`` list, ``exp``/``iat``/``nbf``,
``jti``, and ``kubernetes.io`` with namespace and service account name/uid).

The issuer is ``istiod-lite`` rather than a Kubernetes issuer URL on purpose: a verifier that
trusts a real cluster's issuer can never mistake our tokens for the cluster's, and our verifier
looks up keys by issuer, so a ``--jwks`` file for a real cluster and the local key never mix.
Tokens are ES256, signed by ``issuer-key.pem`` in the CA directory; ``kid`` is the key's RFC 7638
thumbprint.  There is no service-account object, so the ``uid`` is a stable UUIDv5 of
``<namespace>/<name>``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from istiod_lite.ca import jws
from istiod_lite.ca.authn import DEFAULT_AUDIENCE, TrustedIssuer
from istiod_lite.ca.identity import valid_namespace, valid_service_account
from istiod_lite.ca.jwk import VerificationKey, public_jwk
from istiod_lite.ca.keystore import load_or_create_issuer_key

LOCAL_ISSUER = "istiod-lite"
#: Kubernetes' default for projected tokens without ``expirationSeconds``.
DEFAULT_TOKEN_DURATION = dt.timedelta(hours=1)
_UID_NAMESPACE = uuid.UUID("5b0a3e0c-8f4b-4a59-9d3b-6c1f7f2f8e11")


def service_account_uid(namespace: str, service_account: str) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, f"{namespace}/{service_account}"))


def create_token(ca_dir: Path, namespace: str, sa: str, duration: dt.timedelta = DEFAULT_TOKEN_DURATION,
                 audience: str | Sequence[str] = DEFAULT_AUDIENCE, *, issuer: str = LOCAL_ISSUER,
                 now: float | None = None) -> str:
    """A signed service-account token for ``namespace``/``sa``, valid for ``duration``.

    Creates the issuer key in ``ca_dir`` on first use (so tokens can be made before the server
    first starts).  Raises ``ValueError`` for invalid names, an empty audience or a non-positive
    duration.
    """
    if not valid_namespace(namespace):
        raise ValueError(f"invalid namespace {namespace!r} (a DNS-1123 label)")
    if not valid_service_account(sa):
        raise ValueError(f"invalid service account {sa!r} (a DNS-1123 subdomain)")
    audiences = [audience] if isinstance(audience, str) else list(audience)
    if not audiences or not all(audiences):
        raise ValueError("at least one non-empty audience is required")
    if duration <= dt.timedelta(0):
        raise ValueError("token duration must be positive")
    key = load_or_create_issuer_key(ca_dir)
    issued = int(now if now is not None else time.time())
    claims = {
        "aud": audiences,
        "exp": issued + int(duration.total_seconds()),
        "iat": issued,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": sa, "uid": service_account_uid(namespace, sa)},
        },
        "nbf": issued,
        "sub": f"system:serviceaccount:{namespace}:{sa}",
    }
    return jws.sign_es256(claims, key, public_jwk(key.public_key())["kid"])


def local_issuer(ca_dir: Path, issuer: str = LOCAL_ISSUER) -> TrustedIssuer:
    """The ``TrustedIssuer`` for tokens made by ``create_token`` with the key in ``ca_dir``."""
    key = load_or_create_issuer_key(ca_dir)
    jwk = public_jwk(key.public_key())
    return TrustedIssuer(issuer=issuer, keys=(VerificationKey(key=key.public_key(), kid=jwk["kid"], alg="ES256"),))

