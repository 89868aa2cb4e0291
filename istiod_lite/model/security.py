"""security.istio.io kinds: AuthorizationPolicy, RequestAuthentication, PeerAuthentication (v1, v1beta1).

Fields and names follow istio/api ``security/v1beta1/{authorization_policy,request_authentication,
peer_authentication,jwt}.proto`` and ``type/v1beta1/selector.proto`` as rendered in their CRD schemas
(whose limits and CEL rules are enforced too).  The rules follow Istio's webhook
(``ValidateAuthorizationPolicy``, ``ValidateRequestAuthentication``, ``ValidatePeerAuthentication``
with ``pkg/config/security``'s ``ValidateAttribute``, ``ValidateIPs``, ``ValidatePorts``,
``CheckServiceAccount`` and ``CheckValidPathTemplate``).  Messages keep Istio's wording where it reads
well after a field path, and every error points at the offending field: checks that need the whole
spec (the CUSTOM action's restrictions, for instance) report the nested field they are about.

What Istio leaves to the translator, and so is *not* rejected here: ``*`` inside a principal, host or
path is only a wildcard as the whole value (presence), as a prefix (suffix match) or as a suffix
(prefix match); anywhere else it is a literal character.  Whether a CUSTOM policy's provider exists
in the mesh config, and whether a target reference resolves, are also translation-time questions.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from istiod_lite.model.base import IstioModel, Resource
from istiod_lite.model.kind_declaration import CDS, ECDS, LDS, KindDeclaration, StatusWriter, WaypointRead
from istiod_lite.model.networking_common import MatchLabelsSelector, MsDuration
from istiod_lite.model.registry import register

GROUP: Final = "security.istio.io"
VERSIONS: Final = ("v1", "v1beta1")
#: Only AuthorizationPolicy (ALLOW/DENY) may carry it; its value is a Go ``strconv.ParseBool`` string.
DRY_RUN_ANNOTATION: Final = "istio.io/dry-run"
_GO_BOOLS: Final = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}

Loc = tuple[int | str, ...]


class _Errors:
    """Collects (location, message) pairs and raises them as one ValidationError.

    Raised from a validator, the locations are appended to the validator's own path, so a spec-level
    rule can still name the nested field it is about (``spec.rules[0].from[1].source.namespaces``).
    """

    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, message: str, *loc: int | str) -> None:
        self.items.append((loc, message))

    def raise_any(self, title: str, value: Any) -> None:
        if self.items:
            raise ValidationError.from_exception_data(
                title,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("security", "{message}", {"message": message}), loc=loc, input=value
                    )
                    for loc, message in self.items
                ],
            )


# --- scalar checks (pkg/config/security) ------------------------------------------------------


def _non_empty(message: str = "empty value not allowed") -> Any:
    def check(value: str) -> str:
        if not value:
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _max_items(n: int, message: str) -> Any:
    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(values) > n:
            raise ValueError(message)
        return values

    return AfterValidator(check)


_PREFIX_BITS = re.compile(r"0|[1-9][0-9]{0,2}")


def check_ip_block(value: str) -> str | None:
    """``security.ValidateIPs``: a single IP or a CIDR block, parsed as Go's ``net/netip`` does."""
    if "/" not in value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"bad IP address ({value})"
        return None
    addr, _, bits = value.rpartition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return f"bad CIDR range ({value}): invalid IP address {addr!r}"
    if "%" in addr:
        return f"bad CIDR range ({value}): IPv6 zones cannot be present in a prefix"
    if not _PREFIX_BITS.fullmatch(bits):
        return f"bad CIDR range ({value}): bad bits after slash: {bits!r}"
    if int(bits) > ip.max_prefixlen:
        return f"bad CIDR range ({value}): prefix length out of range"
    return None


_DIGITS = re.compile(r"[0-9]+")


def check_port_string(value: str) -> str | None:
    """``security.ValidatePorts``: a decimal ``uint`` no larger than 65535 (``"0"`` is accepted, as in Istio)."""
    if not _DIGITS.fullmatch(value) or int(value) > 65535:
        return f"bad port ({value}): must be a number between 0 and 65535"
    return None


