"""A Kubernetes cluster as the config source: list + watch every kind the model knows.

Why raw REST paths instead of the generated ``CoreV1Api``/``CustomObjectsApi`` methods: the
control plane validates objects with its own models (``parse_object``, exactly like the YAML
source), so the generated client models would only be built to be thrown away; one code path
(``GET <path>`` and ``GET <path>?watch=1``) serves core kinds and CRDs alike.  The real
``kubernetes`` client still does everything else: kubeconfig / in-cluster loading, TLS, auth
(bearer tokens, exec plugins, client certificates) and connection pooling.

Semantics (see docs/kubernetes.md):

* **One thread per kind** (the client is synchronous): list (paginated), then watch from the list's
  ``resourceVersion`` with ``allowWatchBookmarks``; bookmarks and events advance the version, so a
  reconnect after a dropped or timed-out watch resumes where it stopped and never relists.
* **410 Gone** (as HTTP status or as a watch ``ERROR`` event) -> relist; the relist replaces that
  kind's objects, so objects deleted while the watch was away are removed.
* **Errors** -> exponential backoff with jitter (``backoff_initial`` .. ``backoff_max``).  A dropped
  watch or an unreachable API server never removes anything: only a DELETED event or a relist does.
* **CRD not installed** (404 on list) -> logged once, treated as empty, retried every
  ``missing_retry`` seconds (installing Istio or the Gateway API later is picked up).
* **Per-resource last-known-good**: an object that fails validation is reported as a
  ``ConfigError`` (``cluster: Kind ns/name: field.path: message``) and its last valid version keeps
  being served, as the YAML source does; deleting it removes both.
* **Rejections reported on the cluster**: an invalid Istio object gets a condition and a validation
  message in its own ``status`` saying why (``kube_status.StatusReporter``: one writer thread, off
  the hot path, one write per distinct generation and error, cleared when fixed).
* **Ready**: ``load()`` returns only after every kind's initial list has been applied.
* **Exact change sets**: ``changed`` holds only keys whose validated resource differs; an event
  that does not change the validated model (a status update, say) produces no update at all, and
  unchanged resources keep their identity (the translator memoises on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from istiod_lite.model import ConfigError, Resource, ResourceInvalid, ResourceKey, parse_object
from istiod_lite.model.kind_declaration import DeclaredKind, StatusWriter
from istiod_lite.model.registry import declared_kinds, kind_class
from istiod_lite.sources.contract import SourceUpdate, UpdateHandler
from istiod_lite.sources.kube_status import Observation, StatusReporter, StatusReporterOptions
from istiod_lite.sources.publisher import Publisher
from istiod_lite.sources.yamlfile import key_of

log = logging.getLogger(__name__)

#: ``ConfigError.source`` of everything found in the cluster.
CLUSTER_SOURCE = "cluster"


@dataclass(frozen=True)
class KubeKind:
    """One watched resource: where it lives in the API and whether it is a CRD (may be absent)."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True
    #: Defined by a CRD that a cluster may not have installed (404 is tolerated).
    optional: bool = False
    #: Why an invalid object was rejected is written into its status (``kube_status``).
    reports_rejections: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The all-namespaces collection path, e.g. ``/apis/networking.istio.io/v1/virtualservices``."""
        if self.group:
            return f"/apis/{self.group}/{self.version}/{self.plural}"
        return f"/api/{self.version}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        """One object's path, e.g. ``/apis/networking.istio.io/v1/namespaces/NS/virtualservices/NAME``."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        where = f"/namespaces/{namespace}" if self.namespaced else ""
        return f"{prefix}{where}/{self.plural}/{name}"

    @classmethod
    def of(cls, declared: DeclaredKind) -> KubeKind:
        decl = declared.declaration
        return cls(declared.kind, declared.group, declared.version, decl.plural, declared.namespaced,
                   optional=decl.crd, reports_rejections=decl.status is StatusWriter.REJECTIONS)


#: Every kind the control plane reads from a cluster: every registered kind, as declared with its
#: model class (model/kind_declaration.py); deploy/rbac.yaml grants exactly these.
KINDS: tuple[KubeKind, ...] = tuple(KubeKind.of(d) for d in declared_kinds())


@dataclass(frozen=True)
class KubeSourceOptions:
    """How to reach the cluster and how patiently to watch it."""

    #: kubeconfig file; None = in-cluster service-account configuration.
    kubeconfig: Path | None = None
    context: str | None = None
    kinds: tuple[KubeKind, ...] = KINDS
    #: Server-side watch timeout (``timeoutSeconds``); jittered by up to +10 % to spread relists.
    watch_timeout: float = 300.0
    list_page_size: int = 500
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: How often a kind whose CRD is missing (404) is listed again.
    missing_retry: float = 60.0
    connect_timeout: float = 10.0
    #: ``load()`` gives up (TimeoutError) after this long; None = wait for the cluster forever.
    sync_timeout: float | None = None
    #: Write why an Istio object was rejected into its ``status`` (needs ``patch`` on ``*/status``).
    report_status: bool = True
    status_reporter: StatusReporterOptions = field(default_factory=StatusReporterOptions)


