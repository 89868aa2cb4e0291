"""What an HTTP route does besides routing: redirect, direct response, rewrite, retries, fault
injection, mirroring, CORS and header manipulation (VirtualService ``http[]`` actions).

Rules follow Istio's webhook (``validateHTTPRedirect``, ``validateHTTPDirectResponse``,
``validateHTTPRewrite``, ``validateHTTPRetry``, ``validateHTTPFaultInjection``, ``validateCORSPolicy``
and the header checks of ``validateHTTPRoute``).  HTTP status codes are checked against 200..599,
the range Envoy accepts for direct responses and aborts.
"""

from __future__ import annotations

import base64
import binascii
import http
from typing import Annotated, Literal

from pydantic import Field, model_validator

from istiod_lite.model.base import IstioModel
from istiod_lite.model.networking_common import (
    Destination,
    MatchPort,
    MsDuration,
    Percent,
    StringMatch,
    UInt32,
    check_header_value,
    check_match_header_name,
    fail,
)
from istiod_lite.model.types import RE2Regex, bounded_int

StatusCode = Annotated[int, bounded_int(200, 599)]
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024

_RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers", "envoy-ratelimited",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
})
_HTTP_STATUS_CODES = frozenset(s.value for s in http.HTTPStatus)
_GRPC_STATUS = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})
_CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})


def _check_percentage(p: Percent | None) -> list[str]:
    if p is not None and 0.0 < p.value < 0.0001:
        return [f"percentage {p.value} is neither 0.0, nor in range [0.0001, 100.0]"]
    return []


class HeaderOperations(IstioModel):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()


class Headers(IstioModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None

    @model_validator(mode="after")
    def _check(self) -> Headers:
        req, resp = self.request or HeaderOperations(), self.response or HeaderOperations()
        errs = [e for v in (*req.set.values(), *req.add.values(), *resp.set.values(), *resp.add.values())
                if (e := check_header_value(v))]
        for name in (*req.set, *req.add):  # the authority may be set here (checked on the route)
            if not name:
                errs.append("header name cannot be empty")
            elif name.startswith(":") and name.lower() != ":authority":
                errs.append(f'invalid header "{name}": header cannot have ":" prefix')
        for name in (*req.remove, *resp.set, *resp.add, *resp.remove):
            if not name:
                errs.append("header name cannot be empty")
            elif name.lower() == "host":
                errs.append(f'invalid header "{name}": cannot set Host header')
            elif name.startswith(":"):
                errs.append(f'invalid header "{name}": header cannot have ":" prefix')
        fail(errs)
        return self

    def authority(self) -> list[str]:
        """Values that set ``:authority``/``host`` on the request (set, then add)."""
        req = self.request or HeaderOperations()
        return [v for k, v in (*req.set.items(), *req.add.items()) if k.lower() in (":authority", "host")]


class HTTPRedirect(IstioModel):
    uri: str = ""
    authority: str = ""
    port: MatchPort = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirect_code: UInt32 = 0
    #: Istio 1.31: replace the matched prefix instead of the whole path (wins over ``uri``).
    prefix_rewrite: str = ""

    @model_validator(mode="after")
    def _check(self) -> HTTPRedirect:
        if self.port is not None and self.derive_port is not None:
            raise ValueError("only one of port or derivePort may be set")
        if not (self.uri or self.prefix_rewrite or self.authority or self.scheme or self.port is not None
                or self.derive_port):
            raise ValueError("redirect must specify URI, authority, scheme, or port")
        if self.redirect_code and not 300 <= self.redirect_code <= 399:
            raise ValueError(f"{self.redirect_code} is not a valid redirect code, must be 3xx")
        if self.scheme not in ("", "http", "https"):
            raise ValueError('invalid redirect scheme, must be "http" or "https"')
        return self


class HTTPBody(IstioModel):
    string: str | None = None
    bytes_: str | None = Field(default=None, alias="bytes")

    @property
    def content(self) -> bytes:
        if self.bytes_ is not None:
            return base64.b64decode(self.bytes_)
        return (self.string or "").encode()

    @model_validator(mode="after")
    def _check(self) -> HTTPBody:
        if self.string is not None and self.bytes_ is not None:
            raise ValueError("only one of string or bytes may be set")
        if self.bytes_ is not None:
            try:
                base64.b64decode(self.bytes_, validate=True)
            except binascii.Error:
                raise ValueError("bytes must be base64-encoded") from None
        if len(self.content) > MAX_DIRECT_RESPONSE_BODY:
            raise ValueError("large direct_responses may impact control plane performance, must be less than 1MB")
        return self


class HTTPDirectResponse(IstioModel):
    status: StatusCode
    body: HTTPBody | None = None


class Delegate(IstioModel):
    name: str = ""
    namespace: str = ""


class RegexRewrite(IstioModel):
    match: RE2Regex = ""
    rewrite: str = ""


class HTTPRewrite(IstioModel):
    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRewrite:
        rr = self.uri_regex_rewrite
        if self.uri and rr is not None:
            raise ValueError("rewrite may only contain one of URI or UriRegexRewrite")
        if not self.uri and rr is None and not self.authority:
            raise ValueError("rewrite must specify at least one of URI, UriRegexRewrite, or authority")
        if rr is not None and (not rr.match or not rr.rewrite):
            raise ValueError("UriRegexRewrite requires both Rewrite and Match fields to be specified")
        return self


class HTTPRetry(IstioModel):
    attempts: int | None = None
    per_try_timeout: MsDuration | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: MsDuration | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRetry:
        errs = []
        attempts = self.attempts or 0
        if attempts < 0:
            errs.append("attempts cannot be negative")
        if attempts == 0 and (self.per_try_timeout or self.retry_on or self.retry_remote_localities is not None):
            errs.append("http retry policy configured when attempts are set to 0 (disabled)")
        for policy in self.retry_on.split(",") if self.retry_on else ():
            code = int(policy) if policy.lstrip("+-").isdigit() else 0
            if code not in _HTTP_STATUS_CODES and policy not in _RETRY_ON:
                errs.append(f'"{policy}" is not a valid retryOn policy')
        fail(errs)
        return self


class CorsPolicy(IstioModel):
    allow_origin: tuple[str, ...] = ()
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: MsDuration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] = "UNSPECIFIED"

    @model_validator(mode="after")
    def _check(self) -> CorsPolicy:
        errs = ["'' is not a valid match type for CORS allow origins"
                for o in self.allow_origins if not (o.exact or o.prefix or o.regex)]
        errs += [f'"{m}" is not a supported HTTP method' for m in self.allow_methods if m not in _CORS_METHODS]
        for name in (*self.allow_headers, *self.expose_headers):
            if name != "*" and (err := check_match_header_name(name)):
                errs.append(err)
        if self.max_age is not None and self.max_age.subsecond_nanos:
            errs.append("max_age duration is accurate only to seconds precision")
        fail(errs)
        return self


