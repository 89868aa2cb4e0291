"""Node-proxy impersonation rules (``ca/nodeauth.py``): who may ask for whose certificate.

The decision alone, against a ``ConfigSnapshot`` of real Pod objects; the gRPC path (TokenReview
extras from the fake API server, the signed SAN) is in ``test_ca_impersonation.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from istiod_lite.ca.errors import IMPERSONATION_MESSAGE, ImpersonationRefused
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.nodeauth import NodeAuthorizer, parse_trusted_node_accounts
from istiod_lite.ca.tokenreview import ReviewedCaller
from istiod_lite.cli.main import build_parser, main
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource

TD = "cluster.local"
ZTUNNEL = Identity(TD, "istio-system", "ztunnel")
TRUSTED = (("istio-system", "ztunnel"),)


def pod(ns: str, name: str, sa: str, node: str, *, uid: str = "", phase: str = "Running") -> Resource:
    spec: dict[str, Any] = {"serviceAccountName": sa, "containers": [{"name": "c"}]}
    if node:
        spec["nodeName"] = node
    return parse_object({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}"},
                         "spec": spec, "status": {"phase": phase}})


BASE = (
    pod("istio-system", "ztunnel-a", "ztunnel", "node-a"),
    pod("istio-system", "ztunnel-b", "ztunnel", "node-b"),
    pod("shop", "reviews-1", "reviews", "node-a"),
    pod("shop", "ratings-1", "ratings", "node-b"),
)


class View:
    """The control plane's current snapshot, replaceable like ``ControlPlane.config``."""

    def __init__(self, *pods: Resource) -> None:
        self.snapshot = ConfigSnapshot.build(pods or BASE)

    def __call__(self) -> ConfigSnapshot:
        return self.snapshot


def caller(pod_name: str = "ztunnel-a", pod_uid: str = "uid-ztunnel-a", identity: Identity = ZTUNNEL
           ) -> ReviewedCaller:
    return ReviewedCaller(identity, pod_name, pod_uid)


def refused(authorizer: NodeAuthorizer, who: ReviewedCaller, requested: str) -> str:
    with pytest.raises(ImpersonationRefused) as info:
        authorizer.authorize(who, requested)
    assert info.value.public_message == IMPERSONATION_MESSAGE  # the same opaque answer every time
    return info.value.reason


@pytest.fixture
def view() -> View:
    return View()


@pytest.fixture
def authorizer(view: View) -> NodeAuthorizer:
    return NodeAuthorizer(TRUSTED, TD, view)


def test_node_proxy_may_impersonate_a_pod_on_its_node(authorizer: NodeAuthorizer) -> None:
    assert authorizer.authorize(caller(), "spiffe://cluster.local/ns/shop/sa/reviews") == \
        Identity(TD, "shop", "reviews")
    assert authorizer.authorize(caller("ztunnel-b", "uid-ztunnel-b"), "spiffe://cluster.local/ns/shop/sa/ratings") \
        == Identity(TD, "shop", "ratings")


def test_untrusted_caller_is_refused(view: View) -> None:
    reviews = ReviewedCaller(Identity(TD, "shop", "reviews"), "reviews-1", "uid-reviews-1")
    authorizer = NodeAuthorizer(TRUSTED, TD, view)
    assert "not a trusted node account" in refused(authorizer, reviews, "spiffe://cluster.local/ns/shop/sa/reviews")
    # The same account name in another namespace is another account.
    impostor = caller(identity=Identity(TD, "shop", "ztunnel"))
    assert "not a trusted node account" in refused(authorizer, impostor, "spiffe://cluster.local/ns/shop/sa/reviews")
    # Nobody is trusted without configuration.
    assert "not a trusted node account" in refused(NodeAuthorizer((), TD, view), caller(),
                                                   "spiffe://cluster.local/ns/shop/sa/reviews")


def test_caller_without_pod_extras_is_refused(authorizer: NodeAuthorizer) -> None:
    for who in (caller("", ""), caller("ztunnel-a", ""), caller("", "uid-ztunnel-a")):
        assert "names no pod" in refused(authorizer, who, "spiffe://cluster.local/ns/shop/sa/reviews")


def test_caller_pod_unknown_or_mismatched_is_refused(view: View) -> None:
    authorizer = NodeAuthorizer(TRUSTED, TD, view)
    target = "spiffe://cluster.local/ns/shop/sa/reviews"
    assert "not found" in refused(authorizer, caller("ztunnel-gone", "uid-ztunnel-gone"), target)
    assert "uid" in refused(authorizer, caller("ztunnel-a", "uid-of-a-previous-ztunnel-a"), target)
    # A pod of that name in another namespace is not the caller's.
    view.snapshot = ConfigSnapshot.build([*BASE, pod("shop", "ztunnel-c", "ztunnel", "node-a")])
    assert "not found" in refused(authorizer, caller("ztunnel-c", "uid-ztunnel-c"), target)
    # The pod runs as another service account than the token's (cannot happen in a real cluster).
    view.snapshot = ConfigSnapshot.build([*BASE[1:], pod("istio-system", "ztunnel-a", "other", "node-a")])
    assert "runs as 'other'" in refused(authorizer, caller(), target)
    # Not scheduled yet: no node to compare.
    view.snapshot = ConfigSnapshot.build([*BASE[1:], pod("istio-system", "ztunnel-a", "ztunnel", "")])
    assert "not scheduled" in refused(authorizer, caller(), target)


