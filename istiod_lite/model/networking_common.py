"""Pieces shared by the networking.istio.io kinds: small messages and Istio's string checks.

The checks follow Istio's admission webhook (``pkg/config/validation/validation.go`` and
``validation/agent/validation.go``) and the CEL rules of its CRDs; messages keep Istio's wording
where it reads well after a field path.  Each ``check_*`` helper returns an error message or
``None`` so that a model validator can collect them and raise once.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from istiod_lite.model.base import IstioModel
from istiod_lite.model.types import (
    Duration,
    Percentage,
    PortNumber,
    PositiveDuration,
    RE2Regex,
    _check_re2,
    bounded_int,
)

#: protobuf uint32 (CRD ``minimum: 0, maximum: 4294967295``).
UInt32 = Annotated[int, bounded_int(0, 2**32 - 1)]


def _check_ms_precision(d: Duration) -> Duration:
    if d.nanos % 1_000_000:
        raise PydanticCustomError("duration", "only durations to ms precision are supported")
    return d


#: Istio's ``ValidateDuration``: at least 1ms and a whole number of milliseconds.
MsDuration = Annotated[PositiveDuration, AfterValidator(_check_ms_precision)]


def _zero_is_unset(v: Any) -> Any:
    return None if v == 0 and not isinstance(v, bool) else v


#: A port in a match: ``0`` means "any port" (proto3 default), anything else must be 1..65535.
MatchPort = Annotated[PortNumber | None, BeforeValidator(_zero_is_unset)]

_DNS_LABEL = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_WILDCARD_LABEL = re.compile(r"^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$")
_QUALIFIED_NAME = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY = re.compile(
    r"^((?:[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)*/)?("
    + _QUALIFIED_NAME
    + ")$"
)
_LABEL_VALUE = re.compile(f"^(?:{_QUALIFIED_NAME})?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~A-Za-z0-9]+$")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS_LABEL.match(value))


def _check_dns_labels(domain: str) -> str | None:
    parts = domain.split(".")
    if parts[-1].isdigit():
        return f"domain name {domain!r} invalid (top level domain {parts[-1]!r} cannot be all-numeric)"
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None  # a trailing dot ("istio.io.") is allowed
        if not is_dns_label(label):
            return f"domain name {domain!r} invalid (label {label!r} invalid)"
    return None


def _check_domain_length(domain: str) -> str | None:
    if len(domain) > 255:
        return f"domain name {domain!r} too long (max 255)"
    if not domain:
        return "empty domain name not allowed"
    return None


def check_fqdn(domain: str) -> str | None:
    """Istio's ``ValidateFQDN`` (short names are FQDNs of one label; no wildcards)."""
    return _check_domain_length(domain) or _check_dns_labels(domain)


#: Hosts, IPs and label strings repeat across a config's objects (a service's host in its
#: VirtualService hosts, its destinations and its DestinationRule; ``version: v1`` in every
#: subset): the pure string checks below remember their answer for the last spellings seen.
_CHECK_CACHE = 16384


@functools.lru_cache(maxsize=_CHECK_CACHE)
def check_wildcard_domain(domain: str) -> str | None:
    """Istio's ``ValidateWildcardDomain``: an FQDN whose first label may be a wildcard."""
    if err := _check_domain_length(domain):
        return err
    first, _, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.match(first):
        return f"domain name {domain!r} invalid (label {first!r} invalid)"
    return _check_dns_labels(rest) if rest else None


@functools.lru_cache(maxsize=_CHECK_CACHE)
def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_ip_subnet(value: str) -> str | None:
    """An IP address or a CIDR block (``ValidateIPSubnet``)."""
    if value.count("/") == 1:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value} is not a valid CIDR block"
        return None
    return None if is_ip(value) else f"{value} is not a valid IP"


def check_labels(labels: Mapping[str, str]) -> list[str]:
    """Istio's ``labels.Instance.Validate``: Kubernetes label syntax for keys and values."""
    return [e for k, v in labels.items() for e in _check_label(k, v)]


@functools.lru_cache(maxsize=_CHECK_CACHE)
def _check_label(key: str, value: str) -> tuple[str, ...]:
    errs = []
    m = _LABEL_KEY.match(key)
    if not key or m is None or len(m.group(1) or "") > 253 or len(m.group(2)) > 63:
        errs.append(f"invalid tag key: {key!r}")
    if not _LABEL_VALUE.match(value):
        errs.append(f"invalid tag value: {value!r}")
    return tuple(errs)


def check_selector_labels(labels: Mapping[str, str]) -> list[str]:
    """Workload selectors: no empty keys and no ``*`` anywhere."""
    errs = []
    for k, v in labels.items():
        if not k:
            errs.append(f"empty key is not supported in selector: {k}={v}")
        if "*" in k or "*" in v:
            errs.append(f"wildcard is not supported in selector: {k}={v}")
    return errs