class FaultDelay(IstioModel):
    fixed_delay: MsDuration | None = None
    exponential_delay: MsDuration | None = None
    percentage: Percent | None = None
    #: Deprecated integer percentage (0-100); ``percentage`` wins when both are set.
    percent: int | None = None

    @model_validator(mode="after")
    def _check(self) -> FaultDelay:
        if self.fixed_delay is not None and self.exponential_delay is not None:
            raise ValueError("only one of fixedDelay or exponentialDelay may be set")
        errs = _check_percentage(self.percentage)
        if self.exponential_delay is not None:
            errs.append("exponentialDelay not supported yet")
        fail(errs)
        return self


class FaultAbort(IstioModel):
    http_status: int | None = None
    grpc_status: str | None = None
    http2_error: str | None = Field(default=None, alias="http2Error")
    percentage: Percent | None = None

    @model_validator(mode="after")
    def _check(self) -> FaultAbort:
        if sum(v is not None for v in (self.http_status, self.grpc_status, self.http2_error)) > 1:
            raise ValueError("only one of httpStatus, grpcStatus or http2Error may be set")
        errs = _check_percentage(self.percentage)
        if self.http_status is not None and not 200 <= self.http_status <= 599:
            errs.append(f"HTTP status {self.http_status} is not in range 200-599")
        if self.grpc_status is not None and self.grpc_status not in _GRPC_STATUS:
            errs.append(f"gRPC status {self.grpc_status!r} is not supported, for example use 'NOT_FOUND'")
        if self.http2_error is not None:
            errs.append("HTTP/2 abort fault injection not supported yet")
        fail(errs)
        return self


class HTTPFaultInjection(IstioModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("HTTP fault injection must have an abort and/or a delay")
        return self


class HTTPMirrorPolicy(IstioModel):
    destination: Destination
    percentage: Percent | None = None


__all__ = [
    "CorsPolicy", "Delegate", "FaultAbort", "FaultDelay", "HTTPBody", "HTTPDirectResponse", "HTTPFaultInjection",
    "HTTPMirrorPolicy", "HTTPRedirect", "HTTPRetry", "HTTPRewrite", "HeaderOperations", "Headers", "RegexRewrite",
]
