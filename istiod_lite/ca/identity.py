"""Workload identities: Kubernetes (namespace, service account) names and their SPIFFE IDs.

An ``Identity`` is only ever built from an *authenticated* source (a verified token's ``sub`` or a
verified client certificate), never from a CSR.  Construction validates every part, so a SPIFFE
ID produced here always satisfies the SPIFFE ID rules (lower-case trust domain of at most 255
characters; path segments of ``[a-zA-Z0-9._-]``, never empty, ``.`` or ``..``) and the names are
valid Kubernetes names (which also keeps ``:`` and ``/`` out of them, so ``sub`` and SPIFFE
parsing cannot be confused).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Kubernetes namespace names are DNS-1123 labels.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: Kubernetes service-account names are DNS-1123 subdomains.
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")

SPIFFE_PREFIX = "spiffe://"
#: Prefix of a Kubernetes service-account username (token ``sub``, TokenReview ``username``).
SA_SUBJECT_PREFIX = "system:serviceaccount:"


def valid_namespace(name: str) -> bool:
    return len(name) <= 63 and _DNS1123_LABEL.fullmatch(name) is not None


def valid_service_account(name: str) -> bool:
    return len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name) is not None


def valid_trust_domain(name: str) -> bool:
    return 0 < len(name) <= 255 and _TRUST_DOMAIN.fullmatch(name) is not None and name not in (".", "..")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated workload: ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not valid_trust_domain(self.trust_domain):
            raise ValueError(f"invalid trust domain {self.trust_domain!r}")
        if not valid_namespace(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")
        if not valid_service_account(self.service_account):
            raise ValueError(f"invalid service account {self.service_account!r}")

    @property
    def spiffe(self) -> str:
        return f"{SPIFFE_PREFIX}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def subject(self) -> str:
        """The Kubernetes username of this service account (``system:serviceaccount:<ns>:<sa>``)."""
        return f"{SA_SUBJECT_PREFIX}{self.namespace}:{self.service_account}"

    def __str__(self) -> str:
        return self.spiffe

    @classmethod
    def from_spiffe(cls, uri: str) -> Identity:
        """Parse Istio's workload SPIFFE ID form exactly; anything else raises ``ValueError``."""
        if not uri.startswith(SPIFFE_PREFIX) or len(uri) > 2048:
            raise ValueError("not a spiffe:// URI")
        parts = uri[len(SPIFFE_PREFIX):].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise ValueError("not of the form spiffe://<td>/ns/<ns>/sa/<sa>")
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    @classmethod
    def from_subject(cls, subject: str, trust_domain: str) -> Identity:
        """Parse a service-account username: exactly 4 ``:``-separated parts, none empty (as Istio)."""
        parts = subject.split(":")
        if len(parts) != 4 or f"{parts[0]}:{parts[1]}:" != SA_SUBJECT_PREFIX or not parts[2] or not parts[3]:
            raise ValueError("subject is not system:serviceaccount:<namespace>:<name>")
        return cls(trust_domain=trust_domain, namespace=parts[2], service_account=parts[3])
