"""A fake Kubernetes API server on 127.0.0.1, for code that talks to a cluster with the real client.

The one stand-in for a cluster the tests allow: the real ``kubernetes`` Python client (or anything
else speaking HTTP) connects to it over plain HTTP with a bearer token, using a kubeconfig written
by ``write_kubeconfig``.  It runs ``http.server`` in a background thread, so it serves synchronous
callers (the kubernetes client blocks) as well as code on an event loop::

    with FakeKubeApiServer() as kube:
        kube.add_token("t1", FakeTokenUser.service_account("default", "sleep"))
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        ...
        assert kube.token_reviews()[0]["spec"]["audiences"] == ["istio-ca"]

Served today: ``POST /apis/authentication.k8s.io/v1/tokenreviews``, answered as a kube-apiserver
answers it (201 with a ``TokenReview`` whose ``status`` says who the token is; an unknown token
or a token without a requested audience is ``authenticated: false`` with an ``error``).  Every
request is recorded (``requests``), before any injected delay, so a test can assert what was sent
even when the client gave up.  Faults: ``fail_status`` answers every request with that HTTP status
(a ``Status`` object, as the API server does) and ``delay`` holds every answer that many seconds.

Resources (for the Kubernetes config source): every kind in ``RESOURCES`` is served at its real
REST path (``/api/v1/pods``, ``/apis/networking.istio.io/v1/virtualservices``, namespaced
``.../namespaces/NS/...`` too): LIST answers with the store's current ``resourceVersion``; WATCH
(``?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=N``) streams chunked JSON
lines, replaying events newer than RV from the history, then live ones.  Test helpers:
``apply``/``delete`` (bump the version, emit events), ``bookmark`` (BOOKMARK to every open watch),
``drop_watches`` (cut every open stream mid-body, as a dying load balancer does), ``compact``
(versions before now become too old: new watches from them, and optionally the open ones, get an
``ERROR`` event with a 410 ``Status``; ``gone_as_http=True`` answers HTTP 410 instead), and
``missing`` (plural.group names answered 404, a CRD that is not installed).  ``requests`` records
everything; ``resource_requests()`` gives (verb, resource) pairs for RBAC checks.

Server-side apply (for the waypoint controller and the status reporter): ``PATCH`` with
``application/apply-patch+yaml`` and a ``fieldManager`` on ``.../namespaces/NS/PLURAL/NAME`` or
``.../NAME/status`` stores the object (see ``_server_side_apply``; no managedFields; on ``status``,
ownership is tracked per field manager at the granularity of status's top-level keys, and of each
``conditions`` entry by its ``type`` (a list map, as on a real server): a key a
manager applied before and leaves out now is removed unless another manager applied it).  An
apply carrying ``metadata.resourceVersion`` that is not the stored one is 409 Conflict (optimistic
concurrency, as a real server).  ``GET .../namespaces/NS/PLURAL/NAME`` answers the stored object
(404 ``NotFound`` when absent; recorded as ``get``).  ``get``/``objects`` read the store.  ``resource_requests()``
reports such a request as ``patch`` (``plural/status`` for the subresource) plus ``create`` when the
apply created the object, as RBAC authorises it.  Istio kinds, Gateways, Services and Deployments
have a status subresource (``STATUS_SUBRESOURCE``); ``apply`` keeps their stored status when the
applied object has none, and keeps ``metadata.generation`` as a real server does.

Leases (``coordination.k8s.io/v1``, for leader election): ``GET .../namespaces/NS/leases/NAME``,
``POST .../namespaces/NS/leases`` (409 ``AlreadyExists`` when present) and ``PUT .../leases/NAME``
(409 ``Conflict`` when ``metadata.resourceVersion`` is not the stored one, 404 when absent), kept
apart from the watched kinds (nothing watches them); ``lease(ns, name)`` reads one, and
``resource_requests()`` reports them as ``get``/``create``/``update``.

To extend further, register a handler with
``add_route(method, path_regex, handler)``: the handler gets the ``RecordedRequest`` and returns
``(status, json_body)``.  Routes are matched against the path without the query string, in
registration order, before the built-in TokenReview route.
"""

from __future__ import annotations

