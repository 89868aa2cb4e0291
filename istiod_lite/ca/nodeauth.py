"""Node proxies (ztunnel) asking for the certificates of the pods on their node.

ztunnel holds the keys of every ambient pod on its node, so it asks the CA for each pod's
certificate itself: it authenticates with its *own* service-account token and names the pod's
identity in the request metadata (``ImpersonatedIdentity``, a SPIFFE URI).  istiod allows that only
under a small subset of Kubernetes node authorization (``security/pkg/server/ca/node_auth.go``),
and so do we; every condition must hold:

1. the caller's service account is one of the trusted node accounts (``CA_TRUSTED_NODE_ACCOUNTS``,
   ``ns/sa,ns/sa``; Istio's chart sets the ztunnel account there);
2. the requested identity is a workload SPIFFE ID (``spiffe://<td>/ns/<ns>/sa/<sa>``) in our trust
   domain;
3. the caller was authenticated by a Kubernetes TokenReview whose answer names its pod
   (``authentication.kubernetes.io/pod-name`` and ``pod-uid`` extras: a token bound to a pod), and
   that pod exists in the control plane's view with the same UID and service account, scheduled on
   a node;
4. a pod of the requested service account runs on that same node.

Anything else is refused with ``ImpersonationRefused`` (Istio's fixed answer); the reason, naming
the check, goes to the CA's log.  A client certificate or a token verified offline carries no
pod, so such callers can never impersonate (in Istio only the Kubernetes authenticator fills the
caller's pod either).

"Runs" (4): scheduled on the node (``spec.nodeName``) and not terminated (phase neither
``Succeeded`` nor ``Failed``).  A ``Pending`` pod counts: ztunnel asks for a pod's certificate when
istio-cni adds the pod to the mesh, before its containers start.  Istio's index does not look at
the phase at all; a finished pod's identity has no use for a certificate, so we refuse it.

The pods are the control plane's current ``ConfigSnapshot`` (its Kubernetes watch, or a YAML
directory), read on the event loop: a dictionary lookup per request, plus an index rebuilt when the
snapshot's Pod mapping changes (one pass over the pods).  The view lags the cluster by the
debounce: a pod created a moment ago may be refused once, and ztunnel retries with back-off.
Signing stays in the signing backend, off the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from istiod_lite.ca.errors import ImpersonationRefused
from istiod_lite.ca.identity import Identity, valid_namespace, valid_service_account
from istiod_lite.ca.tokenreview import ReviewedCaller
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.base import Resource
from istiod_lite.model.core import Pod

#: Istio's environment variable (istiod reads it at start) naming the node-proxy accounts.
TRUSTED_NODE_ACCOUNTS_ENV = "CA_TRUSTED_NODE_ACCOUNTS"
#: Pod phases after which a pod never runs again.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def parse_trusted_node_accounts(text: str) -> tuple[tuple[str, str], ...]:
    """``"istio-system/ztunnel, kube-system/ztunnel"`` -> ``(("istio-system", "ztunnel"), ...)``.

    Empty entries are skipped; any other entry that is not ``<namespace>/<service account>`` with
    valid Kubernetes names raises ``ValueError`` naming it (Istio logs and skips it; a typo here
    would silently break every node proxy, so we refuse to start instead).
    """
    accounts: list[tuple[str, str]] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        namespace, sep, name = entry.partition("/")
        if not sep or not valid_namespace(namespace) or not valid_service_account(name):
            raise ValueError(f"{TRUSTED_NODE_ACCOUNTS_ENV}: {entry!r} is not <namespace>/<service account>")
        accounts.append((namespace, name))
    return tuple(dict.fromkeys(accounts))


@dataclass(frozen=True)
class _PodIndex:
    """Pods by (namespace, name), and the (node, namespace, service account) triples that run."""

    pods: Mapping[tuple[str, str], Resource]
    running: frozenset[tuple[str, str, str]]

    @classmethod
    def build(cls, pods: Mapping[tuple[str, str], Resource]) -> _PodIndex:
        running = set()
        for pod in pods.values():
            if isinstance(pod, Pod) and pod.spec.node_name and pod.status.phase not in TERMINAL_PHASES:
                running.add((pod.spec.node_name, pod.namespace, pod.spec.service_account_name))
        return cls(pods, frozenset(running))


_NO_PODS: Mapping[tuple[str, str], Resource] = {}


class NodeAuthorizer:
    """Decides ``ImpersonatedIdentity`` requests; see the module docstring for the rules.

    ``snapshot`` returns the control plane's current config.  Not thread-safe: call it from the
    event loop (it only reads).
    """

    def __init__(self, trusted_accounts: Iterable[tuple[str, str]], trust_domain: str,
                 snapshot: Callable[[], ConfigSnapshot]) -> None:
        self.trusted_accounts = frozenset(trusted_accounts)
        self._trust_domain = trust_domain
        self._snapshot = snapshot
        self._index: _PodIndex | None = None

    def _pods(self) -> _PodIndex:
        pods = self._snapshot().by_kind.get(Pod.KIND, _NO_PODS)
        if self._index is None or self._index.pods is not pods:
            # A snapshot without Pod changes keeps the same mapping object, so this runs once per
            # change of the pods, not per request.
            self._index = _PodIndex.build(pods)
        return self._index

    def authorize(self, caller: ReviewedCaller, requested: str) -> Identity:
        """The identity to sign for, or ``ImpersonationRefused`` with the reason."""
        who = caller.identity
        if (who.namespace, who.service_account) not in self.trusted_accounts:
            raise ImpersonationRefused(f"caller {who} is not a trusted node account ({TRUSTED_NODE_ACCOUNTS_ENV})")
        try:
            target = Identity.from_spiffe(requested)
        except ValueError as exc:
            raise ImpersonationRefused(f"impersonated identity {requested!r} is not a workload SPIFFE ID: "
                                       f"{exc}") from None
        if target.trust_domain != self._trust_domain:
            raise ImpersonationRefused(f"impersonated identity {requested!r} is not in trust domain "
                                       f"{self._trust_domain!r}")
        if not caller.pod_name or not caller.pod_uid:
            raise ImpersonationRefused(f"caller {who}: the TokenReview names no pod (pod-name/pod-uid extras "
                                       "missing: a token not bound to a pod)")
        index = self._pods()
        pod = index.pods.get((who.namespace, caller.pod_name))
        where = f"{who.namespace}/{caller.pod_name}"
        if not isinstance(pod, Pod):
            raise ImpersonationRefused(f"caller pod {where} not found")
        if pod.metadata.uid != caller.pod_uid:
            raise ImpersonationRefused(f"caller pod {where} has uid {pod.metadata.uid!r}, the token names "
                                       f"{caller.pod_uid!r} (a re-created pod?)")
        if pod.spec.service_account_name != who.service_account:
            raise ImpersonationRefused(f"caller pod {where} runs as {pod.spec.service_account_name!r}, "
                                       f"not {who.service_account!r}")
        node = pod.spec.node_name
        if not node:
            raise ImpersonationRefused(f"caller pod {where} is not scheduled on a node")
        if (node, target.namespace, target.service_account) not in index.running:
            raise ImpersonationRefused(f"caller {who} on node {node!r} asked for {target}: no running pod of "
                                       f"{target.namespace}/{target.service_account} on that node")
        return target
