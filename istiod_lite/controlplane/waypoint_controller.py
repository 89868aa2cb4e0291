"""The waypoint controller: deploy every ``istio-waypoint`` Gateway and report its address.

``WaypointController.reconcile(snapshot)`` (synchronous: the ``kubernetes`` client blocks; call it
with ``asyncio.to_thread`` from the event loop) does, for the snapshot's Gateways of class
``istio-waypoint``:

* **server-side apply** (``PATCH`` with ``application/apply-patch+yaml``, ``fieldManager=istiod-lite``,
  ``force=true``) of the ServiceAccount, Deployment and Service from ``manifests.render_waypoint``;
  owner references to the Gateway let the garbage collector delete them with it, so nothing is
  ever deleted here;
* **only objects that are ours**: before applying, each object is read (``GET``); one that exists
  without our managed label, or controlled by something else (``manifests.foreign_reason``), is
  someone else's, and then *none* of the Gateway's objects is applied (a waypoint Deployment would
  otherwise run as a foreign ServiceAccount of the same name, with its identity) and the Gateway's
  ``Programmed`` condition is False with reason ``Invalid`` naming the object.  The conflict is looked at again at every
  reconcile and clears once the object is gone (or labelled ours).  An object that is ours is applied
  with the ``resourceVersion`` just read, so one replaced between the read and the apply is refused
  (409) rather than taken over; an object created in that gap is not caught (server-side apply has
  no "create only"; Istio has the same gap);
* a status apply on the Gateway's ``status`` subresource: ``addresses`` = the Service's clusterIP
  (from the apply answer) and the conditions Accepted / Programmed;
* the ConfigMap ``istio-ca-root-cert`` (key ``root-cert.pem``) in every namespace of the snapshot
  (Namespace objects and the Gateways' namespaces), which the waypoint pods mount.

Requests are sent only when the desired object changed since the last successful apply (a cache
keyed by object), so re-running on an unchanged snapshot sends nothing; the apply itself is
idempotent too.  ``invalidate()`` drops the cache (call it periodically to repair objects changed
behind the controller's back).  With several replicas only the leader writes: ``may_write`` (set by
the control plane to the elector's ``is_leader``) is checked right before every write, and a
reconcile stops at the first write it refuses (``ReconcileResult.interrupted``).
A failed apply is logged, counted in the result and retried at the next reconcile.
RBAC needed (deploy/rbac.yaml): ``create`` + ``patch`` on serviceaccounts, services, configmaps and
deployments.apps (an apply that creates needs ``create`` too), ``get`` on serviceaccounts, services and
deployments.apps (the ownership check), ``patch`` on gateways/status.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from istiod_lite.controlplane.manifests import (
    conflict_message,
    foreign_reason,
    is_waypoint,
    render_gateway_status,
    render_root_cert_configmap,
    render_waypoint,
)
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Namespace
from istiod_lite.model.gateway import Gateway
from istiod_lite.model.meshconfig_proxy import ProxyConfig

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


class NotLeader(Exception):
    """A write was about to be sent by a replica that is not (or no longer) the leader."""


class ApplyError(Exception):
    """The API server refused a request (HTTP status and the start of its answer)."""

    def __init__(self, path: str, status: int, body: str, *, verb: str = "apply") -> None:
        super().__init__(f"{verb} {path}: HTTP {status}: {body[:300]}")
        self.status = status


@dataclass(frozen=True)
class WaypointControllerOptions:
    """What the rendered waypoint pods need to reach istiod-lite."""

    #: Container image running ``istiod-lite waypoint run``.
    image: str
    #: istiod-lite's Service host name (port 15012 is appended), e.g. ``istiod-lite.istio-system.svc``.
    istiod_address: str
    trust_domain: str = "cluster.local"
    #: MeshConfig ``defaultConfig``: the agent's drain durations and concurrency (None: defaults).
    proxy: ProxyConfig | None = None
    #: PEM of the CA root, published as ConfigMap ``istio-ca-root-cert``; None = publish nothing.
    root_cert_pem: str | None = None
    request_timeout: float = 10.0


@dataclass
class ReconcileResult:
    """What one ``reconcile`` did (for logs and tests)."""

    applied: list[str] = field(default_factory=list)
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)
    #: One ``conflict_message`` per Gateway left undeployed because an object of its name is not ours.
    conflicts: list[str] = field(default_factory=list)
    #: Stopped early: this replica stopped being the leader (nothing more was written).
    interrupted: bool = False


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
        #: Gateway (ns, name) -> (uid, generation, address, conflict) of the status last written.
        self._status: dict[tuple[str, str], tuple[str, int, str, str]] = {}
        #: Asked right before every write: only the leader writes (``controlplane/leader.py``).
        self.may_write: Callable[[], bool] = lambda: True

    def reconcile(self, snapshot: ConfigSnapshot) -> ReconcileResult:
        """Bring the cluster in line with the snapshot's waypoint Gateways (see the module docstring)."""
        result = ReconcileResult()
        gateways = [g for g in snapshot.of_kind(Gateway) if is_waypoint(g)]
        if self.options.root_cert_pem is not None:
            namespaces = {ns.name for ns in snapshot.of_kind(Namespace)} | {g.namespace for g in gateways}
            for ns in sorted(namespaces):
                if result.interrupted:
                    return result
                self._apply(render_root_cert_configmap(ns, self.options.root_cert_pem), result)
        live: set[tuple[str, str]] = set()
        for gw in gateways:
            if result.interrupted:
                return result
            live.add((gw.namespace, gw.name))
            self._reconcile_gateway(gw, result)
        for key in [k for k in self._status if k not in live]:
            del self._status[key]
        return result

    def invalidate(self) -> None:
        """Forget what was applied: the next ``reconcile`` re-applies everything (a periodic resync
        repairs objects edited or deleted behind the controller's back)."""
        self._applied.clear()
        self._status.clear()

    # -- internals -------------------------------------------------------------------------------
    def _reconcile_gateway(self, gw: Gateway, result: ReconcileResult) -> None:
        """Check that every object to write is ours, then apply them all, then the status."""
        objs = render_waypoint(gw, image=self.options.image, istiod_address=self.options.istiod_address,
                               trust_domain=self.options.trust_domain, proxy=self.options.proxy)
        # Objects whose body was applied already were ours then: only the others are read.
        versions: dict[str, str] = {}
        for obj in objs:
            path = object_path(obj)
            if self._is_cached(path, obj):
                continue
            try:
                existing = self._get(path)
            except Exception as exc:  # cannot tell whose it is: write nothing for this Gateway
                log.warning("waypoint controller: %s", exc)
                result.errors.append(str(exc))
                self._write_status(gw, "", "", result)
                return
            why = foreign_reason(existing, gw) if existing is not None else ""
            if existing is None:
                versions[path] = ""
            elif not why:
                versions[path] = str((existing.get("metadata") or {}).get("resourceVersion") or "")
            else:
                meta = obj["metadata"]
                conflict = conflict_message(obj["kind"], meta["namespace"], meta["name"], why)
                log.warning("waypoint controller: Gateway %s/%s: %s", gw.namespace, gw.name, conflict)
                result.conflicts.append(conflict)
                self._write_status(gw, "", conflict, result)
                return
        cluster_ip = ""
        for obj in objs:
            answer = self._apply(obj, result, resource_version=versions.get(object_path(obj), ""))
            if obj["kind"] == "Service" and answer is not None:
                ip = (answer.get("spec") or {}).get("clusterIP") or ""
                cluster_ip = "" if ip == "None" else str(ip)
        self._write_status(gw, cluster_ip, "", result)

    def _write_status(self, gw: Gateway, cluster_ip: str, conflict: str, result: ReconcileResult) -> None:
        want = (gw.metadata.uid, gw.metadata.generation, cluster_ip, conflict)
        key = (gw.namespace, gw.name)
        if self._status.get(key) == want:
            result.unchanged += 1
            return
        body = render_gateway_status(gw, cluster_ip, transition_time=self._clock(), conflict=conflict)
        path = object_path(body, subresource="status")
        try:
            self._patch(path, body)
        except NotLeader:
            result.interrupted = True
            return
        except Exception as exc:
            log.warning("waypoint controller: %s", exc)
            result.errors.append(str(exc))
            return
        self._status[key] = want
        result.applied.append(path)

    def _is_cached(self, path: str, obj: dict[str, Any]) -> bool:
        cached = self._applied.get(path)
        return cached is not None and cached[0] == json.dumps(obj, sort_keys=True)

    def _apply(self, obj: dict[str, Any], result: ReconcileResult, *, resource_version: str = ""
               ) -> dict[str, Any] | None:
        """Apply ``obj`` unless the same body was applied already; returns the server's object
        (the cached one when nothing was sent), None on failure.  ``resource_version`` (of the object
        read just before) is sent as a precondition: the apply fails if the object changed since."""
        path = object_path(obj)
        text = json.dumps(obj, sort_keys=True)
        cached = self._applied.get(path)
        if cached is not None and cached[0] == text:
            result.unchanged += 1
            return cached[1]
        body = obj
        if resource_version:
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": resource_version}}
        try:
            answer = self._patch(path, body)
        except NotLeader:
            result.interrupted = True
            return None
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
        if not self.may_write():
            raise NotLeader(path)
        status, data = self._call("PATCH", path, query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                                  headers={"Content-Type": APPLY_CONTENT_TYPE}, body=body)
        if status not in (200, 201):
            raise ApplyError(path, status, data)
        return _as_object(data)

    def _get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path`` as the API server has it now; None when it does not exist."""
        status, data = self._call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise ApplyError(path, status, data, verb="get")
        return _as_object(data)

    def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
              headers: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> tuple[int, str]:
        """One request through the ``kubernetes`` client: (HTTP status, answer text)."""
        method, url, hdrs, _body, _post = self._api.param_serialize(
            method, path, query_params=query or [], header_params={**(headers or {}), "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self._api.call_api(method, url, header_params=hdrs, body=body,
                                  _request_timeout=self.options.request_timeout)
        raw = resp.response
        try:
            data = raw.read().decode("utf-8", "replace")
        finally:
            raw.release_conn()
        return int(resp.status), data


def _as_object(data: str) -> dict[str, Any]:
    answer = json.loads(data) if data else {}
    return answer if isinstance(answer, dict) else {}


def reconcile_waypoints(snapshot: ConfigSnapshot, api_client: Any, options: WaypointControllerOptions
                        ) -> ReconcileResult:
    """One-shot convenience: a fresh controller (no cache) reconciling ``snapshot``."""
    return WaypointController(api_client, options).reconcile(snapshot)