_SA_FORMAT = "expected format 'serviceAccount' or 'namespace/serviceAccount'"


def check_service_account(value: str) -> str | None:
    """One value of ``security.CheckServiceAccount`` (the 16-value cap is checked on the list)."""
    if not value:
        return "empty value not allowed"
    if "*" in value:
        return "wildcard not allowed"
    if value.count("/") > 1:
        return f'{_SA_FORMAT}, found "{value}"'
    if len(value) > 320:
        return f'value cannot exceed 320 characters, found "{value}"'
    ns, slash, sa = value.partition("/")
    if slash and not ns:
        return f'{_SA_FORMAT}, found empty namespace "{value}"'
    if slash and not sa:
        return f'{_SA_FORMAT}, found empty serviceAccount "{value}"'
    return None


def check_wildcard_value(value: str) -> str | None:
    """``security.CheckWildcardValues``: at most one ``*``, and only as the whole value, a prefix or a suffix."""
    stars = value.count("*")
    if stars > 1:
        return f"at most one wildcard is allowed, found {value!r}"
    if stars == 1 and not (value.startswith("*") or value.endswith("*")):
        return f"wildcard is only allowed at the start or end, found {value!r}"
    return None


def check_trust_domain(value: str) -> str | None:
    """``security.CheckTrustDomainValues`` (``from.source.trustDomains``): a wildcard value without ``/``."""
    if err := check_wildcard_value(value):
        return err
    if "/" in value:
        return f"trust domain must not contain '/', found {value!r}"
    return None


MATCH_ONE_TEMPLATE: Final = "{*}"
MATCH_ANY_TEMPLATE: Final = "{**}"
#: RFC 3986 ``pchar`` (what Envoy's URI template matcher accepts as a literal segment).
_PATH_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")


def is_path_template(path: str) -> bool:
    return MATCH_ONE_TEMPLATE in path or MATCH_ANY_TEMPLATE in path


def check_path_template(path: str) -> str | None:
    """``security.CheckValidPathTemplate``: ``{*}``/``{**}`` are whole segments, ``{**}`` is the last
    operator, no other braces anywhere, and literal segments of a template are RFC 3986 ``pchar``s."""
    template = is_path_template(path)
    trimmed = path.strip("/")
    seen_any = False
    for glob in trimmed.split("/"):
        if glob in (MATCH_ONE_TEMPLATE, MATCH_ANY_TEMPLATE):
            if seen_any:
                return f"invalid or unsupported path {trimmed}: {{**}} is not the last operator"
            seen_any = glob == MATCH_ANY_TEMPLATE
            continue
        if "{" in glob or "}" in glob:
            return f"invalid or unsupported path {trimmed}: contains '{{' or '}}' beyond a supported path template"
        if template and not _PATH_LITERAL.fullmatch(glob):
            return f"invalid or unsupported path {trimmed}: contains segment {glob!r} with invalid string literal"
    return None


def _checked(check: Callable[[str], str | None], *, empty: str | None = "empty value not allowed") -> Any:
    """``Annotated`` validator running ``check`` (which returns an error message or ``None``); an empty
    string is reported as ``empty`` first unless that is ``None``."""

    def run(value: str) -> str:
        if empty is not None and not value:
            raise ValueError(empty)
        if err := check(value):
            raise ValueError(err)
        return value

    return AfterValidator(run)


#: A non-empty match value (``CheckEmptyValues``); ``*`` prefix/suffix/presence semantics apply.
MatchValue = Annotated[str, _non_empty()]
IPBlock = Annotated[str, _checked(check_ip_block)]
PortString = Annotated[str, _checked(check_port_string)]
PathValue = Annotated[str, _checked(check_path_template)]
ServiceAccountValue = Annotated[str, _checked(check_service_account)]
TrustDomainValue = Annotated[str, _checked(check_trust_domain)]
ServiceAccounts = Annotated[
    tuple[ServiceAccountValue, ...], _max_items(16, "may not have more than 16 values")
]