import http.server
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.ports import check_loopback

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
#: What a kube-apiserver reviews against when ``spec.audiences`` is empty (its own audience).
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
#: The credential the CA (or any client) must present; anything else gets 401.
DEFAULT_CLIENT_TOKEN = "fake-kube-client-token"

Handler = Callable[["RecordedRequest"], tuple[int, Any]]


@dataclass(frozen=True)
class FakeResource:
    """One API resource the fake serves (its own table, independent of the code under test)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """``plural.group`` as RBAC and ``kubectl api-resources`` name it (core: just the plural)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[FakeResource, ...] = (
    FakeResource("", "v1", "namespaces", "Namespace", namespaced=False),
    FakeResource("", "v1", "services", "Service"),
    FakeResource("", "v1", "nodes", "Node", namespaced=False),
    FakeResource("", "v1", "pods", "Pod"),
    FakeResource("", "v1", "serviceaccounts", "ServiceAccount"),
    FakeResource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    FakeResource("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass", namespaced=False),
    FakeResource("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
    FakeResource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    FakeResource("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute"),
    FakeResource("gateway.networking.k8s.io", "v1", "tcproutes", "TCPRoute"),
    FakeResource("gateway.networking.k8s.io", "v1", "tlsroutes", "TLSRoute"),
    FakeResource("networking.istio.io", "v1", "virtualservices", "VirtualService"),
    FakeResource("networking.istio.io", "v1", "destinationrules", "DestinationRule"),
    FakeResource("networking.istio.io", "v1", "serviceentries", "ServiceEntry"),
    FakeResource("networking.istio.io", "v1", "workloadentries", "WorkloadEntry"),
    FakeResource("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy"),
    FakeResource("security.istio.io", "v1", "peerauthentications", "PeerAuthentication"),
    FakeResource("security.istio.io", "v1", "requestauthentications", "RequestAuthentication"),
    FakeResource("telemetry.istio.io", "v1", "telemetries", "Telemetry"),
    # written by the waypoint controller (server-side apply)
    FakeResource("", "v1", "configmaps", "ConfigMap"),
    FakeResource("apps", "v1", "deployments", "Deployment"),
)

#: Resources whose ``status`` is a subresource: an apply to the object ignores ``status`` and an
#: apply to ``.../status`` changes only ``status`` (as on a real API server).
STATUS_SUBRESOURCE = frozenset({"gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io",
                                "deployments.apps", "services"} | {
    r.name for r in RESOURCES if r.group.endswith(".istio.io")})
APPLY_PATCH = "application/apply-patch+yaml"

_RESOURCE_PATH = re.compile(
    r"/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)")
_OBJECT_PATH = re.compile(
    r"/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"/(?P<name>[^/]+)(?:/(?P<sub>status))?")

_LEASE_PATH = re.compile(r"/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases(?:/(?P<name>[^/]+))?")


def _status_fields(applied: dict[str, Any]) -> set[str]:
    """The status fields an apply sets, as server-side apply tracks them: each top-level key, except
    ``conditions`` (a list map keyed by ``type``, as in every Kubernetes status), one per type."""
    out = {k for k in applied if k != "conditions"}
    conds = applied.get("conditions")
    if isinstance(conds, list):
        out |= {f"conditions/{c.get('type')}" for c in conds if isinstance(c, dict)}
    return out


def _remove_status_field(status: dict[str, Any], field: str) -> None:
    if field.startswith("conditions/"):
        kept = [c for c in status.get("conditions") or [] if not (isinstance(c, dict)
                                                                   and f"conditions/{c.get('type')}" == field)]
        if kept:
            status["conditions"] = kept
        else:
            status.pop("conditions", None)
    else:
        status.pop(field, None)


def _merge_conditions(old: Any, applied: list[Any]) -> list[Any]:
    """Applied conditions replace the stored ones of the same ``type``; the others stay."""
    merged = [c for c in (old if isinstance(old, list) else []) if isinstance(c, dict)]
    for c in applied:
        t = c.get("type") if isinstance(c, dict) else None
        idx = next((i for i, o in enumerate(merged) if o.get("type") == t), None)
        if idx is None:
            merged.append(c)
        else:
            merged[idx] = c
    return merged


class _Server(http.server.ThreadingHTTPServer):
    #: A watching client opens one connection per kind at once; the default backlog of 5 drops SYNs
    #: and turns each burst into 1 s TCP retransmits.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up (a closed watch) is normal here, not a traceback on stderr."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Stream:
    """A watch answer: the handler streams what ``events`` yields, in chunks, until it ends."""

    def __init__(self, initial: list[dict[str, Any] | str], deadline: float) -> None:
        self.events: queue.Queue[dict[str, Any] | str] = queue.Queue()
        for ev in initial:
            self.events.put(ev)
        self.deadline = deadline


_DROP = "drop"  # sentinel: cut the connection without finishing the chunked body
_END = "end"  # sentinel: finish the body cleanly (server-side watch timeout)


@dataclass(frozen=True)
class FakeTokenUser:
    """What the fake API server knows about one token.

    ``audiences`` are the token's own ``aud``; a review succeeds when they meet the requested
    ``spec.audiences`` (the API server's audience if none is requested) and answers the
    intersection, as a real API server does.  ``status_audiences`` overrides that answer
    verbatim (with ``authenticated: true``): a misbehaving or audience-unaware authenticator.
    """

    username: str
    groups: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ("istio-ca",)
    authenticated: bool = True
    status_audiences: tuple[str, ...] | None = None
    uid: str = ""
    extra: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def service_account(cls, namespace: str, name: str, *, audiences: Sequence[str] = ("istio-ca",),
                        pod: str | None = None) -> FakeTokenUser:
        """A projected service-account token, with the groups and extras a real cluster reports."""
        extra = {"authentication.kubernetes.io/pod-name": [pod]} if pod else {}
        return cls(username=f"system:serviceaccount:{namespace}:{name}",
                   groups=(SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}", "system:authenticated"),
                   audiences=tuple(audiences), uid=f"uid-{namespace}-{name}", extra=extra)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any


def _status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeKubeApiServer:
    """See the module docstring.  Thread-safe; start with ``start()`` or ``with``."""

    def __init__(self, *, client_token: str = DEFAULT_CLIENT_TOKEN, host: str = "127.0.0.1") -> None:
        self.client_token = client_token
        #: More bearer tokens accepted as clients (several replicas told apart in ``requests``).
        self.client_tokens: set[str] = set()
        self.tokens: dict[str, FakeTokenUser] = {}
        self.requests: list[RecordedRequest] = []
        self.fail_status: int | None = None
        self.delay = 0.0
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.resources = {(r.group, r.version, r.plural): r for r in RESOURCES}
        #: ``plural.group`` names answered 404 (CRDs not installed).
        self.missing: set[str] = set()
        #: Answer too-old watches with HTTP 410 instead of a 200 stream holding an ERROR event.
        self.gone_as_http = False
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource name, ns, name)
        self._rv = 1000
        self._oldest_rv = 0  # watches from a version below this are too old (410)
        self._history: list[tuple[int, str, dict[str, Any]]] = []  # (rv, resource name, event)
        self._watches: list[tuple[str, str | None, _Stream]] = []  # (resource name, namespace, stream)
        #: (verb, ``plural.group``) authorised by server-side applies beyond ``patch``: an apply that
        #: creates the object is also authorised as ``create``, as a kube-apiserver does.
        self._apply_creates: set[tuple[str, str]] = set()
        self._next_cluster_ip = 1
        self._next_uid = 0
        #: (resource name, ns, name) -> field manager -> top-level ``status`` keys it applied.
        self._status_owners: dict[tuple[str, str, str], dict[str, set[str]]] = {}
        #: (namespace, name) -> Lease.
        self._leases: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._httpd = _Server((check_loopback(host), 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> FakeKubeApiServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="fake-kube-apiserver", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeKubeApiServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------------------
    def add_token(self, token: str, user: FakeTokenUser) -> None:
        with self._lock:
            self.tokens[token] = user

    def add_route(self, method: str, path_regex: str, handler: Handler) -> None:
        """Serve ``method`` on paths fully matching ``path_regex`` with ``handler``."""
        with self._lock:
            self._routes.append((method.upper(), re.compile(path_regex), handler))

    def write_kubeconfig(self, path: Path, *, token: str | None = None, context: str = "fake") -> Path:
        """A kubeconfig whose current context reaches this server over HTTP with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": self.client_token if token is None else token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML; no PyYAML dependency here
        return path

    # -- resources ---------------------------------------------------------------------------------
    def _resource_of(self, obj: dict[str, Any]) -> FakeResource:
        for r in self.resources.values():
            if r.api_version == obj["apiVersion"] and r.kind == obj["kind"]:
                return r
        raise KeyError(f"fake API server does not serve {obj['apiVersion']}/{obj['kind']}")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj`` (a new resourceVersion, an ADDED or MODIFIED event); returns it.

        As ``kubectl apply`` of a user's manifest: ``metadata.uid`` and ``metadata.generation`` (unless
        ``obj`` sets them) are the server's: the uid is kept across updates; the generation
        is 1 on create and goes up when anything but metadata and status changes; for a resource with
        a status subresource, an ``obj`` without ``status`` keeps the stored status (one with a
        ``status`` stands for "as some controller left it" and replaces it)."""
        res = self._resource_of(obj)
        meta = dict(obj.get("metadata") or {})
        if res.namespaced:
            meta.setdefault("namespace", "default")
        with self._lock:
            key = (res.name, meta.get("namespace", ""), meta["name"])
            old = self._objects.get(key)
            if "uid" not in meta:  # the server's: kept across updates, new for a re-created object
                old_uid = ((old or {}).get("metadata") or {}).get("uid")
                if old_uid is None:
                    self._next_uid += 1
                meta["uid"] = old_uid or f"{self._next_uid:08d}-fake-uid-{res.plural}"
            if "generation" not in meta:
                old_gen = int(((old or {}).get("metadata") or {}).get("generation") or 0)
                def body(o: dict[str, Any]) -> dict[str, Any]:
                    return {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}
                meta["generation"] = old_gen if old is not None and body(old) == body(obj) else old_gen + 1
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            stored = {**obj, "metadata": meta}
            if old is not None and "status" not in obj and "status" in old and res.name in STATUS_SUBRESOURCE:
                stored["status"] = old["status"]
            etype = "MODIFIED" if old is not None else "ADDED"
            self._objects[key] = stored
            self._emit(res.name, {"type": etype, "object": stored}, meta.get("namespace", ""))
        return stored

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete an object (a DELETED event carrying its last state at a new version)."""
        res = self._resource_of({"apiVersion": api_version, "kind": kind})
        with self._lock:
            old = self._objects.pop((res.name, namespace if res.namespaced else "", name))
            self._status_owners.pop((res.name, namespace if res.namespaced else "", name), None)
            self._rv += 1
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._rv)}}
            self._emit(res.name, {"type": "DELETED", "object": gone}, namespace)

    def delete_silently(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Remove an object without any watch event (what a client misses while its watch is away);
        the history no longer covers the gap, so resuming from an older version is 410 Gone."""
        res = self._resource_of({"apiVersion": api_version, "kind": kind})
        with self._lock:
            del self._objects[(res.name, namespace if res.namespaced else "", name)]
            self._status_owners.pop((res.name, namespace if res.namespaced else "", name), None)
            self._rv += 1
            self._oldest_rv = self._rv
            self._history.clear()

    def _emit(self, resource: str, event: dict[str, Any], namespace: str) -> None:
        self._history.append((self._rv, resource, event))
        for name, ns, stream in self._watches:
            if name == resource and ns in (None, namespace):
                stream.events.put(event)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def bookmark(self) -> str:
        """Send a BOOKMARK at a new current version to every open watch; returns that version."""
        with self._lock:
            self._rv += 1
            rv = str(self._rv)
            for name, _ns, stream in self._watches:
                r = next(x for x in self.resources.values() if x.name == name)
                stream.events.put({"type": "BOOKMARK", "object": {
                    "apiVersion": r.api_version, "kind": r.kind, "metadata": {"resourceVersion": rv}}})
        return rv

    def drop_watches(self) -> int:
        """Cut every open watch mid-stream (no final chunk); returns how many were cut."""
        with self._lock:
            watches, self._watches = self._watches, []
        for _, _, stream in watches:
            stream.events.put(_DROP)
        return len(watches)

    def end_watches(self) -> int:
        """End every open watch cleanly, as the server-side ``timeoutSeconds`` does."""
        with self._lock:
            watches, self._watches = self._watches, []
        for _, _, stream in watches:
            stream.events.put(_END)
        return len(watches)

    def compact(self, *, expire_open: bool = False) -> None:
        """Forget the history: watches from any older version get 410 Gone.  ``expire_open`` also sends
        the 410 ERROR event to the watches open now (the watch cache dropping them)."""
        with self._lock:
            self._oldest_rv = self._rv  # a fresh list's version is still watchable, as in a real server
            self._history.clear()
            watches = list(self._watches) if expire_open else []
            if expire_open:
                self._watches = []
        for _, _, stream in watches:
            stream.events.put(self._gone_event())
            stream.events.put(_END)

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    @staticmethod
    def _gone_event() -> dict[str, Any]:
        return {"type": "ERROR", "object": _status_object(410, "Expired", "too old resource version")}

    def _serve_resource(self, request: RecordedRequest) -> tuple[int, Any] | None:
        m = _RESOURCE_PATH.fullmatch(request.path)
        if m is None or request.method != "GET":
            return None
        group, version = ("", "v1") if m["cv"] else (m["group"], m["version"])
        res = self.resources.get((group, version, m["plural"]))
        if res is None or res.name in self.missing:
            return 404, _status_object(404, "NotFound", f"the server could not find the requested resource "
                                                        f"({request.path})")
        ns = m["ns"]
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        with self._lock:
            if query.get("watch") in ("1", "true"):
                rv = int(query.get("resourceVersion") or self._rv)
                if rv < self._oldest_rv:
                    if self.gone_as_http:
                        return 410, _status_object(410, "Expired", "too old resource version")
                    return 200, _Stream([self._gone_event(), _END], time.monotonic() + 60)
                initial: list[dict[str, Any] | str] = [
                    ev for erv, name, ev in self._history if name == res.name and erv > rv
                    and ns in (None, ev["object"]["metadata"].get("namespace", ""))]
                timeout = float(query.get("timeoutSeconds") or 1800)
                stream = _Stream(initial, time.monotonic() + timeout)
                self._watches.append((res.name, ns, stream))
                return 200, stream
            items = [obj for (name, ons, _), obj in sorted(self._objects.items())
                     if name == res.name and ns in (None, ons)]
            body = {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(self._rv)},
                    # a real API server omits apiVersion/kind on the items of a list
                    "items": [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]}
            return 200, body

    def resource_requests(self) -> set[tuple[str, str]]:
        """(verb, ``plural.group``) of every request: list, watch, create (TokenReview), for RBAC checks."""
        out: set[tuple[str, str]] = set()
        with self._lock:
            requests = list(self.requests)
        for r in requests:
            if r.method == "POST" and r.path == TOKEN_REVIEW_PATH:
                out.add(("create", "tokenreviews.authentication.k8s.io"))
                continue
            o = _OBJECT_PATH.fullmatch(r.path)
            if r.method == "PATCH" and o is not None:
                group = "" if o["cv"] else o["group"]
                plural = f"{o['plural']}/status" if o["sub"] else o["plural"]
                out.add(("patch", f"{plural}.{group}" if group else plural))
                continue
            if r.method in ("POST", "PUT") and (o is not None or r.method == "POST"):
                target = o or _RESOURCE_PATH.fullmatch(r.path)
                if target is not None:
                    group = "" if target["cv"] else target["group"]
                    verb = "create" if r.method == "POST" else "update"
                    out.add((verb, f"{target['plural']}.{group}" if group else target["plural"]))
                    continue
            if r.method == "GET" and o is not None and not o["sub"]:
                group = "" if o["cv"] else o["group"]
                out.add(("get", f"{o['plural']}.{group}" if group else o["plural"]))
                continue
            m = _RESOURCE_PATH.fullmatch(r.path)
            if m is None:
                continue
            group = "" if m["cv"] else m["group"]
            name = f"{m['plural']}.{group}" if group else m["plural"]
            watch = parse_qs(r.query).get("watch", [""])[-1] in ("1", "true")
            out.add(("watch" if watch else "list", name))
        with self._lock:
            out |= self._apply_creates
        return out

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (None if absent)."""
        res = self._resource_of({"apiVersion": api_version, "kind": kind})
        with self._lock:
            obj = self._objects.get((res.name, namespace if res.namespaced else "", name))
        return json.loads(json.dumps(obj)) if obj is not None else None

    def objects(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        """Every stored object of a kind, sorted by (namespace, name)."""
        res = self._resource_of({"apiVersion": api_version, "kind": kind})
        with self._lock:
            return [json.loads(json.dumps(o)) for (n, _, _), o in sorted(self._objects.items()) if n == res.name]

    def _get_object(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """``GET .../namespaces/NS/PLURAL/NAME``: the stored object, or 404 with a NotFound ``Status``."""
        m = _OBJECT_PATH.fullmatch(request.path)
        if m is None or request.method != "GET" or m["sub"]:
            return None
        group, version = ("", "v1") if m["cv"] else (m["group"], m["version"])
        res = self.resources.get((group, version, m["plural"]))
        if res is None or res.name in self.missing:
            return 404, _status_object(404, "NotFound", f"the server could not find the requested resource "
                                                        f"({request.path})")
        with self._lock:
            obj = self._objects.get((res.name, m["ns"], m["name"]))
            if obj is None:
                return 404, _status_object(404, "NotFound", f'{res.plural} "{m["name"]}" not found')
            return 200, json.loads(json.dumps(obj))

    def _server_side_apply(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """``PATCH`` with ``application/apply-patch+yaml`` on an object or its ``status``.

        Simplified to one field manager: the applied fields replace the stored ones (``metadata``
        merged, server-set fields kept: uid, creationTimestamp, a Service's clusterIP, ``status`` or,
        for ``/status``, everything but ``status``).  Creates the object when absent (201) and
        assigns a clusterIP to a new Service.  An apply that changes nothing keeps the
        resourceVersion and emits no event, as a real server does.
        """
        m = _OBJECT_PATH.fullmatch(request.path)
        if m is None or request.method != "PATCH":
            return None
        group, version = ("", "v1") if m["cv"] else (m["group"], m["version"])
        res = self.resources.get((group, version, m["plural"]))
        if res is None or res.name in self.missing:
            return 404, _status_object(404, "NotFound", f"the server could not find the requested resource "
                                                        f"({request.path})")
        if request.headers.get("content-type", "").split(";")[0].strip() != APPLY_PATCH:
            return 415, _status_object(415, "UnsupportedMediaType",
                                       f"only {APPLY_PATCH} is served here, not {request.headers.get('content-type')}")
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        if not query.get("fieldManager"):
            return 400, _status_object(400, "BadRequest", "fieldManager is required for apply requests")
        body = request.body
        if isinstance(body, str):  # YAML text rather than JSON
            import yaml

            body = yaml.safe_load(body)
        if not isinstance(body, dict):
            return 400, _status_object(400, "BadRequest", "the apply body must be an object")
        meta = body.get("metadata") or {}
        if (body.get("apiVersion"), body.get("kind")) != (res.api_version, res.kind) or meta.get("name") != m["name"] \
                or meta.get("namespace", m["ns"]) != m["ns"]:
            return 400, _status_object(400, "BadRequest", "apiVersion/kind/name/namespace do not match the path")
        key = (res.name, m["ns"], m["name"])
        manager = query["fieldManager"]
        with self._lock:
            old = self._objects.get(key)
            if old is None and m["sub"]:
                return 404, _status_object(404, "NotFound", f'{res.plural} "{m["name"]}" not found')
            want_rv = meta.get("resourceVersion")
            if want_rv and (old is None or old["metadata"].get("resourceVersion") != want_rv):
                return 409, _status_object(409, "Conflict", f'Operation cannot be fulfilled on {res.name} '
                                           f'"{m["name"]}": the object has been modified; please apply your '
                                           f'changes to the latest version and try again')
            meta = {k: v for k, v in meta.items() if k != "resourceVersion"}
            if m["sub"]:
                assert old is not None
                applied = body.get("status") or {}
                if not isinstance(applied, dict):
                    return 400, _status_object(400, "BadRequest", "status must be an object")
                owners = self._status_owners.setdefault(key, {})
                status = dict(old.get("status") or {})
                fields = _status_fields(applied)
                for k in owners.get(manager, set()) - fields:  # no longer applied: removed
                    if not any(k in keys for mgr, keys in owners.items() if mgr != manager):
                        _remove_status_field(status, k)
                for k, v in applied.items():
                    if k == "conditions" and isinstance(v, list):
                        status["conditions"] = _merge_conditions(status.get("conditions"), v)
                    else:
                        status[k] = v
                owners[manager] = fields
                new = {**old, "status": status}
            else:
                old_meta = (old or {}).get("metadata") or {}
                new_meta = {**{k: v for k, v in old_meta.items() if k in ("uid", "creationTimestamp", "generation")},
                            **meta, "namespace": m["ns"]}
                new_meta.setdefault("uid", f"uid-{res.plural}-{m['ns']}-{m['name']}")
                new_meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                new = {k: v for k, v in body.items() if not (k == "status" and res.name in STATUS_SUBRESOURCE)}
                new["metadata"] = new_meta
                if old is not None and "status" in old and res.name in STATUS_SUBRESOURCE:
                    new["status"] = old["status"]
                if res.kind == "Service":
                    spec = dict(new.get("spec") or {})
                    old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
                    if old_ip is None:
                        old_ip = spec.get("clusterIP") or f"10.96.0.{self._next_cluster_ip}"
                        self._next_cluster_ip += 1
                    spec["clusterIP"] = old_ip
                    spec["clusterIPs"] = [old_ip]
                    new["spec"] = spec
            comparable = {**new, "metadata": {k: v for k, v in new["metadata"].items() if k != "resourceVersion"}}
            if old is not None:
                old_cmp = {**old, "metadata": {k: v for k, v in old["metadata"].items() if k != "resourceVersion"}}
                if old_cmp == comparable:
                    return 200, old
            if old is None:
                self._apply_creates.add(("create", res.name))
            self._rv += 1
            new["metadata"] = {**comparable["metadata"], "resourceVersion": str(self._rv)}
            self._objects[key] = new
            self._emit(res.name, {"type": "ADDED" if old is None else "MODIFIED", "object": new}, m["ns"])
            return (201 if old is None else 200), new

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored Lease (None if absent)."""
        with self._lock:
            obj = self._leases.get((namespace, name))
        return json.loads(json.dumps(obj)) if obj is not None else None

    def _serve_lease(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """GET/PUT of ``.../leases/NAME`` and POST of ``.../leases``, with optimistic concurrency."""
        m = _LEASE_PATH.fullmatch(request.path)
        if m is None:
            return None
        ns, name = m["ns"], m["name"]
        with self._lock:
            if request.method == "GET" and name:
                lease = self._leases.get((ns, name))
                if lease is None:
                    return 404, _status_object(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                return 200, json.loads(json.dumps(lease))
            body = request.body
            if request.method not in ("POST", "PUT") or not isinstance(body, dict):
                return 400, _status_object(400, "BadRequest", "a Lease object is required")
            meta = dict(body.get("metadata") or {})
            name = name or str(meta.get("name") or "")
            old = self._leases.get((ns, name))
            if request.method == "POST":
                if old is not None:
                    return 409, _status_object(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" '
                                                                     f'already exists')
            elif old is None:
                return 404, _status_object(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
            elif meta.get("resourceVersion") != old["metadata"]["resourceVersion"]:
                return 409, _status_object(409, "Conflict", f'Operation cannot be fulfilled on '
                                           f'leases.coordination.k8s.io "{name}": the object has been modified; '
                                           f'please apply your changes to the latest version and try again')
            self._rv += 1
            meta.update(name=name, namespace=ns, resourceVersion=str(self._rv))
            meta.setdefault("uid", f"uid-lease-{ns}-{name}")
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                     "spec": json.loads(json.dumps(body.get("spec") or {}))}
            self._leases[(ns, name)] = lease
            return (201 if old is None else 200), json.loads(json.dumps(lease))

    # -- inspection --------------------------------------------------------------------------------
    def token_reviews(self) -> list[Any]:
        """Bodies of the TokenReview requests received so far."""
        with self._lock:
            return [r.body for r in self.requests if r.method == "POST" and r.path == TOKEN_REVIEW_PATH]

    # -- serving -----------------------------------------------------------------------------------
    def _dispatch(self, request: RecordedRequest) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(request)
            routes = list(self._routes)
            fail_status, delay = self.fail_status, self.delay
        if delay:
            time.sleep(delay)
        accepted = {f"Bearer {t}" for t in {self.client_token, *self.client_tokens}}
        if request.headers.get("authorization") not in accepted:
            return 401, _status_object(401, "Unauthorized", "Unauthorized")
        if fail_status is not None:
            return fail_status, _status_object(fail_status, "InternalError", "injected failure")
        for method, pattern, handler in routes:
            if method == request.method and pattern.fullmatch(request.path):
                return handler(request)
        if request.method == "POST" and request.path == TOKEN_REVIEW_PATH:
            return self._token_review(request.body)
        leased = self._serve_lease(request)
        if leased is not None:
            return leased
        served = self._serve_resource(request)
        if served is not None:
            return served
        fetched = self._get_object(request)
        if fetched is not None:
            return fetched
        applied = self._server_side_apply(request)
        if applied is not None:
            return applied
        return 404, _status_object(404, "NotFound", f"the server could not find {request.path}")

    def _token_review(self, body: Any) -> tuple[int, Any]:
        spec = body.get("spec") if isinstance(body, dict) else None
        token = spec.get("token") if isinstance(spec, dict) else None
        if not isinstance(token, str) or not token:
            return 400, _status_object(400, "BadRequest", "token is required for TokenReview in authentication")
        assert isinstance(spec, dict)
        requested = list(spec.get("audiences") or [API_SERVER_AUDIENCE])
        with self._lock:
            user = self.tokens.get(token)
        status: dict[str, Any] = {"user": {}}
        if user is None or not user.authenticated:
            status["error"] = "[invalid bearer token, service account token has been invalidated]"
        elif user.status_audiences is not None:
            status.update(authenticated=True, audiences=list(user.status_audiences), user=self._user(user))
        else:
            common = [a for a in requested if a in user.audiences]
            if common:
                status.update(authenticated=True, audiences=common, user=self._user(user))
            else:
                status["error"] = (f"[invalid bearer token, token audiences {list(user.audiences)} is invalid "
                                   f"for the target audiences {requested}]")
        answer = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                  "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
        return 201, answer

    @staticmethod
    def _user(user: FakeTokenUser) -> dict[str, Any]:
        info: dict[str, Any] = {"username": user.username, "groups": list(user.groups)}
        if user.uid:
            info["uid"] = user.uid
        if user.extra:
            info["extra"] = {k: list(v) for k, v in user.extra.items()}
        return info

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                target = urlsplit(self.path)
                request = RecordedRequest(self.command, target.path, target.query,
                                          {k.lower(): v for k, v in self.headers.items()}, body)
                status, answer = server._dispatch(request)
                if isinstance(answer, _Stream):
                    self._stream(answer)
                    return
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except ConnectionError:  # the client gave up (timeout tests): nothing to answer
                    self.close_connection = True

            def _stream(self, stream: _Stream) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    while True:
                        left = stream.deadline - time.monotonic()
                        if left <= 0:
                            break
                        try:
                            event = stream.events.get(timeout=min(left, 0.05))
                        except queue.Empty:
                            if server._thread is None:  # server stopping
                                break
                            continue
                        if event == _DROP:
                            self.close_connection = True
                            return  # no final chunk: the client sees a broken body
                        if event == _END:
                            break
                        line = json.dumps(event).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (ConnectionError, OSError):
                    self.close_connection = True
                finally:
                    with server._lock:
                        server._watches = [w for w in server._watches if w[2] is not stream]

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return _Handler
