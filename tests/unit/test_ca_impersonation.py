"""Node-proxy impersonation end to end: CreateCertificate over TLS with ``ImpersonatedIdentity``.

The real gRPC CA (thread and worker-process signing), the real ``kubernetes`` client sending
TokenReviews to the fake API server (tests/support/fakekube.py), which answers with the pod
extras a real API server reports for a pod-bound token.  The pods come from a ``ConfigSnapshot``
(unit harness) or from the control plane's own config directory (``test_control_plane_...``).
Every refusal must look the same to the client: UNAUTHENTICATED with Istio's fixed message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokenreview import POD_NAME_EXTRA, POD_UID_EXTRA, TokenReviewConfig
from istiod_lite.ca.tokens import create_token
from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.core import Pod
from tests.support.fakekube import FakeKubeApiServer, FakeTokenUser
from tests.unit.test_ca_fixtures import build_csr, key_pem, p256, verify_chain_python
from tests.unit.test_ca_tokenreview import fake_jwt

TD = "cluster.local"
TRUSTED = (("istio-system", "ztunnel"),)
REVIEWS = "spiffe://cluster.local/ns/shop/sa/reviews"
RATINGS = "spiffe://cluster.local/ns/shop/sa/ratings"
DONE = "spiffe://cluster.local/ns/shop/sa/batch"
ZTUNNEL = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
OPAQUE = (grpc.StatusCode.UNAUTHENTICATED, "request impersonation authentication failure")
AUTHN = (grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")


def pod_doc(ns: str, name: str, sa: str, node: str, phase: str = "Running") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
            "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": phase}}


PODS = (
    pod_doc("istio-system", "ztunnel-a", "ztunnel", "node-a"),
    pod_doc("shop", "reviews-1", "reviews", "node-a"),
    pod_doc("shop", "ratings-1", "ratings", "node-b"),
    pod_doc("shop", "batch-1", "batch", "node-a", phase="Succeeded"),
)


def pod_user(ns: str, sa: str, pod: str | None, uid: str | None = None) -> FakeTokenUser:
    """A projected token's TokenReview user, bound to ``pod`` (uid ``uid-<pod>`` unless given)."""
    base = FakeTokenUser.service_account(ns, sa)
    extra: dict[str, list[str]] = {}
    if pod is not None:
        extra = {POD_NAME_EXTRA: [pod], POD_UID_EXTRA: [uid if uid is not None else f"uid-{pod}"]}
    return FakeTokenUser(username=base.username, groups=base.groups, uid=base.uid, extra=extra)