# --- condition keys (security.ValidateAttribute) ------------------------------------------------

#: ``when`` keys that take values of a given shape.
IP_KEYS: Final = frozenset({"source.ip", "remote.ip", "destination.ip"})
PLAIN_KEYS: Final = frozenset({
    "source.namespace", "source.principal", "request.auth.principal", "request.auth.audiences",
    "request.auth.presenter", "connection.sni",
})
#: Keys of the form ``name[sub]``.
MAP_KEY_PREFIXES: Final = (
    "request.headers", "request.experimental.inline.headers", "request.auth.claims", "experimental.envoy.filters.",
)
CONDITION_KEYS: Final = IP_KEYS | PLAIN_KEYS | {"source.serviceAccount", "destination.port", "source.trustDomain"}


def _check_map_key(key: str) -> str | None:
    open_ = key.find("[")
    if key.endswith("]") and 0 < open_ < len(key) - 2:
        return None
    return f"bad key ({key}): should have format a[b]"


def check_condition_key(key: str) -> str | None:
    if not key:
        return "`key` must not be empty"
    if key.startswith(MAP_KEY_PREFIXES):
        return _check_map_key(key)
    if key in CONDITION_KEYS:
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


def _check_condition_value(key: str, value: str) -> str | None:
    if not value:
        return "empty value not allowed"
    if key in IP_KEYS:
        return check_ip_block(value)
    if key == "destination.port":
        return check_port_string(value)
    if key == "source.serviceAccount":
        return check_service_account(value)
    if key == "source.trustDomain":
        return check_wildcard_value(value)
    return None


# --- scope: workload selector and target references (shared by the three kinds) ------------


class PolicyWorkloadSelector(MatchLabelsSelector):
    """``type.v1beta1.WorkloadSelector``: the webhook's checks plus the CRD's limits (at most 4096
    labels, values of at most 63 characters)."""

    @model_validator(mode="after")
    def _check_crd_limits(self) -> PolicyWorkloadSelector:
        errs = _Errors()
        if len(self.match_labels) > 4096:
            errs.add("must have at most 4096 labels", "matchLabels")
        for k, v in self.match_labels.items():
            if len(v) > 63:
                errs.add("label value must be at most 63 characters", "matchLabels", k)
        errs.raise_any("WorkloadSelector", self)
        return self


_GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
#: (canonical group, kind) pairs a policy may target (``allowedTargetRefs`` in Istio's webhook).
ALLOWED_TARGET_KINDS: Final = (
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
)


class PolicyTargetReference(IstioModel):
    """``type.v1beta1.PolicyTargetReference``: the resource a policy attaches to (same namespace only)."""

    group: str = ""
    kind: str
    name: str
    namespace: str = ""

    @property
    def canonical_group(self) -> str:
        return self.group or "core"

    @field_validator("group")
    @classmethod
    def _check_group(cls, v: str) -> str:
        if len(v) > 253 or not _GROUP.match(v):
            raise ValueError(f"group {v!r} must be empty or a DNS subdomain of at most 253 characters")
        return v

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, v: str) -> str:
        if not v or len(v) > 63 or not _KIND.match(v):
            raise ValueError(f"kind {v!r} must be 1-63 letters, digits or '-', starting with a letter")
        return v

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not v:
            raise ValueError("targetRef name must be set")
        if len(v) > 253:
            raise ValueError("must be at most 253 characters")
        return v

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, v: str) -> str:
        if v:
            raise ValueError("cross namespace referencing is not currently supported")
        return v

    @model_validator(mode="after")
    def _check_allowed(self) -> PolicyTargetReference:
        if (self.canonical_group, self.kind) not in ALLOWED_TARGET_KINDS:
            allowed = ", ".join(f"{g}/{k}" for g, k in ALLOWED_TARGET_KINDS)
            raise ValueError(f"targetRef must be to one of {allowed} but was {self.group}/{self.kind}")
        return self