class _Gone(Exception):
    """410: the resourceVersion is too old; the kind must be listed again."""


class _NotFound(Exception):
    """404 on the collection: the CRD is not installed."""


class _HttpError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


@dataclass(frozen=True)
class _Relist:
    kind: KubeKind
    items: tuple[dict[str, Any], ...]
    missing: bool = False


@dataclass(frozen=True)
class _Event:
    kind: KubeKind
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]


_Message = _Relist | _Event


def api_client_for(options: KubeSourceOptions) -> Any:
    """A ``kubernetes`` ApiClient from the kubeconfig or the in-cluster configuration.

    Raises ``ValueError`` for an unusable configuration.  Retries are off: this module does its
    own backoff, and urllib3's retries would hide a dropped watch behind a silent replay.
    """
    from kubernetes import client
    from kubernetes import config as kube_config_module

    kube_config: Any = kube_config_module  # untyped loaders
    configuration = client.Configuration()
    try:
        if options.kubeconfig is None:
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            kube_config.load_kube_config(config_file=str(options.kubeconfig), context=options.context,
                                         client_configuration=configuration, persist_config=False)
    except kube_config.ConfigException as exc:
        raise ValueError(f"Kubernetes source: {options.kubeconfig or 'in-cluster configuration'}: {exc}") from exc
    configuration.retries = 0
    # one long-lived watch per kind plus lists: a smaller pool would discard and reconnect
    configuration.connection_pool_maxsize = len(options.kinds) + 4
    return client.ApiClient(configuration)


def _error_order(err: ConfigError) -> tuple[str, str, str, str, str]:
    return (err.kind, err.namespace, err.name, err.field_path, err.message)


