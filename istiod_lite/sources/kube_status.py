"""Tell the cluster why an Istio resource was rejected: a condition in the object's own ``status``.

The Kubernetes source validates every object with the same models as ``istiod-lite validate``; an
invalid one is not served (its last valid version, if any, keeps being served).  Users look for the
reason where Istio puts it, in the resource's status (``kubectl get vs reviews -o yaml``)::

    status:
      conditions:
      - type: Accepted
        status: "False"
        reason: Invalid
        message: 'spec.http[0].route[0].weight: must be between 0 and 100 (not served)'
        observedGeneration: 3
        lastTransitionTime: "2026-11-26T05:00:00Z"
      validationMessages:                      # what istioctl analyze / istiod's analysis write
      - type: {code: IST0106, name: SchemaValidationError}
        level: ERROR
        documentationUrl: https://istio.io/latest/docs/reference/config/analysis/ist0106/

Only Istio kinds (``*.istio.io``: their CRDs have a ``status`` subresource and a free-form status;
declared ``StatusWriter.REJECTIONS`` with their model class) are reported; Gateway API kinds
(whose status is per parent and per controller) and core kinds are not written to (their errors
are logged, as before).

How it stays cheap and harmless (docs/kubernetes.md):

* **Off the hot path**: ``observe`` (called by the source under its lock, for every validated
  event) returns at once for a valid object whose status carries nothing of ours (the common case);
  otherwise it records the observation in a bounded map keyed by object (a newer observation of the
  same object replaces an older one) and wakes one writer thread; a full map drops the observation
  (counted; the object's next event brings it back).
* **No write storms**: what should be in the status is a function of (generation, messages); the
  writer compares it with what the object's status already says (ignoring ``lastTransitionTime``,
  so replicas agree) and with what it wrote or failed to write before.  A status write, a label
  change, a relist or a second replica's write changes neither, so nothing is sent again.
  Valid objects that never carried the condition are never written to.
* **Cleared when fixed**: a valid object whose status still carries the condition gets an apply
  without it (server-side apply removes the fields this field manager owned).
* **Never in the way**: a failed write is logged and dropped: 403 (RBAC), 404 (object or CRD gone),
  409 (the object changed since: its newer event is re-evaluated), 422; 429/5xx/connection errors
  are retried a few times with backoff.  Nothing here can raise into the source.
* **Only the leader writes** (several replicas, ``controlplane/leader.py``): ``set_write_gate``
  installs a test made right before every write; while it says no, observations keep collecting
  (the newest per object) and nothing is sent; ``resume()`` (on becoming leader) writes what is
  pending.  An observation the gate stopped mid-way goes back to the pending map.
* **Optimistic concurrency**: the apply carries the observed ``resourceVersion``, so a status about
  an older version of the object is never written over a newer one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from istiod_lite.model import ConfigError, ResourceKey

log = logging.getLogger(__name__)

#: Server-side apply field manager of these status writes (distinct from the waypoint controller's,
#: so clearing the condition never removes fields another part of istiod-lite applied).
FIELD_MANAGER = "istiod-lite-validation"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
CONDITION_TYPE = "Accepted"
CONDITION_REASON = "Invalid"
#: Istio's analysis message for a resource that fails schema validation.
VALIDATION_MESSAGE: dict[str, Any] = {
    "type": {"code": "IST0106", "name": "SchemaValidationError"},
    "level": "ERROR",
    "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0106/",
}
#: metav1.Condition allows 32768; a handful of errors fit in far less, and a status stays small.
MAX_MESSAGE = 4096
#: Statuses that will not get better by sending the same write again.
_PERMANENT = frozenset({400, 401, 403, 404, 405, 415, 422})


@dataclass(frozen=True)
class StatusReporterOptions:
    #: Objects waiting to be written at most; beyond it observations are dropped (and counted).
    max_pending: int = 10_000
    request_timeout: float = 10.0
    #: Attempts for a write failing with 429, 5xx or a connection error.
    attempts: int = 4
    retry_initial: float = 0.5


@dataclass(frozen=True)
class Observation:
    """One validated version of an Istio object, as the source saw it."""

    key: ResourceKey
    api_version: str
    path: str  # the object's REST path, e.g. /apis/networking.istio.io/v1/namespaces/ns/virtualservices/x
    uid: str
    resource_version: str
    generation: int | None
    status: Any  # the object's current ``status`` (what is already written)
    errors: tuple[ConfigError, ...]
    served: bool  # whether a (last valid) version of it is being served


@dataclass
class ReporterStats:
    """Counters, for tests and logs."""

    written: int = 0
    cleared: int = 0
    skipped: int = 0
    failed: int = 0
    dropped: int = 0
    conflicts: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def condition_message(errors: Sequence[ConfigError], served: bool) -> str:
    """``field.path: message`` of every error (``; ``-joined), and whether a last valid version is served."""
    parts = sorted({f"{e.field_path}: {e.message}" if e.field_path else e.message for e in errors})
    text = "; ".join(parts)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    suffix = " (the last valid version is still served)" if served else " (not served)"
    return text + suffix


def _desired(obs: Observation) -> tuple[str, str] | None:
    """What our part of the status should say: (observedGeneration, message), or None (nothing)."""
    if not obs.errors:
        return None
    return (str(obs.generation or ""), condition_message(obs.errors, obs.served))


def _ours_in(status: Any) -> tuple[str, str] | bool | None:
    """What our part of a written status says: (observedGeneration, message); None = nothing of ours;
    True = something of ours that does not match the shape we write (to be rewritten or cleared)."""
    if not isinstance(status, Mapping):
        return None
    conds = status.get("conditions")
    mine = [c for c in conds if isinstance(c, Mapping) and c.get("type") == CONDITION_TYPE
            and c.get("reason") == CONDITION_REASON] if isinstance(conds, list) else []
    msgs = status.get("validationMessages")
    has_msg = isinstance(msgs, list) and any(
        isinstance(m, Mapping) and isinstance(m.get("type"), Mapping)
        and m["type"].get("code") == VALIDATION_MESSAGE["type"]["code"] for m in msgs)
    if not mine and not has_msg:
        return None
    if len(mine) != 1 or not has_msg or mine[0].get("status") != "False":
        return True
    gen = mine[0].get("observedGeneration")
    return (str(gen) if gen is not None else "", str(mine[0].get("message") or ""))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusReporter:
    """See the module docstring.  ``observe``/``forget`` are called by the source; a daemon thread
    (``start``/``close``) does the writing with the source's ``kubernetes`` ApiClient."""

    def __init__(self, api_client: Any, options: StatusReporterOptions | None = None, *,
                 clock: Callable[[], str] = _now) -> None:
        self._api = api_client
        self.options = options or StatusReporterOptions()
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[ResourceKey, Observation] = {}
        self._retries: dict[ResourceKey, tuple[float, int, Observation]] = {}  # key -> (due, attempt, obs)
        #: Per object: (uid, desired) last written or refused for good; never sent again.
        self._done: dict[ResourceKey, tuple[str, tuple[str, str] | None]] = {}
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._rbac_logged = False
        #: Writes happen only while this says True (the leader); always, without leader election.
        self._may_write: Callable[[], bool] = lambda: True
        self.stats = ReporterStats()

    # -- called by the source (must never block or raise) ----------------------------------------
    def observe(self, obs: Observation) -> None:
        with self._cond:
            if not obs.errors and _ours_in(obs.status) is None:
                # valid, and nothing of ours to clear (the common case): no work, and an older
                # observation still waiting is obsolete
                self._pending.pop(obs.key, None)
                self._retries.pop(obs.key, None)
                return
            if obs.key not in self._pending and len(self._pending) >= self.options.max_pending:
                self.stats.dropped += 1
                if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                    log.warning("status reporter: %d pending writes, dropping %s (dropped so far: %d)",
                                len(self._pending), obs.key, self.stats.dropped)
                return
            self._pending[obs.key] = obs
            self._retries.pop(obs.key, None)  # a newer observation supersedes a pending retry
            self._cond.notify()

    def forget(self, key: ResourceKey) -> None:
        """The object was deleted: nothing to write any more."""
        with self._cond:
            self._pending.pop(key, None)
            self._retries.pop(key, None)
            self._done.pop(key, None)

    def set_write_gate(self, may_write: Callable[[], bool]) -> None:
        """Write only while ``may_write()`` (checked right before each write, from the writer thread)."""
        with self._cond:
            self._may_write = may_write
            self._cond.notify_all()

    def resume(self) -> None:
        """The gate opened (this replica became the leader): write what is pending."""
        with self._cond:
            self._cond.notify_all()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kube-status-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def idle(self) -> bool:
        """Nothing pending, being written or waiting for a retry (for tests)."""
        with self._cond:
            return not self._pending and not self._retries and not self._busy

    # -- the writer thread -----------------------------------------------------------------------
    def _next(self) -> tuple[Observation, int] | None:
        """The next observation to handle and its attempt number (blocks); None when closing."""
        with self._cond:
            self._busy = False
            while not self._stop:
                if (self._pending or self._retries) and not self._may_write():
                    self._cond.wait(1.0)  # not the leader: ``resume()`` wakes us
                    continue
                if self._pending:
                    key = next(iter(self._pending))
                    self._busy = True
                    return self._pending.pop(key), 0
                now = time.monotonic()
                due = [(when, key) for key, (when, _a, _o) in self._retries.items()]
                ready = [key for when, key in due if when <= now]
                if ready:
                    _when, attempt, obs = self._retries.pop(ready[0])
                    self._busy = True
                    return obs, attempt
                self._cond.wait(min((when for when, _ in due), default=now + 3600) - now)
            return None

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            obs, attempt = item
            try:
                self._handle(obs, attempt)
            except Exception:  # never let one object stop the reporter
                log.exception("status reporter: %s", obs.key)

    def _handle(self, obs: Observation, attempt: int) -> None:
        want = _desired(obs)
        have = _ours_in(obs.status)
        with self._cond:
            done = self._done.get(obs.key)
        if have == want or done == (obs.uid, want):
            self.stats.skipped += 1
            return
        if not self._may_write():  # leadership lost since ``_next``: keep it for the next leader term
            with self._cond:
                self._pending.setdefault(obs.key, obs)
            return
        try:
            status = self._write(obs, want)
        except Exception as exc:  # connection errors, timeouts: transient
            status, detail = 0, repr(exc)
        else:
            detail = ""
            if status in (200, 201):
                with self._cond:
                    self._done[obs.key] = (obs.uid, want)
                if want is None:
                    self.stats.cleared += 1
                    log.info("status of %s: rejection cleared", obs.key)
                else:
                    self.stats.written += 1
                return
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        if status == 409:  # the object changed after this observation: its newer event decides
            self.stats.conflicts += 1
            log.debug("status of %s: resourceVersion %s is stale (409)", obs.key, obs.resource_version)
            return
        self.stats.failed += 1
        if status in _PERMANENT:
            with self._cond:
                self._done[obs.key] = (obs.uid, want)  # same object, same content: do not ask again
            if status == 403 and not self._rbac_logged:
                self._rbac_logged = True
                log.warning("status reporter: writing %s/status is forbidden (403): rejected Istio resources "
                            "get no status condition until the ClusterRole grants patch on */status "
                            "(deploy/rbac.yaml); config serving is not affected", obs.path)
            else:
                log.info("status reporter: %s: HTTP %d; not retried for this version", obs.path, status)
            return
        if attempt + 1 >= self.options.attempts:
            log.warning("status reporter: %s: giving up after %d attempts (%s)", obs.path, attempt + 1,
                        detail or f"HTTP {status}")
            return
        delay = self.options.retry_initial * (2 ** attempt)
        with self._cond:
            if obs.key not in self._pending:  # a newer observation needs no retry of this one
                self._retries[obs.key] = (time.monotonic() + delay, attempt + 1, obs)
                self._cond.notify()

    def _write(self, obs: Observation, want: tuple[str, str] | None) -> int:
        """One server-side apply on ``.../status``; returns the HTTP status."""
        name, namespace = obs.key.name, obs.key.namespace
        meta: dict[str, Any] = {"name": name, "resourceVersion": obs.resource_version}
        if namespace:
            meta["namespace"] = namespace
        status: dict[str, Any] = {}
        if want is not None:
            condition: dict[str, Any] = {
                "type": CONDITION_TYPE, "status": "False", "reason": CONDITION_REASON, "message": want[1],
                "lastTransitionTime": self._clock()}
            if obs.generation is not None:
                condition["observedGeneration"] = obs.generation
            status = {"conditions": [condition], "validationMessages": [json.loads(json.dumps(VALIDATION_MESSAGE))]}
        body = {"apiVersion": obs.api_version, "kind": obs.key.kind, "metadata": meta, "status": status}
        path = obs.path + "/status"
        method, url, headers, _body, _post = self._api.param_serialize(
            "PATCH", path, query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": APPLY_CONTENT_TYPE, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self._api.call_api(method, url, header_params=headers, body=body,
                                  _request_timeout=self.options.request_timeout)
        raw = resp.response
        with contextlib.suppress(Exception):
            try:
                raw.read()
            finally:
                raw.release_conn()
        return int(resp.status)
