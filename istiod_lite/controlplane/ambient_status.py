"""Write istiod's ambient binding status into the cluster (``translator/ambient_status.py`` says what).

Cluster mode only; the same rules as the rejection reporter (``sources/kube_status.py``):

* **Off the hot path**: ``update(snapshot)`` (called after each translation, on the event loop)
  only keeps the newest snapshot and wakes one writer thread; the thread computes the statuses and
  writes.  Snapshots that arrive while it writes are coalesced (only the newest is evaluated).
* **Only on change**: each object's part of the status is compared with what the object already
  carries (ignoring ``lastTransitionTime``, so replicas and restarts agree) and with what this
  writer last wrote for it; equal means no request.  ``lastTransitionTime`` is kept when a
  condition's status did not change.
* **Server-side apply** on ``.../status`` with its own field manager, carrying the observed
  ``resourceVersion`` (a status computed from an older object never overwrites a newer one: 409,
  and the newer object's event brings a new snapshot).  Conditions are a list map keyed by
  ``type``, so ours sit beside the waypoint controller's and the rejection reporter's; an apply
  without them removes ours (cleared when the config no longer calls for them).  An HTTPRoute's
  ``status.parents`` is one list: the entries of other controllers are carried over unchanged.
* **Only the leader writes** (``set_write_gate``); a new leader re-evaluates everything
  (``resume``), writing only what differs from the cluster.
* **Never in the way**: a failed write is logged (RBAC 403 once) and not retried until the desired
  status changes again; nothing here raises into the control plane.

Objects that did not come from the cluster (no ``metadata.uid``: a YAML directory merged in) are
never written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model.base import Resource
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.model.registry import declared_kinds
from istiod_lite.model.security import AuthorizationPolicy
from istiod_lite.translator.ambient_status import (
    GATEWAY_CONTROLLER,
    OWNED_CONDITIONS,
    ObjectStatus,
    StatusKey,
    ambient_status,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "istiod-lite-ambient-status"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
_WRITTEN_KINDS: tuple[type[Resource], ...] = (Service, ServiceEntry, AuthorizationPolicy, gw.Gateway, gw.HTTPRoute)
#: Statuses that the same request will not turn into success.
_PERMANENT = frozenset({400, 401, 403, 404, 405, 415, 422})


@dataclass
class WriterStats:
    """Counters, for tests and logs."""

    written: int = 0
    cleared: int = 0
    skipped: int = 0
    failed: int = 0
    conflicts: int = 0
    evaluations: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(obj: Any) -> Any:
    """JSON-normalised (tuples -> lists, sorted keys) for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=list))


def _cond_core(c: Mapping[str, Any]) -> dict[str, Any]:
    """What a condition says, without its transition time."""
    out = {k: c.get(k) for k in ("type", "status", "reason", "message")}
    gen = c.get("observedGeneration")
    if gen:
        out["observedGeneration"] = gen
    return out


def _status_dict(obj: Resource) -> Mapping[str, Any]:
    status = getattr(obj, "status", None)
    if status is None:
        return {}
    if isinstance(status, Mapping):
        return status
    return {"conditions": list(getattr(status, "conditions", ()) or ())}


@dataclass(frozen=True)
class _Plan:
    """One object's apply: the ``status`` body, and its fingerprint (what it says, sans times)."""

    body: dict[str, Any]
    fingerprint: str
    clears: bool


