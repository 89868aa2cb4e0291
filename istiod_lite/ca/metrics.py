"""CA metrics, with Istio's ``citadel_server_*`` names where Istio has one.

prometheus_client exposes counters with a ``_total`` suffix (``citadel_server_csr_count_total``),
the same convention the xDS metrics in this project follow.  One ``CaMetrics`` per service, on
its own registry unless one is passed, so tests and benchmarks can run several servers.
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("ok", "unauthenticated", "invalid_argument", "permission_denied", "internal")
REVIEW_OUTCOMES = ("accepted", "refused", "cached", "refused_cached", "shed_queue_full", "shed_peer_limit")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.csr_count = Counter("citadel_server_csr_count", "The number of CSRs received by Citadel server.",
                                 registry=r)
        self.auth_failures = Counter("citadel_server_authentication_failure_count",
                                     "The number of authentication failures.", registry=r)
        self.csr_parsing_errors = Counter("citadel_server_csr_parsing_err_count",
                                          "The number of errors occurred when parsing the CSR.", registry=r)
        self.sign_errors = Counter("citadel_server_csr_sign_err_count",
                                   "The number of errors occurred when signing the CSR.", registry=r)
        self.issued = Counter("citadel_server_success_cert_issuance_count",
                              "The number of certificates issuance that have succeeded.", registry=r)
        self.root_expiry = Gauge("citadel_server_root_cert_expiry_timestamp",
                                 "The unix timestamp, in seconds, when Citadel root cert will expire.", registry=r)
        self.chain_expiry = Gauge("citadel_server_cert_chain_expiry_timestamp",
                                  "The unix timestamp, in seconds, when Citadel cert chain will expire.", registry=r)
        self.requests = Counter("istiod_lite_ca_requests", "CreateCertificate calls by outcome (ok or the gRPC "
                                "status code returned, lower case).", ["outcome"], registry=r)
        self.duration = Histogram("istiod_lite_ca_request_duration_seconds", "CreateCertificate handling time, "
                                  "authentication and signing included.", buckets=_LATENCY_BUCKETS, registry=r)
        self.token_reviews = Counter(
            "istiod_lite_ca_token_reviews", "Bearer tokens that reached the TokenReview gate, by outcome: accepted or "
            "refused by the API server, answered from the cache (cached, refused_cached), or refused unsent because "
            "every slot or the peer's share was taken (shed_queue_full, shed_peer_limit).", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        for outcome in REVIEW_OUTCOMES:
            self.token_reviews.labels(outcome=outcome)

    def token_review(self, outcome: str) -> None:
        self.token_reviews.labels(outcome=outcome).inc()

    def failed(self, code: grpc.StatusCode) -> None:
        self.requests.labels(outcome=code.name.lower()).inc()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self.auth_failures.inc()
        elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
            self.csr_parsing_errors.inc()
        else:
            self.sign_errors.inc()

    def succeeded(self) -> None:
        self.requests.labels(outcome="ok").inc()
        self.issued.inc()
