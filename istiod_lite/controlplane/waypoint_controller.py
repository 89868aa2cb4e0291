"""The waypoint controller: deploy every ``istio-waypoint`` Gateway and report its address.

``WaypointController.reconcile(snapshot)`` (synchronous: the ``kubernetes`` client blocks; call it
with ``asyncio.to_thread`` from the event loop) does, for the snapshot's Gateways of class
``istio-waypoint``:

* **server-side apply** (``PATCH`` with ``application/apply-patch+yaml``, ``fieldManager=istiod-lite``,
  ``force=true``) of the ServiceAccount, Deployment and Service from ``manifests.render_waypoint``;
  owner references to the Gateway let the garbage collector delete them with it, so nothing is
  ever deleted here;
* a status apply on the Gateway's ``status`` subresource: ``addresses`` = the Service's clusterIP
  (from the apply answer) and the conditions Accepted / Programmed;
* the ConfigMap ``istio-ca-root-cert`` (key ``root-cert.pem``) in every namespace of the snapshot
  (Namespace objects and the Gateways' namespaces), which the waypoint pods mount.

Requests are sent only when the desired object changed since the last successful apply (a cache
keyed by object), so re-running on an unchanged snapshot sends nothing; the apply itself is
idempotent too.  ``invalidate()`` drops the cache (call it periodically to repair objects changed
behind the controller's back).  A failed apply is logged, counted in the result and retried at the next reconcile.
RBAC needed (deploy/rbac.yaml): ``create`` + ``patch`` on serviceaccounts, services, configmaps and
deployments.apps (an apply that creates needs ``create`` too), ``patch`` on gateways/status.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from istiod_lite.controlplane.manifests import (
    is_waypoint,
    render_gateway_status,
    render_root_cert_configmap,
    render_waypoint,
)
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Namespace
from istiod_lite.model.gateway import Gateway

log = logging.getLogger(__name__)

FIELD_MANAGER = "istiod-lite"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"

#: apiVersion/kind -> (API path prefix, plural).
_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("gateway.networking.k8s.io/v1", "Gateway"): ("/apis/gateway.networking.k8s.io/v1", "gateways"),
}


class ApplyError(Exception):
    """The API server refused an apply (HTTP status and the start of its answer)."""

    def __init__(self, path: str, status: int, body: str) -> None:
        super().__init__(f"apply {path}: HTTP {status}: {body[:300]}")
        self.status = status


@dataclass(frozen=True)
class WaypointControllerOptions:
    """What the rendered waypoint pods need to reach istiod-lite."""

    #: Container image running ``istiod-lite waypoint run``.
    image: str
    #: istiod-lite's Service host name (port 15012 is appended), e.g. ``istiod-lite.istio-system.svc``.
    istiod_address: str
    trust_domain: str = "cluster.local"
    #: PEM of the CA root, published as ConfigMap ``istio-ca-root-cert``; None = publish nothing.
    root_cert_pem: str | None = None
    request_timeout: float = 10.0


@dataclass
class ReconcileResult:
    """What one ``reconcile`` did (for logs and tests)."""

    applied: list[str] = field(default_factory=list)
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def object_path(obj: dict[str, Any], *, subresource: str = "") -> str:
    """REST path of a namespaced object (``/apis/apps/v1/namespaces/NS/deployments/NAME[/status]``)."""
    prefix, plural = _PATHS[(obj["apiVersion"], obj["kind"])]
    meta = obj["metadata"]
    path = f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
    return f"{path}/{subresource}" if subresource else path


class WaypointController:
    """See the module docstring.  Not thread-safe: run one ``reconcile`` at a time."""

    def __init__(self, api_client: Any, options: WaypointControllerOptions, *,
                 clock: Callable[[], str] = _now) -> None:
        self._api = api_client
        self.options = options
        self._clock = clock
        #: (path) -> (JSON of the last successfully applied body, the answer's object).
        self._applied: dict[str, tuple[str, dict[str, Any]]] = {}
        #: Gateway (ns, name) -> (uid, generation, address) of the status last written.
        self._status: dict[tuple[str, str], tuple[str, int, str]] = {}

    def reconcile(self, snapshot: ConfigSnapshot) -> ReconcileResult:
        """Bring the cluster in line with the snapshot's waypoint Gateways (see the module docstring)."""
        result = ReconcileResult()
        gateways = [g for g in snapshot.of_kind(Gateway) if is_waypoint(g)]
        if self.options.root_cert_pem is not None:
            namespaces = {ns.name for ns in snapshot.of_kind(Namespace)} | {g.namespace for g in gateways}
            for ns in sorted(namespaces):
                self._apply(render_root_cert_configmap(ns, self.options.root_cert_pem), result)
        live: set[tuple[str, str]] = set()
        for gw in gateways:
            live.add((gw.namespace, gw.name))
            cluster_ip = ""
            for obj in render_waypoint(gw, image=self.options.image, istiod_address=self.options.istiod_address,
                                       trust_domain=self.options.trust_domain):
                answer = self._apply(obj, result)
                if obj["kind"] == "Service" and answer is not None:
                    ip = (answer.get("spec") or {}).get("clusterIP") or ""
                    cluster_ip = "" if ip == "None" else str(ip)
            self._write_status(gw, cluster_ip, result)
        for key in [k for k in self._status if k not in live]:
            del self._status[key]
        return result

    def invalidate(self) -> None:
        """Forget what was applied: the next ``reconcile`` re-applies everything (a periodic resync
        repairs objects edited or deleted behind the controller's back)."""
        self._applied.clear()
        self._status.clear()

    # -- internals -------------------------------------------------------------------------------
    def _write_status(self, gw: Gateway, cluster_ip: str, result: ReconcileResult) -> None:
        want = (gw.metadata.uid, gw.metadata.generation, cluster_ip)
        key = (gw.namespace, gw.name)
        if self._status.get(key) == want:
            result.unchanged += 1
            return
        body = render_gateway_status(gw, cluster_ip, transition_time=self._clock())
        path = object_path(body, subresource="status")
        try:
            self._patch(path, body)
        except Exception as exc:
            log.warning("waypoint controller: %s", exc)
            result.errors.append(str(exc))
            return
        self._status[key] = want
        result.applied.append(path)

    def _apply(self, obj: dict[str, Any], result: ReconcileResult) -> dict[str, Any] | None:
        """Apply ``obj`` unless the same body was applied already; returns the server's object
        (the cached one when nothing was sent), None on failure."""
        path = object_path(obj)
        text = json.dumps(obj, sort_keys=True)
        cached = self._applied.get(path)
        if cached is not None and cached[0] == text:
            result.unchanged += 1
            return cached[1]
        try:
            answer = self._patch(path, obj)
        except Exception as exc:
            log.warning("waypoint controller: %s", exc)
            result.errors.append(str(exc))
            self._applied.pop(path, None)
            return None
        self._applied[path] = (text, answer)
        result.applied.append(path)
        return answer

    def _patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One server-side apply; the body is a dict, serialised as JSON (valid YAML) by the client."""
        method, url, headers, _body, _post = self._api.param_serialize(
            "PATCH", path, query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": APPLY_CONTENT_TYPE, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self._api.call_api(method, url, header_params=headers, body=body,
                                  _request_timeout=self.options.request_timeout)
        raw = resp.response
        try:
            data = raw.read().decode("utf-8", "replace")
        finally:
            raw.release_conn()
        if resp.status not in (200, 201):
            raise ApplyError(path, resp.status, data)
        answer = json.loads(data) if data else {}
        return answer if isinstance(answer, dict) else {}


def reconcile_waypoints(snapshot: ConfigSnapshot, api_client: Any, options: WaypointControllerOptions
                        ) -> ReconcileResult:
    """One-shot convenience: a fresh controller (no cache) reconciling ``snapshot``."""
    return WaypointController(api_client, options).reconcile(snapshot)