@dataclass
class Harness:
    kube: FakeKubeApiServer
    ca: CaRuntime
    tls_port: int
    mtls_port: int
    #: Name to check the server certificate for (the control plane's has no 127.0.0.1).
    target_name: str | None = None

    @property
    def root(self) -> bytes:
        return (self.ca.config.ca_dir / ROOT_CERT).read_bytes()

    def token(self, ns: str, sa: str, pod: str | None, uid: str | None = None) -> str:
        """A cluster token the fake API server knows, for ``ns/sa`` bound to ``pod``."""
        token = fake_jwt(f"system:serviceaccount:{ns}:{sa}")
        self.kube.add_token(token, pod_user(ns, sa, pod, uid))
        return token

    async def create(self, requested: str | None, *, token: str | None = None, san: str | None = None,
                     cert: tuple[bytes, bytes] | None = None, value: Any = None, key: Any = None) -> list[str]:
        """CreateCertificate as ztunnel sends it: a CSR for ``requested`` (or ``san``) and the
        metadata field; over the mTLS port when a client ``cert`` is given."""
        csr = build_csr(key, uris=(san or requested or REVIEWS,))
        req = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
        if requested is not None:
            req.metadata.fields["ImpersonatedIdentity"].string_value = requested
        if value is not None:
            req.metadata.fields["ImpersonatedIdentity"].number_value = value
        creds = grpc.ssl_channel_credentials(self.root, *(cert or (None, None)))
        port = self.mtls_port if cert else self.tls_port
        options = [("grpc.ssl_target_name_override", self.target_name)] if self.target_name else []
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
            resp = await ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
                req, metadata=[("authorization", f"Bearer {token}")] if token else None)
        return list(resp.cert_chain)

    async def refusal(self, requested: str | None, **kw: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.create(requested, **kw)
        return info.value.code(), info.value.details()


def san_of(leaf_pem: str) -> list[str]:
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


async def _harness(kube: FakeKubeApiServer, tmp_path: Path, processes: int) -> AsyncIterator[Harness]:
    snapshot = ConfigSnapshot.build([parse_object(p) for p in PODS])
    config = CaConfig(ca_dir=tmp_path / "ca", trusted_node_accounts=TRUSTED,
                      token_review=TokenReviewConfig(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig")))
    runtime = CaRuntime.create(config, processes=processes, snapshot=lambda: snapshot)
    await runtime.start()
    server = grpc.aio.server()
    runtime.add_to_server(server)
    tls = server.add_secure_port("127.0.0.1:0", runtime.server_credentials(["127.0.0.1"]))
    mtls = server.add_secure_port("127.0.0.1:0", runtime.server_credentials(["127.0.0.1"], require_client_auth=True))
    await server.start()
    try:
        yield Harness(kube, runtime, tls, mtls)
    finally:
        await server.stop(None)
        await runtime.close()


@pytest.fixture
async def h(kube: FakeKubeApiServer, tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in _harness(kube, tmp_path, 0):
        yield harness


@pytest.mark.parametrize("processes", [0, 1], ids=["thread", "worker-process"])
async def test_node_proxy_gets_the_certificate_of_a_pod_on_its_node(kube: FakeKubeApiServer, tmp_path: Path,
                                                                    processes: int) -> None:
    async for h in _harness(kube, tmp_path, processes):
        chain = await h.create(REVIEWS, token=h.token("istio-system", "ztunnel", "ztunnel-a"))
        assert san_of(chain[0]) == [REVIEWS]
        verify_chain_python(chain)
        assert chain[-1] == h.root.decode()
        # Without the metadata the same caller gets its own identity, as before.
        chain = await h.create(None, token=h.token("istio-system", "ztunnel", "ztunnel-a"), san=ZTUNNEL)
        assert san_of(chain[0]) == [ZTUNNEL]


async def test_untrusted_caller_is_refused(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(RATINGS, token=h.token("shop", "reviews", "reviews-1")) == OPAQUE
    assert "spiffe://cluster.local/ns/shop/sa/reviews is not a trusted node account" in caplog.text


async def test_caller_without_pod_extras_is_refused(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(REVIEWS, token=h.token("istio-system", "ztunnel", None)) == OPAQUE
    assert "the TokenReview names no pod" in caplog.text


async def test_ambiguous_pod_extras_name_no_pod(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Two values for the pod name (no real API server sends that): not guessed, refused."""
    token = fake_jwt("system:serviceaccount:istio-system:ztunnel")
    base = pod_user("istio-system", "ztunnel", "ztunnel-a")
    h.kube.add_token(token, FakeTokenUser(username=base.username, groups=base.groups, extra={
        POD_NAME_EXTRA: ["ztunnel-a", "ztunnel-b"], POD_UID_EXTRA: ["uid-ztunnel-a"]}))
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(REVIEWS, token=token) == OPAQUE
    assert "the TokenReview names no pod" in caplog.text


@pytest.mark.parametrize(("pod", "uid", "reason"), [
    ("ztunnel-a", "uid-of-an-older-ztunnel-a", "has uid 'uid-ztunnel-a', the token names 'uid-of-an-older-ztunnel-a'"),
    ("ztunnel-gone", None, "caller pod istio-system/ztunnel-gone not found"),
])
async def test_caller_pod_unknown_or_mismatched_is_refused(h: Harness, caplog: pytest.LogCaptureFixture, pod: str,
                                                           uid: str | None, reason: str) -> None:
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(REVIEWS, token=h.token("istio-system", "ztunnel", pod, uid)) == OPAQUE
    assert reason in caplog.text


async def test_identity_on_another_node_is_refused(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(RATINGS, token=h.token("istio-system", "ztunnel", "ztunnel-a")) == OPAQUE
    assert "on node 'node-a' asked for spiffe://cluster.local/ns/shop/sa/ratings: no running pod" in caplog.text


async def test_identity_whose_pod_is_not_running_is_refused(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(DONE, token=h.token("istio-system", "ztunnel", "ztunnel-a")) == OPAQUE
    assert "no running pod of shop/batch on that node" in caplog.text


@pytest.mark.parametrize(("requested", "reason"), [
    ("shop/reviews", "is not a workload SPIFFE ID"),
    ("spiffe://cluster.local/ns/shop/reviews", "is not a workload SPIFFE ID"),
    ("spiffe://evil.example/ns/shop/sa/reviews", "is not in trust domain 'cluster.local'"),
])
async def test_malformed_identity_is_refused(h: Harness, caplog: pytest.LogCaptureFixture, requested: str,
                                             reason: str) -> None:
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(requested, token=h.token("istio-system", "ztunnel", "ztunnel-a"), san=REVIEWS) == OPAQUE
    assert reason in caplog.text


async def test_non_string_identity_is_refused_not_ignored(h: Harness) -> None:
    """A number where the identity belongs: not read as "no impersonation" (the caller's own cert)."""
    assert await h.refusal(None, token=h.token("istio-system", "ztunnel", "ztunnel-a"), value=7,
                           san=ZTUNNEL) == OPAQUE


async def test_log_line_escapes_the_requested_identity(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    forged = "spiffe://cluster.local/ns/shop/sa/reviews\nCreateCertificate from x: issued"
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(forged, token=h.token("istio-system", "ztunnel", "ztunnel-a"), san=REVIEWS) == OPAQUE
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "\n" not in line and "\\\\n" in line


async def test_bad_token_is_an_authentication_failure(h: Harness) -> None:
    unknown = fake_jwt("system:serviceaccount:istio-system:ztunnel")  # the API server does not know it
    assert await h.refusal(REVIEWS, token=unknown) == AUTHN


async def test_client_certificate_caller_cannot_impersonate(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """A mesh certificate of the trusted account names no pod: refused (in Istio, no KubernetesInfo)."""
    local = create_token(h.ca.config.ca_dir, "istio-system", "ztunnel")  # verified offline
    key = p256()
    own = await h.create(None, token=local, san=ZTUNNEL, key=key)
    with caplog.at_level(logging.WARNING, "istiod_lite.ca.service"):
        assert await h.refusal(REVIEWS, cert=(key_pem(key), own[0].encode())) == OPAQUE
    assert "a client certificate names no pod" in caplog.text
    # A token verified offline names no pod either; for impersonation it must pass a TokenReview,
    # and the API server does not know our local issuer.
    assert await h.refusal(REVIEWS, token=local) == AUTHN


async def test_control_plane_checks_its_own_pods(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """Wired in the control plane: the pods are its live config (here a YAML directory)."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "pods.yaml").write_text(yaml.safe_dump_all(PODS))
    ca = CaConfig(ca_dir=tmp_path / "ca", trusted_node_accounts=TRUSTED,
                  token_review=TokenReviewConfig(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig")))
    cp = ControlPlane(ControlPlaneOptions(config_dir=cfg, grpc_addr="", monitoring_addr="127.0.0.1:0",
                                          poll_interval=0.05, debounce=DebounceOptions(quiet=0.05, max_delay=1.0),
                                          ca=ca, secure_grpc_addr="127.0.0.1:0"))
    await cp.start()
    try:
        assert cp.ca is not None
        h = Harness(kube, cp.ca, cp.secure_port, 0, target_name="istiod.istio-system.svc")
        chain = await h.create(REVIEWS, token=h.token("istio-system", "ztunnel", "ztunnel-a"))
        assert san_of(chain[0]) == [REVIEWS]
        assert await h.refusal(RATINGS, token=h.token("istio-system", "ztunnel", "ztunnel-a")) == OPAQUE
        # ratings is rescheduled onto node-a, reviews leaves it: the CA follows the config.
        moved = [PODS[0], pod_doc("shop", "reviews-1", "reviews", "node-b"), pod_doc("shop", "ratings-1", "ratings",
                                                                                    "node-a")]
        (cfg / "pods.yaml").write_text(yaml.safe_dump_all(moved))
        deadline = time.monotonic() + 10
        while _node_of(cp.config, "reviews-1") != "node-b":
            assert time.monotonic() < deadline, "the control plane never loaded the change"
            await asyncio.sleep(0.05)
        chain = await h.create(RATINGS, token=h.token("istio-system", "ztunnel", "ztunnel-a"))
        assert san_of(chain[0]) == [RATINGS]
        assert await h.refusal(REVIEWS, token=h.token("istio-system", "ztunnel", "ztunnel-a")) == OPAQUE
    finally:
        await cp.stop(grace=0)


def _node_of(snapshot: ConfigSnapshot, name: str) -> str:
    pod = snapshot.get(Pod, "shop", name)
    return pod.spec.node_name if pod is not None else ""
