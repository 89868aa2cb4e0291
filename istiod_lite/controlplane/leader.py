"""Leader election over a ``coordination.k8s.io/v1`` Lease: several replicas, one writer.

Every replica watches the cluster, serves xDS and runs the CA; only the leader writes to the cluster
(rejection statuses, the waypoint controller's applies), so two replicas never race each other's
writes and the API server sees one set of requests.  The algorithm is client-go's ``leaderelection``
with a ``LeaseLock``, written here on the raw Lease API because the ``kubernetes`` package's own
elector runs in a thread with no way to stop it or to release the lease, and reports loss only
after the fact:

* **Acquire**: read the Lease; take it (``PUT`` carrying the ``resourceVersion`` just read, so two
  candidates cannot both win: the second gets 409) when it has no holder, is ours, or its record
  has not changed for ``leaseDurationSeconds`` *as observed on this replica's monotonic clock*
  (never by comparing wall clocks across nodes).  Create it when absent.
* **Renew** every ``retry_period`` while leading.
* **Lose at once**: ``is_leader`` is false as soon as ``renew_deadline`` has passed since the
  last successful renewal began, even while a renewal request hangs, so a writer that checks it
  before each write never writes after the point where another replica may take over
  (``renew_deadline`` < ``lease_duration``, and the others count from when they *saw* our renewal,
  which is later than when we sent it).  A renewal that finds another holder steps down at once.
* **Take over** within ``lease_duration`` (+ one ``retry_period``) of the leader's last renewal;
  at once when the leader released the lease on a clean stop (empty holder).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)

LEASE_API = "/apis/coordination.k8s.io/v1"
DEFAULT_LEASE_NAME = "istiod-lite-leader"
_SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace() -> str:
    """The pod's namespace in a cluster (``POD_NAMESPACE``, else the service account's), else istio-system."""
    ns = os.environ.get("POD_NAMESPACE", "")
    if not ns:
        with contextlib.suppress(OSError):
            ns = _SA_NAMESPACE_FILE.read_text().strip()
    return ns or "istio-system"


def default_identity() -> str:
    """Pod name (``POD_NAME`` or the hostname) and a random suffix: a restarted pod with the same
    name is a new candidate, never mistaken for the holder it replaced."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaderElectionOptions:
    namespace: str = "istio-system"
    name: str = DEFAULT_LEASE_NAME
    #: Holder identity; "" = ``default_identity()``.
    identity: str = ""
    #: Kubernetes' defaults (kube-controller-manager, client-go): 15 s / 10 s / 2 s.
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: On ``stop()``, clear the holder so another replica takes over at once.
    release_on_stop: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