TargetRefs = Annotated[tuple[PolicyTargetReference, ...], Field(max_length=16)]


def _check_one_selector_type(
    errs: _Errors, selector: object | None, target_ref: object | None, target_refs: tuple[Any, ...]
) -> None:
    if (selector is not None) + (target_ref is not None) + bool(target_refs) > 1:
        errs.add("only one of selector, targetRef or targetRefs can be set")


def _targets(
    target_ref: PolicyTargetReference | None, target_refs: tuple[PolicyTargetReference, ...]
) -> tuple[PolicyTargetReference, ...]:
    return target_refs or ((target_ref,) if target_ref is not None else ())


def _reject_dry_run(annotations: Mapping[str, str], kind: str) -> None:
    if DRY_RUN_ANNOTATION in annotations:
        errs = _Errors()
        errs.add(f"{kind} does not support the annotation {DRY_RUN_ANNOTATION}, please remove it",
                 "metadata", "annotations")
        errs.raise_any(kind, annotations)


# --- AuthorizationPolicy ------------------------------------------------------------------------


class Source(IstioModel):
    """``Source``: peer and request identities and addresses; fields are ANDed, values ORed."""

    principals: tuple[MatchValue, ...] = ()
    not_principals: tuple[MatchValue, ...] = ()
    request_principals: tuple[MatchValue, ...] = ()
    not_request_principals: tuple[MatchValue, ...] = ()
    namespaces: tuple[MatchValue, ...] = ()
    not_namespaces: tuple[MatchValue, ...] = ()
    ip_blocks: tuple[IPBlock, ...] = ()
    not_ip_blocks: tuple[IPBlock, ...] = ()
    remote_ip_blocks: tuple[IPBlock, ...] = ()
    not_remote_ip_blocks: tuple[IPBlock, ...] = ()
    service_accounts: ServiceAccounts = ()
    not_service_accounts: ServiceAccounts = ()
    #: The peer's SPIFFE trust domain (``spiffe://<td>/...``); ``*`` wildcards as elsewhere.
    trust_domains: tuple[TrustDomainValue, ...] = ()
    not_trust_domains: tuple[TrustDomainValue, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)

    @model_validator(mode="after")
    def _check(self) -> Source:
        if self.is_empty:
            raise ValueError("`from.source` must not be empty")
        identities = self.principals or self.not_principals or self.namespaces or self.not_namespaces
        if identities and (self.service_accounts or self.not_service_accounts):
            raise ValueError("cannot set serviceAccounts with namespaces or principals")
        return self


class Operation(IstioModel):
    """``Operation``: what the request does; fields are ANDed, values ORed."""

    hosts: tuple[MatchValue, ...] = ()
    not_hosts: tuple[MatchValue, ...] = ()
    ports: tuple[PortString, ...] = ()
    not_ports: tuple[PortString, ...] = ()
    methods: tuple[MatchValue, ...] = ()
    not_methods: tuple[MatchValue, ...] = ()
    paths: tuple[PathValue, ...] = ()
    not_paths: tuple[PathValue, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)

    @model_validator(mode="after")
    def _check(self) -> Operation:
        if self.is_empty:
            raise ValueError("`to.operation` must not be empty")
        return self