class AmbientStatusWriter:
    """See the module docstring.  ``update`` is called with every installed snapshot."""

    def __init__(self, api_client: Any, *, root_namespace: str = "istio-system", request_timeout: float = 10.0,
                 clock: Callable[[], str] = _now) -> None:
        self._api = api_client
        self.root_namespace = root_namespace
        self.request_timeout = request_timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._latest: ConfigSnapshot | None = None
        self._evaluated: ConfigSnapshot | None = None
        #: key -> (uid, fingerprint) last written, or refused for good.
        self._written: dict[StatusKey, tuple[str, str]] = {}
        self._may_write: Callable[[], bool] = lambda: True
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._rbac_logged = False
        self.stats = WriterStats()

    # -- control plane side (never blocks, never raises) --------------------------------------------
    def update(self, snapshot: ConfigSnapshot) -> None:
        with self._cond:
            self._latest = snapshot
            self._cond.notify()

    def set_write_gate(self, may_write: Callable[[], bool]) -> None:
        with self._cond:
            self._may_write = may_write
            self._cond.notify_all()

    def resume(self) -> None:
        """Became the leader: what the previous one wrote is read from the objects; evaluate again."""
        with self._cond:
            self._written.clear()
            self._evaluated = None
            self._cond.notify_all()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ambient-status-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def idle(self) -> bool:
        """The newest snapshot has been evaluated and written (for tests)."""
        with self._cond:
            return not self._busy and (self._latest is None or self._latest is self._evaluated)

    # -- the writer thread ----------------------------------------------------------------------------
    def _next(self) -> ConfigSnapshot | None:
        with self._cond:
            self._busy = False
            while not self._stop:
                if self._latest is not None and self._latest is not self._evaluated and self._may_write():
                    self._busy = True
                    self._evaluated = self._latest
                    return self._latest
                self._cond.wait(1.0)
            return None

    def _run(self) -> None:
        while True:
            snapshot = self._next()
            if snapshot is None:
                return
            try:
                self.evaluate(snapshot)
            except Exception:  # never let one snapshot stop the writer
                log.exception("ambient status writer")

    def evaluate(self, snapshot: ConfigSnapshot) -> None:
        """Compute every object's status and write those that differ (the writer thread; tests)."""
        self.stats.evaluations += 1
        desired = ambient_status(snapshot, self.root_namespace)
        live: set[StatusKey] = set()
        for obj in self._candidates(snapshot):
            key = (obj.kind, obj.namespace, obj.name)
            live.add(key)
            if not obj.metadata.uid:
                continue  # not from the cluster
            plan = self._plan(obj, desired.get(key))
            if plan is None or self._written.get(key) == (obj.metadata.uid, plan.fingerprint):
                self.stats.skipped += 1
                continue
            if not self._may_write():
                with self._cond:  # leadership lost: the next leader evaluates again
                    self._evaluated = None
                return
            self._write(obj, key, plan)
        for key in [k for k in self._written if k not in live]:
            del self._written[key]

    @staticmethod
    def _candidates(snapshot: ConfigSnapshot) -> Iterable[Resource]:
        for cls in _WRITTEN_KINDS:
            yield from snapshot.of_kind(cls)

    def _plan(self, obj: Resource, want: ObjectStatus | None) -> _Plan | None:
        """The apply for ``obj``, or None when what it carries already says what we want."""
        current = _status_dict(obj)
        if obj.kind == "HTTPRoute":
            return self._plan_parents(current, want)
        owned = OWNED_CONDITIONS.get(obj.kind, frozenset())
        have_list = [c for c in current.get("conditions") or () if isinstance(c, Mapping) and c.get("type") in owned]
        have = _plain(sorted((_cond_core(c) for c in have_list), key=lambda c: str(c["type"])))
        wanted = [c.as_dict() for c in (want.conditions if want is not None else ())]
        if have == _plain(sorted(wanted, key=lambda c: str(c["type"]))):
            return None
        by_type = {c.get("type"): c for c in have_list}
        conds = []
        for c in wanted:
            old = by_type.get(c["type"])
            same = old is not None and old.get("status") == c["status"] and old.get("lastTransitionTime")
            conds.append({**c, "lastTransitionTime": old.get("lastTransitionTime") if same and old else self._clock()})
        body: dict[str, Any] = {"conditions": conds} if conds else {}
        return _Plan(body, json.dumps(_plain(wanted), sort_keys=True), clears=not conds)

    def _plan_parents(self, current: Mapping[str, Any], want: ObjectStatus | None) -> _Plan | None:
        parents = [p for p in current.get("parents") or () if isinstance(p, Mapping)]
        others = [dict(p) for p in parents if p.get("controllerName") != GATEWAY_CONTROLLER]
        mine = [p for p in parents if p.get("controllerName") == GATEWAY_CONTROLLER]
        wanted: list[dict[str, Any]] = [{"parentRef": dict(p.parent_ref), "controllerName": GATEWAY_CONTROLLER,
                   "conditions": [c.as_dict() for c in p.conditions]} for p in (want.parents if want else ())]
        have = [{"parentRef": p.get("parentRef"), "controllerName": GATEWAY_CONTROLLER,
                 "conditions": [_cond_core(c) for c in p.get("conditions") or () if isinstance(c, Mapping)]}
                for p in mine]
        if _plain(have) == _plain(wanted):
            return None
        old_times = {(json.dumps(_plain(p.get("parentRef")), sort_keys=True), c.get("type")):
                     (c.get("status"), c.get("lastTransitionTime"))
                     for p in mine for c in p.get("conditions") or () if isinstance(c, Mapping)}
        out = []
        for p in wanted:
            ref = json.dumps(_plain(p["parentRef"]), sort_keys=True)
            conds = []
            for c in p["conditions"]:
                status, when = old_times.get((ref, c["type"]), (None, None))
                conds.append({**c, "lastTransitionTime": when if status == c["status"] and when else self._clock()})
            out.append({**p, "conditions": conds})
        return _Plan({"parents": others + out}, json.dumps(_plain(wanted), sort_keys=True), clears=not wanted)

    def _write(self, obj: Resource, key: StatusKey, plan: _Plan) -> None:
        try:
            status = self._apply(obj, plan.body)
        except Exception as exc:  # connection errors, timeouts: the next change tries again
            self.stats.failed += 1
            log.warning("ambient status of %s %s/%s: %r", obj.kind, obj.namespace, obj.name, exc)
            return
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        if status in (200, 201):
            self._written[key] = (obj.metadata.uid, plan.fingerprint)
            if plan.clears:
                self.stats.cleared += 1
            else:
                self.stats.written += 1
            return
        if status == 409:
            self.stats.conflicts += 1  # the object changed since: its newer version is evaluated next
            return
        self.stats.failed += 1
        if status in _PERMANENT:
            self._written[key] = (obj.metadata.uid, plan.fingerprint)  # same object, same content: not again
        if status == 403 and not self._rbac_logged:
            self._rbac_logged = True
            log.warning("ambient status: writing %s status is forbidden (403): binding conditions are not written "
                        "until the ClusterRole grants patch on its status (deploy/rbac.yaml); serving is not "
                        "affected", obj.kind)
        elif status != 403:
            log.info("ambient status of %s %s/%s: HTTP %d", obj.kind, obj.namespace, obj.name, status)

    def _apply(self, obj: Resource, status: dict[str, Any]) -> int:
        kind = next(k for k in declared_kinds() if k.kind == obj.kind)
        prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        path = f"{prefix}/namespaces/{obj.namespace}/{kind.plural}/{obj.name}/status"
        meta: dict[str, Any] = {"name": obj.name, "namespace": obj.namespace}
        if obj.metadata.resource_version:
            meta["resourceVersion"] = obj.metadata.resource_version
        body = {"apiVersion": kind.api_version, "kind": obj.kind, "metadata": meta, "status": status}
        method, url, headers, _body, _post = self._api.param_serialize(
            "PATCH", path, query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": APPLY_CONTENT_TYPE, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=self.request_timeout)
        raw = resp.response
        with contextlib.suppress(Exception):
            try:
                raw.read()
            finally:
                raw.release_conn()
        return int(resp.status)