class KubeSource:
    """Serves every watched object of a cluster.  ``load`` syncs once; ``run`` follows the watches."""

    def __init__(self, options: KubeSourceOptions, *, api_client: Any = None) -> None:
        self.options = options
        self._api = api_client if api_client is not None else api_client_for(options)
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: set[Any] = set()
        self._wake: Callable[[], None] | None = None
        self._lock = threading.Lock()  # the model state below (load() runs in a worker thread)
        self._responses_lock = threading.Lock()
        #: Per kind name, the last resourceVersion the watcher holds (bookmarks included); for tests
        #: and /debug.
        self.resource_versions: dict[str, str] = {}
        self._missing_logged: set[str] = set()
        # model state; touched only under ``_lock`` by load()/run()
        self._served: dict[ResourceKey, Resource] = {}
        self._errors: dict[ResourceKey, tuple[ConfigError, ...]] = {}
        self._raw_rv: dict[ResourceKey, str] = {}
        self._synced: set[str] = set()
        self._dirty: set[ResourceKey] = set()
        self._publisher = Publisher(log, "cluster config", _error_order)
        #: Writes rejections into Istio objects' status (None when ``report_status`` is off).
        self.status_reporter: StatusReporter | None = (
            StatusReporter(self._api, options.status_reporter) if options.report_status else None)

    @property
    def current(self) -> SourceUpdate | None:
        return self._publisher.current

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one list/watch thread per kind (idempotent)."""
        if self._threads:
            return
        if self.status_reporter is not None:
            self.status_reporter.start()
        for kind in self.options.kinds:
            t = threading.Thread(target=self._run_kind, args=(kind,), name=f"kube-watch-{kind.plural}", daemon=True)
            self._threads.append(t)
            t.start()

    def close(self) -> None:
        """Stop the watch threads (they are daemons: a blocked read never holds up shutdown)."""
        self._stop.set()
        with self._responses_lock:
            responses = list(self._responses)
        for resp in responses:
            with contextlib.suppress(Exception):
                resp.shutdown()
        deadline = time.monotonic() + 2.0
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.status_reporter is not None:
            self.status_reporter.close(timeout=max(0.0, deadline - time.monotonic()))

    def load(self) -> SourceUpdate:
        """Start the watchers if needed and block until every kind's initial list is applied."""
        self.start()
        deadline = None if self.options.sync_timeout is None else time.monotonic() + self.options.sync_timeout
        wanted = {k.kind for k in self.options.kinds}
        with self._lock:
            while not wanted <= self._synced:
                if self._stop.is_set():
                    raise RuntimeError("Kubernetes source closed before the initial sync completed")
                timeout = 1.0 if deadline is None else deadline - time.monotonic()
                if timeout <= 0:
                    missing = ", ".join(sorted(wanted - self._synced))
                    raise TimeoutError(f"Kubernetes source: initial list not complete for {missing}")
                try:
                    msg = self._queue.get(timeout=min(timeout, 1.0))
                except queue.Empty:
                    continue
                self._apply(msg)
            self._drain()
            return self._publish()

    async def run(self, on_update: UpdateHandler) -> None:
        """Follow the watches until cancelled, publishing one update per batch of events."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        self._wake = wake_up
        try:
            if self.current is None:
                await self._publisher.hand_over(on_update, await asyncio.to_thread(self.load))
            while True:
                wake.clear()
                with self._lock:
                    update = self._publish_new() if self._drain() else None
                if update is not None:
                    await self._publisher.hand_over(on_update, update)
                await wake.wait()
        finally:
            self._wake = None
            await asyncio.to_thread(self.close)

    # -- watch threads -----------------------------------------------------------------------------
    def _post(self, msg: _Message) -> None:
        self._queue.put(msg)
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                wake()

    def _run_kind(self, kind: KubeKind) -> None:
        rv: str | None = None
        backoff = self.options.backoff_initial
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = self._list(kind)
                    self._missing_logged.discard(kind.kind)
                    self.resource_versions[kind.kind] = rv
                    self._post(_Relist(kind, tuple(items)))
                    backoff = self.options.backoff_initial
                started = time.monotonic()
                rv, events = self._watch(kind, rv)
                if events or time.monotonic() - started > 5.0:
                    backoff = self.options.backoff_initial
                    continue
                # A watch that ends at once without events: do not hammer the API server.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.options.backoff_max)
            except _Gone:
                log.info("%s: resourceVersion %s expired (410 Gone); listing again", kind.kind, rv)
                rv = None
            except _NotFound:
                if kind.kind not in self._missing_logged:
                    # a missing CRD is normal (no Gateway API yet); a missing built-in kind is not
                    log.log(logging.WARNING if kind.optional else logging.ERROR,
                            "%s (%s) is not served by the cluster (CRD not installed?); treating it as "
                            "empty and retrying every %gs", kind.kind, kind.path, self.options.missing_retry)
                    self._missing_logged.add(kind.kind)
                self._post(_Relist(kind, (), missing=True))  # a deleted CRD deletes its objects too
                rv = None
                self._stop.wait(self.options.missing_retry)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if rv is not None:  # resume from the newest event or bookmark the broken watch delivered
                    rv = self.resource_versions.get(kind.kind) or rv
                delay = backoff * random.uniform(0.8, 1.2)
                log.warning("%s: %s %s; retrying in %.1fs (keeping the current config)", kind.kind,
                            "list failed:" if rv is None else "watch failed:", exc, delay)
                self._stop.wait(delay)
                backoff = min(backoff * 2, self.options.backoff_max)

    def _request(self, path: str, query: list[tuple[str, str]], read_timeout: float) -> Any:
        method, url, headers, _body, _post = self._api.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = self._api.call_api(method, url, header_params=headers,
                                  _request_timeout=(self.options.connect_timeout, read_timeout))
        raw = resp.response
        if resp.status == 200:
            return raw
        try:
            body = raw.read().decode("utf-8", "replace")
        finally:
            raw.release_conn()
        if resp.status == 410:
            raise _Gone(body)
        if resp.status == 404:
            raise _NotFound(body)
        raise _HttpError(resp.status, body)

    def _list(self, kind: KubeKind) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = [("limit", str(self.options.list_page_size))]
            if cont:
                query.append(("continue", cont))
            raw = self._request(kind.path, query, 60.0)
            try:
                body = json.loads(raw.read())
            finally:
                raw.release_conn()
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def _watch(self, kind: KubeKind, rv: str) -> tuple[str, int]:
        """Watch from ``rv`` until the stream ends; returns the newest version and the event count."""
        timeout = self.options.watch_timeout * random.uniform(1.0, 1.1)
        query = [("watch", "1"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(int(timeout)))]
        raw = self._request(kind.path, query, timeout + 30.0)
        with self._responses_lock:
            self._responses.add(raw)
            stopping = self._stop.is_set()  # close() sets it before collecting the responses to cut
        events = 0
        try:
            if stopping:
                return rv, events
            for line in _lines(raw):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone(obj.get("message", ""))
                    raise _HttpError(int(obj.get("code") or 500), str(obj.get("message", "")))
                new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(_Event(kind, etype, obj))
                    events += 1
                elif etype != "BOOKMARK":
                    log.warning("%s: unknown watch event type %r ignored", kind.kind, etype)
                    continue
                rv = new_rv
                self.resource_versions[kind.kind] = rv
        finally:
            with self._responses_lock:
                self._responses.discard(raw)
            with contextlib.suppress(Exception):
                raw.release_conn()
        return rv, events

    # -- model state (under _lock) ------------------------------------------------------------------
    def _drain(self) -> bool:
        had = False
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                return had
            self._apply(msg)
            had = True

    def _apply(self, msg: _Message) -> None:
        if isinstance(msg, _Event):
            if msg.type == "DELETED":
                key = _key(msg.kind, msg.obj)
                if key is not None:
                    self._forget(key)
            else:
                self._upsert(msg.kind, msg.obj)
            return
        seen: set[ResourceKey] = set()
        for obj in msg.items:
            key = self._upsert(msg.kind, obj)
            if key is not None:
                seen.add(key)
        for key in [k for k in (*self._raw_rv, *self._served) if k.kind == msg.kind.kind and k not in seen]:
            self._forget(key)
        self._synced.add(msg.kind.kind)

    def _forget(self, key: ResourceKey) -> None:
        self._served.pop(key, None)
        self._errors.pop(key, None)
        self._raw_rv.pop(key, None)
        self._dirty.add(key)
        if self.status_reporter is not None:
            self.status_reporter.forget(key)

    def _upsert(self, kind: KubeKind, raw: dict[str, Any]) -> ResourceKey | None:
        rv = str((raw.get("metadata") or {}).get("resourceVersion") or "")
        obj = _normalise(kind, raw)
        key = _key(kind, obj)
        if key is None:
            log.warning("%s without a name ignored", kind.kind)
            return None
        if rv and self._raw_rv.get(key) == rv:
            return key  # a relist re-delivers unchanged objects: nothing to re-validate
        self._raw_rv[key] = rv
        self._dirty.add(key)
        try:
            res = parse_object(obj, source=CLUSTER_SOURCE)
        except ResourceInvalid as exc:
            self._errors[key] = tuple(exc.errors)  # the last valid version (if any) stays served
        except Exception as exc:  # validators are code too: contain anything
            self._errors[key] = (ConfigError(f"validation failed: {exc!r}", source=CLUSTER_SOURCE, kind=key.kind,
                                             namespace=key.namespace, name=key.name),)
        else:
            self._served[key] = res
            self._errors.pop(key, None)
        if self.status_reporter is not None and kind.reports_rejections:
            self._report(kind, key, raw, rv)
        return key

    def _report(self, kind: KubeKind, key: ResourceKey, raw: dict[str, Any], rv: str) -> None:
        """Hand this version's verdict to the status reporter (a dict insert; the writing is elsewhere)."""
        assert self.status_reporter is not None
        meta = raw.get("metadata") or {}
        generation = meta.get("generation")
        self.status_reporter.observe(Observation(
            key=key, api_version=kind.api_version, path=kind.object_path(key.namespace, key.name),
            uid=str(meta.get("uid") or ""), resource_version=rv,
            generation=generation if isinstance(generation, int) else None, status=raw.get("status"),
            errors=self._errors.get(key, ()), served=key in self._served))

    def _publish(self) -> SourceUpdate:
        """Every served object and current error; only the objects touched since the last publish
        can have changed (the publisher keeps the identity of unchanged ones in ``_served``)."""
        return self._publisher.publish(self._served, self._error_tuple(), self._take_dirty())

    def _publish_new(self) -> SourceUpdate | None:
        return self._publisher.publish_new(self._served, self._error_tuple(), self._take_dirty())

    def _take_dirty(self) -> set[ResourceKey]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def _error_tuple(self) -> tuple[ConfigError, ...]:
        return tuple(sorted((e for errs in self._errors.values() for e in errs), key=_error_order))