class Condition(IstioModel):
    """``Condition`` (a ``when`` entry): an Istio attribute and the values it must (not) have."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @field_validator("key")
    @classmethod
    def _check_key(cls, key: str) -> str:
        if err := check_condition_key(key):
            raise ValueError(err)
        return key

    @field_validator("values", "not_values")
    @classmethod
    def _check_values(cls, values: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        key = info.data.get("key")
        if key is None:  # the key itself was rejected
            return values
        label = "value" if info.field_name == "values" else "notValue"
        errs = _Errors()
        if key == "source.serviceAccount" and len(values) > 16:
            errs.add(f"invalid `{label}` for `key` {key}: may not have more than 16 values")
        for i, value in enumerate(values):
            if err := _check_condition_value(key, value):
                errs.add(f"invalid `{label}` for `key` {key}: {err}", i)
        errs.raise_any("Condition", values)
        return values

    @model_validator(mode="after")
    def _check(self) -> Condition:
        if not self.values and not self.not_values:
            raise ValueError(f"at least one of `values` or `notValues` must be set for key {self.key}")
        return self


class RuleFrom(IstioModel):
    """``Rule.From``."""

    source: Source | None = None

    @model_validator(mode="after")
    def _check(self) -> RuleFrom:
        if self.source is None:
            raise ValueError("`from.source` must not be nil")
        return self


class RuleTo(IstioModel):
    """``Rule.To``."""

    operation: Operation | None = None

    @model_validator(mode="after")
    def _check(self) -> RuleTo:
        if self.operation is None:
            raise ValueError("`to.operation` must not be nil")
        return self


class Rule(IstioModel):
    """A rule matches when one ``from``, one ``to`` and every ``when`` match; an empty rule always matches."""

    from_: Annotated[tuple[RuleFrom, ...], Field(max_length=512)] = Field(default=(), alias="from")
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(f.source for f in self.from_ if f.source is not None)

    @property
    def operations(self) -> tuple[Operation, ...]:
        return tuple(t.operation for t in self.to if t.operation is not None)

    @model_validator(mode="after")
    def _check(self) -> Rule:
        errs = _Errors()
        if "from_" in self.model_fields_set and not self.from_:
            errs.add("`from` must not be empty", "from")
        if "to" in self.model_fields_set and not self.to:
            errs.add("`to` must not be empty", "to")
        errs.raise_any("Rule", self)
        return self


class ExtensionProvider(IstioModel):
    """``AuthorizationPolicy.ExtensionProvider``: a provider named in MeshConfig ``extensionProviders``."""

    name: str = ""


Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]

#: Source fields the CUSTOM action cannot match on, with the name Istio reports them by.
_CUSTOM_UNSUPPORTED_SOURCE = (
    ("namespaces", "Namespaces"), ("not_namespaces", "NotNamespaces"),
    ("service_accounts", "ServiceAccounts"), ("not_service_accounts", "NotServiceAccounts"),
    ("principals", "Principals"), ("not_principals", "NotPrincipals"),
    ("request_principals", "RequestPrincipals"), ("not_request_principals", "NotRequestPrincipals"),
    ("trust_domains", "TrustDomains"), ("not_trust_domains", "NotTrustDomains"),
)
_CUSTOM_UNSUPPORTED_KEYS = frozenset({"source.namespace", "source.serviceAccount", "source.principal",
                                      "source.trustDomain"})


def _alias(model: type[IstioModel], field: str) -> str:
    return model.model_fields[field].alias or field


class AuthorizationPolicySpec(IstioModel):
    selector: PolicyWorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: TargetRefs = ()
    rules: Annotated[tuple[Rule, ...], Field(max_length=512)] = ()
    action: Action = "ALLOW"
    provider: ExtensionProvider | None = None

    @property
    def targets(self) -> tuple[PolicyTargetReference, ...]:
        """``targetRefs``, or the deprecated single ``targetRef`` as a one-element tuple."""
        return _targets(self.target_ref, self.target_refs)

    @model_validator(mode="after")
    def _check(self) -> AuthorizationPolicySpec:
        errs = _Errors()
        _check_one_selector_type(errs, self.selector, self.target_ref, self.target_refs)
        if self.action == "CUSTOM":
            self._check_custom(errs)
        if self.provider is not None and self.action != "CUSTOM":
            errs.add(f"`provider` must not be with non CUSTOM action, found {self.action}", "provider")
        if self.action == "DENY" and not self.rules:
            errs.add("DENY action without `rules` is meaningless as it will never be triggered, "
                     "add an empty rule `{}` if you want it be triggered for every request", "rules")
        errs.raise_any("AuthorizationPolicySpec", self)
        return self

    def _check_custom(self, errs: _Errors) -> None:
        if not self.rules:
            errs.add("CUSTOM action without `rules` is meaningless as it will never be triggered, "
                     "add an empty rule `{}` if you want it be triggered for every request", "rules")
        elif self.provider is None or not self.provider.name:
            errs.add("`provider.name` must not be empty", "provider")
        for i, rule in enumerate(self.rules):
            for j, frm in enumerate(rule.from_):
                for field, name in _CUSTOM_UNSUPPORTED_SOURCE:
                    if frm.source is not None and getattr(frm.source, field):
                        errs.add(f"From.{name} is currently not supported with CUSTOM action",
                                 "rules", i, "from", j, "source", _alias(Source, field))
            for k, cond in enumerate(rule.when):
                if cond.key in _CUSTOM_UNSUPPORTED_KEYS or cond.key.startswith("request.auth."):
                    errs.add(f"{cond.key} is currently not supported with CUSTOM action", "rules", i, "when", k, "key")


# Policy is enforced by filters whose configs are ECDS resources; the listener changes only when a
# chain gains or loses a filter slot (docs/upstream-envoy.md, "Authorization over ECDS").
@register(KindDeclaration("authorizationpolicies", frozenset({ECDS, LDS}), WaypointRead.WHOLE,
                          status=StatusWriter.REJECTIONS, ambient_status=True))
class AuthorizationPolicy(Resource):
    KIND: ClassVar[str] = "AuthorizationPolicy"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = VERSIONS
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)
    status: dict[str, Any] | None = None

    @property
    def dry_run(self) -> bool:
        """``istio.io/dry-run: "true"``: the policy is evaluated in shadow mode and never enforced."""
        return _GO_BOOLS.get(self.metadata.annotations.get(DRY_RUN_ANNOTATION, "false"), False)

    @model_validator(mode="after")
    def _check_dry_run(self) -> AuthorizationPolicy:
        value = self.metadata.annotations.get(DRY_RUN_ANNOTATION)
        if value is None:
            return self
        errs = _Errors()
        if self.spec.action not in ("ALLOW", "DENY"):
            errs.add(f"the annotation {DRY_RUN_ANNOTATION} currently only supports action ALLOW/DENY, "
                     f"found action {self.spec.action}", "metadata", "annotations")
        elif value not in _GO_BOOLS:
            errs.add(f"annotation {DRY_RUN_ANNOTATION} has invalid value ({value}): must be true or false",
                     "metadata", "annotations")
        errs.raise_any(self.KIND, value)
        return self


# --- RequestAuthentication ----------------------------------------------------------------------

#: Envoy's non-strict ``HTTP_HEADER_NAME``/``HTTP_HEADER_VALUE`` rules: no NUL, CR or LF.
_ENVOY_HEADER_BAD = re.compile(r"[\x00\r\n]")
#: Istio's ``ValidateStrictHTTPHeaderName``.
_STRICT_HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")


def _envoy_header(what: str) -> Any:
    def check(value: str) -> str:
        if _ENVOY_HEADER_BAD.search(value):
            raise ValueError(f"{what} must not contain NUL, CR or LF characters")
        return value

    return AfterValidator(check)


def check_jwks_uri(uri: str) -> str | None:
    """``security.ParseJwksURI`` plus the CRD's rules (1-2048 characters, http or https)."""
    if len(uri) > 2048:
        return "jwksUri must be at most 2048 characters"
    if any(c in string.whitespace or ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        return f"invalid jwksUri {uri!r}: contains whitespace or control characters"
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return f'URI scheme "{parts.scheme}" is not supported'
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return f"invalid jwksUri {uri!r}: bad port"
    if not parts.hostname:
        return f"invalid jwksUri {uri!r}: missing host"
    return None


#: Members a JWK of each key type must carry (RFC 7518 section 6).
_JWK_REQUIRED: Final = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}


