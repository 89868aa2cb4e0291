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

To extend (GET/LIST of core resources for the Kubernetes source, say), register a handler with
``add_route(method, path_regex, handler)``: the handler gets the ``RecordedRequest`` and returns
``(status, json_body)``.  Routes are matched against the path without the query string, in
registration order, before the built-in TokenReview route.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from tests.support.ports import check_loopback

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
#: What a kube-apiserver reviews against when ``spec.audiences`` is empty (its own audience).
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
#: The credential the CA (or any client) must present; anything else gets 401.
DEFAULT_CLIENT_TOKEN = "fake-kube-client-token"

Handler = Callable[["RecordedRequest"], tuple[int, Any]]


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
        self.tokens: dict[str, FakeTokenUser] = {}
        self.requests: list[RecordedRequest] = []
        self.fail_status: int | None = None
        self.delay = 0.0
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer((check_loopback(host), 0), self._handler_class())
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
        if request.headers.get("authorization") != f"Bearer {self.client_token}":
            return 401, _status_object(401, "Unauthorized", "Unauthorized")
        if fail_status is not None:
            return fail_status, _status_object(fail_status, "InternalError", "injected failure")
        for method, pattern, handler in routes:
            if method == request.method and pattern.fullmatch(request.path):
                return handler(request)
        if request.method == "POST" and request.path == TOKEN_REVIEW_PATH:
            return self._token_review(request.body)
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
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except ConnectionError:  # the client gave up (timeout tests): nothing to answer
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return _Handler