def check_export_to(export_to: Iterable[str]) -> list[str]:
    """``validateExportTo`` (the ``.``-equals-own-namespace duplicate needs the namespace; not here)."""
    values = list(export_to)
    errs, seen = [], set()
    for e in values:
        if e in seen:
            errs.append(f"duplicate entries in exportTo for entry {e}")
            continue
        if e not in (".", "*", "~") and not is_dns_label(e):
            errs.append(f"only . or * or ~ or a valid DNS 1123 label is allowed as exportTo entry, got {e!r}")
            continue
        seen.add(e)
    if "*" in seen and len(values) > 1:
        errs.append("cannot have both public (*) and non-public exportTo values for a resource")
    if "~" in seen and len(values) > 1:
        errs.append("cannot export service entry to no one (~) and someone")
    return errs


def is_jwt_claim_header(name: str) -> bool:
    return name.startswith(("@request.auth.claims.", "@request.auth.claims["))


def check_match_header_name(name: str) -> str | None:
    """``ValidateHTTPHeaderNameOrJwtClaimRoute``."""
    if not name:
        return "header name cannot be empty"
    if is_jwt_claim_header(name) or name in _PSEUDO_HEADERS or _HEADER_NAME.match(name):
        return None
    return f"header name {name} is not a valid header name"


def check_header_value(value: str) -> str | None:
    """Envoy header value: no control characters, and every ``%`` either ``%%`` or a closed ``%VAR%``."""
    if _HEADER_VALUE_BAD.search(value):
        return f"header value configuration {value} is invalid"
    i = 0
    while i < len(value):
        if value[i] == "%":
            if value.startswith("%%", i):
                i += 2
                continue
            end = value.find("%", i + 1)
            if end < 0:
                return f"header value configuration: invalid header value {value!r}: unterminated '%'"
            i = end + 1
            continue
        i += 1
    return None


def host_matches(a: str, b: str) -> bool:
    """Istio ``host.Name.Matches``: either name, wildcards included, covers the other."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and bw:
        return b[1:].endswith(a[1:]) if len(a) < len(b) else a[1:].endswith(b[1:])
    if aw:
        return b.endswith(a[1:])
    if bw:
        return a.endswith(b[1:])
    return a == b


def host_subset_of(a: str, b: str) -> bool:
    """Istio ``host.Name.SubsetOf``: every name ``a`` matches is matched by ``b``."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw:
        return bw and a[1:].endswith(b[1:])
    if bw:
        return a.endswith(b[1:])
    return a == b


def fail(errors: list[str]) -> None:
    """Raise one ValueError carrying every message (the error path is the containing object)."""
    if errors:
        raise ValueError("; ".join(errors))


class Percent(IstioModel):
    """Istio ``Percent``: ``{value: 12.5}``."""

    value: Percentage = 0.0


class PortSelector(IstioModel):
    number: PortNumber


class Destination(IstioModel):
    host: str
    subset: str | None = None
    port: PortSelector | None = None

    @property
    def port_number(self) -> int | None:
        return self.port.number if self.port else None

    @model_validator(mode="after")
    def _check(self) -> Destination:
        errs = []
        if self.host == "*":
            errs.append(f"invalid destination host {self.host}")
        elif err := check_wildcard_domain(self.host):
            errs.append(err)
        if self.subset is not None:
            if not self.subset:
                errs.append("subset name cannot be empty")
            elif not is_dns_label(self.subset):
                errs.append(f"subset name is invalid: {self.subset}")
        fail(errs)
        return self


class StringMatch(IstioModel):
    """At most one of ``exact``/``prefix``/``regex``.  An empty match (``{}``) is legal in Istio: on a
    header or query parameter it means "present"."""

    exact: str | None = None
    prefix: str | None = None
    regex: RE2Regex | None = None

    @property
    def is_empty(self) -> bool:
        return self.exact is None and self.prefix is None and self.regex is None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) > 1:
            raise ValueError("only one of exact, prefix or regex may be set")
        if self.regex == "":
            raise ValueError("regex string match should not be empty")
        return self


def _check_re2_or_star(pattern: str) -> str:
    return pattern if pattern == "*" else _check_re2(pattern)


class PresenceStringMatch(StringMatch):
    """``withoutHeaders`` values: ``regex: "*"`` is Istio's "header present" marker, not a regex."""

    regex: Annotated[str, AfterValidator(_check_re2_or_star)] | None = None


class WorkloadSelector(IstioModel):
    """``networking.v1alpha3.WorkloadSelector`` (ServiceEntry): ``labels``."""

    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> WorkloadSelector:
        fail(check_selector_labels(self.labels))
        return self


class MatchLabelsSelector(IstioModel):
    """``type.v1beta1.WorkloadSelector`` (DestinationRule): ``matchLabels``."""

    match_labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> MatchLabelsSelector:
        fail(check_selector_labels(self.match_labels))
        return self


__all__ = [
    "Destination",
    "MatchLabelsSelector",
    "MatchPort",
    "MsDuration",
    "Percent",
    "PortSelector",
    "PresenceStringMatch",
    "StringMatch",
    "UInt32",
    "WorkloadSelector",
]