def check_jwks(text: str) -> str | None:
    """Istio parses inline ``jwks`` with ``jwk.Parse``: a JWK Set (or a single JWK) in JSON.  ``""`` is unset."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"jwks parse error: invalid JSON: {exc}"
    if not isinstance(doc, dict):
        return "jwks parse error: expected a JSON object"
    keys = doc.get("keys", [doc])
    if not isinstance(keys, list):
        return "jwks parse error: \"keys\" must be a list"
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            return f"jwks parse error: key {i} is not a JSON object"
        kty = key.get("kty")
        if kty not in _JWK_REQUIRED:
            return f"jwks parse error: key {i} has unsupported key type {kty!r}"
        missing = [m for m in _JWK_REQUIRED[kty] if not isinstance(key.get(m), str) or not key.get(m)]
        if missing:
            return f"jwks parse error: {kty} key {i} is missing {', '.join(missing)}"
    return None


class JWTHeader(IstioModel):
    """A header the JWT is read from, with an optional prefix (``Bearer ``) stripped before decoding."""

    name: Annotated[str, _non_empty("location header name must be non-empty string"), _envoy_header("header name")]
    prefix: Annotated[str, _envoy_header("header prefix")] = ""


class ClaimToHeader(IstioModel):
    """Copy one claim of a verified token to a request header."""

    header: Annotated[str, _non_empty("outputClaimToHeaders header and claim value must be non-empty string")]
    claim: Annotated[str, _non_empty("outputClaimToHeaders header and claim value must be non-empty string")]

    @field_validator("header")
    @classmethod
    def _check_header(cls, v: str) -> str:
        if not _STRICT_HEADER_NAME.match(v):
            raise ValueError(f"header name {v} is not a valid header name")
        return v


class JWTRule(IstioModel):
    """``JWTRule``: how to validate one issuer's tokens and where to find them."""

    issuer: Annotated[str, _non_empty("issuer must not be empty")] = ""
    audiences: tuple[Annotated[str, _non_empty("audience must be non-empty string")], ...] = ()
    #: ``jwks_uri`` (the proto name) is accepted as a spelling too, as the CRD does.
    jwks_uri: Annotated[str, _checked(check_jwks_uri, empty="jwksUri must not be empty")] = ""
    jwks: Annotated[str, _checked(check_jwks, empty=None)] = ""
    from_headers: tuple[JWTHeader, ...] = ()
    from_params: tuple[Annotated[str, _non_empty("location query must be non-empty string")], ...] = ()
    from_cookies: tuple[Annotated[str, _non_empty("cookie name must be non-empty string")], ...] = ()
    output_payload_to_header: Annotated[str, _envoy_header("outputPayloadToHeader")] = ""
    forward_original_token: bool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout: MsDuration | None = None
    space_delimited_claims: Annotated[
        tuple[Annotated[str, _non_empty("claim name must be non-empty string")], ...], Field(max_length=64)
    ] = ()

    @model_validator(mode="before")
    @classmethod
    def _one_jwks_uri_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and "jwksUri" in data and "jwks_uri" in data:
            raise ValueError("only one of jwks or jwksUri can be set")
        return data

    @model_validator(mode="after")
    def _check(self) -> JWTRule:
        if {"jwks", "jwks_uri"} <= self.model_fields_set:
            raise ValueError("only one of jwks or jwksUri can be set")
        if not self.issuer and not self.jwks_uri:
            raise ValueError("issuer or jwksUri must be non-empty string")
        return self