def test_identity_without_a_pod_on_the_callers_node_is_refused(authorizer: NodeAuthorizer) -> None:
    # ratings runs on node-b only; ztunnel-a is on node-a.
    reason = refused(authorizer, caller(), "spiffe://cluster.local/ns/shop/sa/ratings")
    assert "no running pod of shop/ratings" in reason and "node-a" in reason
    # No pod of that account anywhere.
    assert "no running pod" in refused(authorizer, caller(), "spiffe://cluster.local/ns/shop/sa/nobody")
    # Same account name, other namespace.
    assert "no running pod" in refused(authorizer, caller(), "spiffe://cluster.local/ns/other/sa/reviews")


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_identity_whose_pod_has_terminated_is_refused(view: View, phase: str) -> None:
    view.snapshot = ConfigSnapshot.build([*BASE[:2], pod("shop", "reviews-1", "reviews", "node-a", phase=phase)])
    authorizer = NodeAuthorizer(TRUSTED, TD, view)
    assert "no running pod" in refused(authorizer, caller(), "spiffe://cluster.local/ns/shop/sa/reviews")


def test_pending_pod_on_the_node_counts(view: View) -> None:
    """istio-cni adds a pod to the mesh (and ztunnel asks for its certificate) before it runs."""
    view.snapshot = ConfigSnapshot.build([*BASE[:2], pod("shop", "reviews-1", "reviews", "node-a", phase="Pending")])
    authorizer = NodeAuthorizer(TRUSTED, TD, view)
    assert authorizer.authorize(caller(), "spiffe://cluster.local/ns/shop/sa/reviews").service_account == "reviews"


@pytest.mark.parametrize("requested", [
    "reviews",
    "shop/reviews",
    "https://cluster.local/ns/shop/sa/reviews",
    "spiffe://cluster.local/ns/shop/sa/reviews/extra",
    "spiffe://cluster.local/ns/shop/reviews",
    "spiffe://cluster.local/ns/Shop/sa/reviews",
    "spiffe://cluster.local/ns/shop/sa/",
    "spiffe://cluster.local/ns/../sa/reviews",
    "spiffe://cluster.local/ns/shop/sa/reviews\n",
])
def test_malformed_identity_is_refused(authorizer: NodeAuthorizer, requested: str) -> None:
    assert "not a workload SPIFFE ID" in refused(authorizer, caller(), requested)


def test_identity_in_another_trust_domain_is_refused(authorizer: NodeAuthorizer) -> None:
    assert "not in trust domain" in refused(authorizer, caller(), "spiffe://other.example/ns/shop/sa/reviews")


def test_follows_the_current_snapshot(view: View, authorizer: NodeAuthorizer) -> None:
    target = "spiffe://cluster.local/ns/shop/sa/reviews"
    authorizer.authorize(caller(), target)
    # reviews moves to node-b: ztunnel-a may no longer ask for it, ztunnel-b may.
    view.snapshot = ConfigSnapshot.build([*BASE[:2], pod("shop", "reviews-2", "reviews", "node-b")])
    assert "no running pod" in refused(authorizer, caller(), target)
    authorizer.authorize(caller("ztunnel-b", "uid-ztunnel-b"), target)
    # The pods gone altogether.
    view.snapshot = ConfigSnapshot.build([])
    assert "not found" in refused(authorizer, caller(), target)


def test_parse_trusted_node_accounts() -> None:
    assert parse_trusted_node_accounts("") == ()
    assert parse_trusted_node_accounts("istio-system/ztunnel, kube-system/ztunnel,,istio-system/ztunnel") == (
        ("istio-system", "ztunnel"), ("kube-system", "ztunnel"))
    for bad in ("ztunnel", "istio-system/", "/ztunnel", "istio-system/zt/x", "Istio-System/ztunnel", "a/b c"):
        with pytest.raises(ValueError, match="not <namespace>/<service account>"):
            parse_trusted_node_accounts(f"istio-system/ztunnel,{bad}")


def test_cli_flag_reads_istios_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_TRUSTED_NODE_ACCOUNTS", "istio-system/ztunnel")
    args = build_parser().parse_args(["serve", "--config", "cfg"])
    assert args.ca_trusted_node_accounts == "istio-system/ztunnel"
    args = build_parser().parse_args(["serve", "--config", "cfg", "--ca-trusted-node-accounts", "kube-system/zt"])
    assert args.ca_trusted_node_accounts == "kube-system/zt"


def test_cli_refuses_a_malformed_list(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--ca-trusted-node-accounts: .*'ztunnel' is not <namespace>/<service"):
        main(["serve", "--config", str(tmp_path), "--ca-dir", str(tmp_path / "ca"),
              "--ca-trusted-node-accounts", "ztunnel"])