def _normalise(kind: KubeKind, obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server sends -> what ``parse_object`` validates.

    List items carry no apiVersion/kind; ``status`` is written by controllers (never by users) and
    dropped unless the model reads it, so a strict Istio kind does not reject a status it ignores.
    ``resourceVersion`` (bumped by every write, status included) and ``managedFields`` are dropped
    so that a write that changes nothing the model reads compares equal and publishes nothing.
    """
    out = {**obj, "apiVersion": kind.api_version, "kind": kind.kind}
    meta = out.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = {k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")}
    cls = kind_class(kind.kind)
    if "status" in out and (cls is None or "status" not in cls.model_fields):
        del out["status"]
    return out


def _key(kind: KubeKind, obj: dict[str, Any]) -> ResourceKey | None:
    return key_of({**obj, "kind": kind.kind})


def _lines(raw: Any) -> Iterator[str]:
    """Newline-delimited JSON from a chunked watch response (events may span chunks)."""
    buf = bytearray()
    for chunk in raw.stream(amt=None, decode_content=False):
        buf.extend(chunk)
        while (nl := buf.find(b"\n")) != -1:
            line = bytes(buf[:nl]).strip()
            del buf[: nl + 1]
            if line:
                yield line.decode("utf-8", "replace")
    if buf.strip():
        yield bytes(buf).decode("utf-8", "replace")