class RequestAuthenticationSpec(IstioModel):
    selector: PolicyWorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: TargetRefs = ()
    jwt_rules: Annotated[tuple[JWTRule, ...], Field(max_length=4096)] = ()

    @property
    def targets(self) -> tuple[PolicyTargetReference, ...]:
        return _targets(self.target_ref, self.target_refs)

    @model_validator(mode="after")
    def _check(self) -> RequestAuthenticationSpec:
        errs = _Errors()
        _check_one_selector_type(errs, self.selector, self.target_ref, self.target_refs)
        errs.raise_any("RequestAuthenticationSpec", self)
        return self


# Enforced by jwt_authn, whose config is an ECDS resource (the listener changes when it appears).
@register(KindDeclaration("requestauthentications", frozenset({ECDS, LDS}), WaypointRead.WHOLE,
                          status=StatusWriter.REJECTIONS))
class RequestAuthentication(Resource):
    KIND: ClassVar[str] = "RequestAuthentication"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = VERSIONS
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_annotations(self) -> RequestAuthentication:
        _reject_dry_run(self.metadata.annotations, self.KIND)
        return self


# --- PeerAuthentication -------------------------------------------------------------------------

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(IstioModel):
    """``PeerAuthentication.MutualTLS``: ``UNSET`` inherits from the parent (namespace, then mesh)."""

    mode: MtlsMode = "UNSET"