def _micro_time() -> str:
    """A ``MicroTime`` (RFC 3339, microseconds) for ``acquireTime``/``renewTime``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """See the module docstring.  ``run()`` on the event loop; ``is_leader`` may be read from any thread."""

    def __init__(self, api_client: Any, options: LeaderElectionOptions, *,
                 on_started: Callable[[], None] | None = None, on_stopped: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, registry: CollectorRegistry | None = None) -> None:
        self._api = api_client
        self.options = options
        self.identity = options.identity or default_identity()
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._clock = clock
        self._leading = False
        self._renewed_at = -math.inf  # monotonic time the last successful renewal was started
        #: The Lease as last seen (holder, renewTime, resourceVersion), and when it was first seen so.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        self._lease: dict[str, Any] | None = None  # the stored Lease after our last write
        self._stop = asyncio.Event()
        self._round: asyncio.Future[bool] | None = None  # the request in flight, if any
        self.transitions = 0  # times this replica became leader (for tests and logs)
        if registry is not None:  # read at scrape time: exact even while a renewal hangs
            Gauge("istiod_lite_leader", "1 while this replica holds the leader Lease (only the leader writes to "
                  "the cluster), else 0.", registry=registry).set_function(lambda: float(self.is_leader))

    @property
    def is_leader(self) -> bool:
        """True only while the lease is ours and was renewed within ``renew_deadline``."""
        return self._leading and self._clock() < self._renewed_at + self.options.renew_deadline

    @property
    def _path(self) -> str:
        return f"{LEASE_API}/namespaces/{self.options.namespace}/leases"

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Acquire, renew, step down, try again; until ``stop()``."""
        log.info("leader election: candidate %s for Lease %s/%s", self.identity, self.options.namespace,
                 self.options.name)
        while not self._stop.is_set():
            started = self._clock()
            try:
                self._round = asyncio.ensure_future(asyncio.to_thread(self._try_acquire_or_renew, started))
                held = await asyncio.shield(self._round)
            except Exception as exc:  # API server unreachable, 5xx: keep the lease until the deadline
                log.warning("leader election: %s", exc)
                held = None
            if self._stop.is_set():
                break
            if held:
                self._renewed_at = started
                if not self._leading:
                    self._leading = True
                    self.transitions += 1
                    log.info("leader election: %s is now the leader", self.identity)
                    self._notify(self._on_started)
            elif self._leading and (held is False or not self.is_leader):
                self._step_down("another replica holds the lease" if held is False
                                else f"not renewed within {self.options.renew_deadline:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._delay())

    def _delay(self) -> float:
        """Renew every retry period; a candidate retries with jitter (as client-go), a leader near its
        deadline never sleeps past it."""
        period = self.options.retry_period
        if not self._leading:
            return period * (1 + 0.2 * secrets.randbelow(1000) / 1000)
        return max(0.0, min(period, self._renewed_at + self.options.renew_deadline - self._clock()))

    async def stop(self, *, release: bool | None = None) -> None:
        """Stop competing.  Writes stop at once; with ``release`` (default: the option), the lease
        is handed back so another replica need not wait for it to expire."""
        self._stop.set()
        was_leading = self._leading
        if was_leading:
            self._step_down("stopping")
        if was_leading and (self.options.release_on_stop if release is None else release):
            if self._round is not None and not self._round.done():  # a renewal landing after would undo it
                await asyncio.wait([self._round], timeout=self.options.renew_deadline)
            try:
                await asyncio.to_thread(self._release)
            except Exception as exc:
                log.warning("leader election: releasing the lease: %s", exc)

    def _step_down(self, why: str) -> None:
        self._leading = False
        self._renewed_at = -math.inf
        log.warning("leader election: %s is no longer the leader (%s)", self.identity, why)
        self._notify(self._on_stopped)

    @staticmethod
    def _notify(callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("leader election: callback failed")

    # -- one round (a worker thread) -------------------------------------------------------------
    def _try_acquire_or_renew(self, now: float) -> bool:
        """True when the lease is ours after this round; False when another replica holds it."""
        status, lease = self._call("GET", f"{self._path}/{self.options.name}")
        if status == 404:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.options.name, "namespace": self.options.namespace},
                    "spec": self._spec(None)}
            status, created = self._call("POST", self._path, body)
            if status == 409:  # another candidate created it first
                return False
            if status != 201:
                raise RuntimeError(f"creating Lease {self.options.namespace}/{self.options.name}: HTTP {status}")
            self._lease = created
            return True
        if status != 200:
            raise RuntimeError(f"reading Lease {self.options.namespace}/{self.options.name}: HTTP {status}")
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""),
                  str(meta.get("resourceVersion") or ""))
        if record != self._observed:  # counted from when we saw it, the latest it can have been written
            self._observed, self._observed_at = record, self._clock()
        holder = record[0]
        duration = float(spec.get("leaseDurationSeconds") or self.options.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False
        body = {**lease, "spec": self._spec(spec)}
        status, updated = self._call("PUT", f"{self._path}/{self.options.name}", body)
        if status == 409:  # someone wrote the lease since we read it
            return False
        if status != 200:
            raise RuntimeError(f"updating Lease {self.options.namespace}/{self.options.name}: HTTP {status}")
        self._lease = updated
        up_meta = updated.get("metadata") or {}
        self._observed = (self.identity, str((updated.get("spec") or {}).get("renewTime") or ""),
                          str(up_meta.get("resourceVersion") or ""))
        self._observed_at = now
        return True

    def _spec(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time()
        ours = old is not None and old.get("holderIdentity") == self.identity
        transitions = int((old or {}).get("leaseTransitions") or 0)
        if old is not None and not ours:
            transitions += 1
        return {"holderIdentity": self.identity, "leaseDurationSeconds": math.ceil(self.options.lease_duration),
                "acquireTime": old.get("acquireTime") if ours and old is not None else now,
                "renewTime": now, "leaseTransitions": transitions}

    def _release(self) -> None:
        """Clear the holder (client-go's ReleaseOnCancel), only if the lease is still as we wrote it."""
        if self._lease is None:
            return
        spec = dict(self._lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        now = _micro_time()
        spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=now, renewTime=now)
        status, _ = self._call("PUT", f"{self._path}/{self.options.name}", {**self._lease, "spec": spec})
        if status == 200:
            log.info("leader election: %s released the lease", self.identity)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """One request through the ``kubernetes`` client: (HTTP status, answer object)."""
        method, url, hdrs, _body, _post = self._api.param_serialize(
            method, path, header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self._api.call_api(method, url, header_params=hdrs, body=body,
                                  _request_timeout=max(0.5, self.options.renew_deadline / 2))
        raw = resp.response
        try:
            data = raw.read().decode("utf-8", "replace")
        finally:
            raw.release_conn()
        answer = json.loads(data) if data else {}
        return int(resp.status), answer if isinstance(answer, dict) else {}