def _port_keys(value: Any) -> Any:
    """Map keys are ports: ints in YAML, strings in JSON (what the Kubernetes API serves)."""
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    bad: list[str] = []
    for k, v in value.items():
        if isinstance(k, int) and not isinstance(k, bool):
            port = k
        elif isinstance(k, str) and _DIGITS.fullmatch(k):
            port = int(k)
        else:
            bad.append(repr(k))
            continue
        if not 0 < port <= 65535:
            bad.append(str(k))
        out[port] = v
    if bad:
        raise ValueError(f"port must be in range 1..65535, found {', '.join(bad)}")
    return out


class PeerAuthenticationSpec(IstioModel):
    selector: PolicyWorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: Annotated[dict[int, MutualTLS], BeforeValidator(_port_keys)] | None = None

    @property
    def mode(self) -> MtlsMode:
        """The workload-level mode (``UNSET`` when ``mtls`` is absent)."""
        return self.mtls.mode if self.mtls is not None else "UNSET"

    def port_mode(self, port: int) -> MtlsMode:
        """The mode this policy sets for one port: its ``portLevelMtls`` entry unless absent or ``UNSET``
        (which inherit the workload-level mode, as Istio's ``ComposePeerAuthentication`` does).  A
        result of ``UNSET`` still inherits from the namespace and mesh policies."""
        entry = (self.port_level_mtls or {}).get(port)
        return entry.mode if entry is not None and entry.mode != "UNSET" else self.mode

    @model_validator(mode="after")
    def _check(self) -> PeerAuthenticationSpec:
        errs = _Errors()
        empty_selector = self.selector is None or not self.selector.match_labels
        if self.port_level_mtls is not None and not self.port_level_mtls:
            errs.add("port level mTLS, if defined, must have at least one element", "portLevelMtls")
        elif self.port_level_mtls and empty_selector:
            errs.add("mesh/namespace peer authentication cannot have port level mTLS", "portLevelMtls")
        errs.raise_any("PeerAuthenticationSpec", self)
        return self


# Validated and reported, not read by waypoints (HBONE is always mTLS); a change would alter
# listener filters and cluster mTLS settings, which is what it is declared to affect.
@register(KindDeclaration("peerauthentications", frozenset({LDS, CDS}), WaypointRead.NONE,
                          status=StatusWriter.REJECTIONS))
class PeerAuthentication(Resource):
    KIND: ClassVar[str] = "PeerAuthentication"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = VERSIONS
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_annotations(self) -> PeerAuthentication:
        _reject_dry_run(self.metadata.annotations, self.KIND)
        return self


__all__ = [
    "ALLOWED_TARGET_KINDS",
    "CONDITION_KEYS",
    "DRY_RUN_ANNOTATION",
    "Action",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "ClaimToHeader",
    "Condition",
    "ExtensionProvider",
    "JWTHeader",
    "JWTRule",
    "MtlsMode",
    "MutualTLS",
    "Operation",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "PolicyTargetReference",
    "PolicyWorkloadSelector",
    "RequestAuthentication",
    "RequestAuthenticationSpec",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "Source",
    "check_condition_key",
    "check_ip_block",
    "check_jwks",
    "check_jwks_uri",
    "check_path_template",
    "check_port_string",
    "check_service_account",
    "check_trust_domain",
    "check_wildcard_value",
    "is_path_template",
]
