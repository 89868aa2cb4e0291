"""One AuthorizationPolicy rule -> one Envoy RBAC ``Policy`` (Istio's ``authz/model``).

Facts: docs/istio-waypoint-shape.md §5.3 and Istio's ``model.go``/``generator.go``:

* ``permissions``: one ``and_rules`` per ``to`` entry (one if there is none), ``principals``: one
  ``and_ids`` per ``from`` entry; every field is an ``or`` of its values, every ``not*`` field a
  ``not`` of such an ``or``; ``when`` conditions are appended to every permission/principal; an
  empty AND is ``any: true``.
* Field order inside an AND, kept for byte-stable output: ``hosts, methods, paths, ports`` then
  the ``when`` permission keys; ``principals, requestPrincipals, serviceAccounts, namespaces,
  remoteIpBlocks, ipBlocks`` then the ``when`` principal keys.
* Waypoint semantics (``useFilterState``): peer identities are matched on the filter-state object
  ``io.istio.peer_principal`` (set from the HBONE client certificate), not on the TLS connection.

DENY/AUDIT ``hosts`` and ``paths`` values (never ALLOW, CUSTOM or the ``not*`` fields) also
match the spellings a lenient backend reads as the same host or path: ``matchers.deny_host_headers``
and ``matchers.deny_path_regex``.  When such a regex is over the limits the value keeps its usual
matchers and this is reported (``RuleResult.narrow``); the rule does not fail closed.

What happens to a value that cannot be used (why: an RBAC rule that silently narrows is a
bypass, one that NACKs breaks the whole waypoint):

* an HTTP-only attribute on a TCP chain (Istio's ``forTCP``): an ALLOW rule holding it is dropped
  (stricter); for DENY/AUDIT/CUSTOM only that condition is dropped (broader);
* a value Envoy would refuse or that exceeds the limits (``matchers.Unsupported``): the rule fails
  closed - an ALLOW rule matches nothing, a DENY/AUDIT/CUSTOM rule matches every request - and the
  reason is reported with the field path.  Istio instead drops the single value, which for a
  DENY rule with several values narrows it: we do not copy that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from envoy.config.core.v3 import extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import filter_state_pb2, path_pb2

from istiod_lite.model.security import Condition, Operation, Rule, Source, is_path_template
from istiod_lite.translator.authz import matchers as m
from istiod_lite.translator.authz.matchers import Limits, Unsupported
from istiod_lite.translator.authz.trustdomain import expand_principals, expand_trust_domains
from istiod_lite.translator.core.protos import packed

Permission: TypeAlias = rbac_pb2.Permission
Principal: TypeAlias = rbac_pb2.Principal
Policy: TypeAlias = rbac_pb2.Policy
Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]

PEER_PRINCIPAL_KEY: Final = "io.istio.peer_principal"
JWT_FILTER: Final = "envoy.filters.http.jwt_authn"
#: ``payload_in_metadata`` of every jwt_authn provider Istio generates.
JWT_PAYLOAD: Final = "payload"
URI_TEMPLATE_NAME: Final = "uri-template"


# --- Envoy RBAC building blocks --------------------------------------------------------------------


def permission_any() -> Permission:
    return Permission(any=True)


def principal_any() -> Principal:
    return Principal(any=True)


def permission_and(rules: list[Permission]) -> Permission:
    return Permission(and_rules=Permission.Set(rules=rules))


def permission_or(rules: list[Permission]) -> Permission:
    return Permission(or_rules=Permission.Set(rules=rules))


def principal_and(ids: list[Principal]) -> Principal:
    return Principal(and_ids=Principal.Set(ids=ids))


def principal_or(ids: list[Principal]) -> Principal:
    return Principal(or_ids=Principal.Set(ids=ids))


def match_never() -> Policy:
    """Istio's ``rbacPolicyMatchNever``: for a policy without rules."""
    return Policy(permissions=[Permission(not_rule=permission_any())], principals=[Principal(not_id=principal_any())])


def match_all() -> Policy:
    """What a DENY/AUDIT/CUSTOM rule that cannot be translated becomes (fail closed)."""
    return Policy(permissions=[permission_any()], principals=[principal_any()])


def _peer(sm: m.StringMatcher) -> Principal:
    return Principal(filter_state=filter_state_pb2.FilterStateMatcher(key=PEER_PRINCIPAL_KEY, string_match=sm))


def _jwt_claim(path: list[str], value: m.ValueMatcher) -> Principal:
    return Principal(metadata=m.metadata(JWT_FILTER, [JWT_PAYLOAD, *path], value))


# --- value generators (one value -> matchers; "extended" ones take all values at once) ----------

PermGen = Callable[[str, Limits], list[Permission]]
PrinGen = Callable[[str, Limits], list[Principal]]
WidenGen = Callable[[str, Limits], tuple[list[Permission], str | None]]


def _hosts(v: str, lim: Limits) -> list[Permission]:
    return [Permission(header=h) for h in m.host_headers(v, lim)]


def _deny_hosts(v: str, lim: Limits) -> tuple[list[Permission], str | None]:
    headers, problem = m.deny_host_headers(v, lim)
    return [Permission(header=h) for h in headers], problem


def _methods(v: str, lim: Limits) -> list[Permission]:
    return [Permission(header=m.header(":method", v, lim))]


def _paths(v: str, lim: Limits) -> list[Permission]:
    m.check_value(v, lim)
    if is_path_template(v):
        template = v.replace("{**}", "**").replace("{*}", "*")  # Istio's sanitizePathTemplate
        if not template.startswith("/") or len(template) > m.MAX_PATH_TEMPLATE_LENGTH:
            raise Unsupported(f"path template {v!r} must start with '/' and be at most "
                              f"{m.MAX_PATH_TEMPLATE_LENGTH} characters for Envoy's uri_template matcher")
        cfg = uri_template_match_pb2.UriTemplateMatchConfig(path_template=template)
        ext = extension_pb2.TypedExtensionConfig(name=URI_TEMPLATE_NAME, typed_config=packed(cfg))
        return [Permission(uri_template=ext)]
    return [Permission(url_path=path_pb2.PathMatcher(path=m.string_matcher(v, lim)))]


def _deny_paths(v: str, lim: Limits) -> tuple[list[Permission], str | None]:
    out = _paths(v, lim)
    if is_path_template(v):
        return out, None
    sm, problem = m.deny_path_regex(v, lim)
    if sm is not None:
        out.append(Permission(url_path=path_pb2.PathMatcher(path=sm)))
    return out, problem


def _ports(v: str, lim: Limits) -> list[Permission]:
    return [Permission(destination_port=m.port(v))]


def _dest_ip(v: str, lim: Limits) -> list[Permission]:
    return [Permission(destination_ip=m.cidr(v))]


def _sni(v: str, lim: Limits) -> list[Permission]:
    return [Permission(requested_server_name=m.string_matcher(v, lim))]


def _principals(v: str, lim: Limits) -> list[Principal]:
    return [_peer(m.string_matcher(v, lim, m.SPIFFE_PREFIX))]


def _namespaces(v: str, lim: Limits) -> list[Principal]:
    m.check_value(v, lim)
    ns = ".*".join(m.re2_escape(part) for part in v.split("*"))
    return [_peer(m.regex(f".*/ns/{ns}/.*", lim))]


def _service_accounts(default_ns: str) -> PrinGen:
    def gen(v: str, lim: Limits) -> list[Principal]:
        m.check_value(v, lim)
        ns, slash, sa = v.partition("/")
        if not slash:
            ns, sa = default_ns, v
        pattern = f"spiffe://.+/ns/{m.re2_escape(ns)}/(.+/|)sa/{m.re2_escape(sa)}(/.+)?"
        return [_peer(m.regex(pattern, lim))]
    return gen


def _trust_domains(v: str, lim: Limits) -> list[Principal]:
    """The peer's trust domain: ``spiffe://<td>/`` as a prefix; ``*`` any SPIFFE identity; a
    partial wildcard matches within the trust-domain segment only (never across ``/``)."""
    m.check_value(v, lim)
    if v == "*":
        return [_peer(m.StringMatcher(prefix=m.SPIFFE_PREFIX))]
    if "*" not in v:
        return [_peer(m.StringMatcher(prefix=f"{m.SPIFFE_PREFIX}{v}/"))]
    td = "[^/]*".join(m.re2_escape(part) for part in v.split("*"))
    return [_peer(m.regex(f"{m.re2_escape(m.SPIFFE_PREFIX)}{td}/.*", lim))]


def _direct_ip(v: str, lim: Limits) -> list[Principal]:
    """``ipBlocks`` / ``source.ip``: the address the HBONE tunnel came from.  Istio's sidecars use
    ``direct_remote_ip``, but inside ``main_internal`` that is the internal listener's own address
    (no IP: nothing matched, so an ipBlocks DENY failed open); Envoy's ``source_ip`` (deprecated,
    still served by Envoy 1.40) is the connection's remote address as ``original_dst`` restored it
    from the tunnel, and never honours ``x-forwarded-for`` (tests/e2e/test_authz_xff.py)."""
    return [Principal(source_ip=m.cidr(v))]


def _remote_ip(v: str, lim: Limits) -> list[Principal]:
    return [Principal(remote_ip=m.cidr(v))]


def _request_header(name: str) -> PrinGen:
    def gen(v: str, lim: Limits) -> list[Principal]:
        return [Principal(header=m.header(name, v, lim))]
    return gen


def _inline_header(name: str) -> PrinGen:
    def gen(v: str, lim: Limits) -> list[Principal]:
        return [Principal(header=m.inline_header(name, v, lim))]
    return gen


def _match_any(lim: Limits) -> m.StringMatcher:
    return m.regex(".+", lim)


def _non_empty(sm_field: str, text: str) -> m.StringMatcher:
    if not text:
        raise Unsupported(f"empty {sm_field} match")
    return m.StringMatcher(**{sm_field: text})


def _request_principals(values: tuple[str, ...], lim: Limits) -> Principal:
    """Istio's extended ``requestPrincipalGenerator``: ``iss/sub`` split at the last ``/``, each
    half matched on the JWT payload (``*`` wildcards as elsewhere)."""
    ors: list[Principal] = []
    for value in values:
        m.check_value(value, lim)
        idx = value.rfind("/")
        found = idx >= 0
        iss, sub = (value[:idx], value[idx + 1:]) if found else (value, "")
        if value == "*":
            match_iss, match_sub = _match_any(lim), _match_any(lim)
        elif value.startswith("*"):
            if found:
                match_iss = _match_any(lim) if iss == "*" else _non_empty("suffix", iss[1:])
                match_sub = m.StringMatcher(exact=sub)
            else:
                match_iss, match_sub = _match_any(lim), _non_empty("suffix", value[1:])
        elif value.endswith("*"):
            if found:
                match_iss = m.StringMatcher(exact=iss)
                match_sub = _match_any(lim) if sub == "*" else _non_empty("prefix", sub[:-1])
            else:
                match_iss, match_sub = _non_empty("prefix", value[:-1]), _match_any(lim)
        else:
            match_iss, match_sub = m.StringMatcher(exact=iss), m.StringMatcher(exact=sub)
        ors.append(principal_and([
            _jwt_claim(["iss"], m.ValueMatcher(string_match=match_iss)),
            _jwt_claim(["sub"], m.ValueMatcher(string_match=match_sub)),
        ]))
    return ors[0] if len(ors) == 1 else principal_or(ors)


def _audiences(values: tuple[str, ...], lim: Limits) -> Principal:
    # RFC 7519: ``aud`` is a string or an array of strings; jwt_authn keeps it as the token has it.
    # A string-only matcher would let a DENY on audiences be bypassed with a one-element array.
    return _jwt_claim(["aud"], m.list_or_value(m.string_or_values(values, lim)))


def _presenter(values: tuple[str, ...], lim: Limits) -> Principal:
    return _jwt_claim(["azp"], m.list_or_value(m.string_or_values(values, lim)))


def _claims(key: str) -> Callable[[tuple[str, ...], Limits], Principal]:
    def gen(values: tuple[str, ...], lim: Limits) -> Principal:
        claims = nested_bracket_names(key[len("request.auth.claims"):])
        return _jwt_claim(claims, m.list_or_value(m.string_or_values(values, lim)))
    return gen


def _envoy_filter(key: str) -> Callable[[tuple[str, ...], Limits], Permission]:
    """``experimental.envoy.filters.a.b[c]``: dynamic metadata ``c`` of filter ``envoy.filters.a.b``;
    a value ``[v]`` matches one element of a list."""
    def gen(values: tuple[str, ...], lim: Limits) -> Permission:
        name, _, sub = key[len("experimental."):].removesuffix("]").partition("[")
        vms = []
        for v in values:
            if v.startswith("[") and v.endswith("]"):
                vm = m.ValueMatcher()
                vm.list_match.one_of.CopyFrom(m.string_value(v.strip("[]"), lim))
                vms.append(vm)
            else:
                vms.append(m.string_value(v, lim))
        return Permission(metadata=m.metadata(name, [sub], m.or_values(vms)))
    return gen


def nested_bracket_names(text: str) -> list[str]:
    """Istio's ``extractNameInNestedBrackets``: ``[a][b]`` -> ``[a, b]``; otherwise the single
    ``[name]`` (which may itself contain brackets)."""
    names: list[str] = []
    begin = 0
    while begin < len(text):
        end = -1
        if text[begin] == "[":
            for i in range(begin + 1, len(text)):
                if text[i] == "[":
                    break
                if text[i] == "]":
                    end = i
                    break
        if end == -1:
            if not (text.startswith("[") and text.endswith("]")):
                raise Unsupported(f"expecting format [<NAME>], found {text!r}")
            return [text[1:-1]]
        names.append(text[begin + 1:end])
        begin = end + 1
    return names


# --- fields of a rule ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One attribute of a rule with its values, where they came from, and how to match them."""

    key: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]
    loc: str
    not_loc: str
    http_only: bool
    gen: PermGen | PrinGen | None = None
    extended: Callable[[tuple[str, ...], Limits], Permission | Principal] | None = None
    #: DENY/AUDIT only, for ``values`` (never ``not_values``: widening a negated set narrows the
    #: rule): ``gen`` widened to other spellings of the value, and a problem when it could not be.
    widen: WidenGen | None = None


_HTTP_ONLY_WHEN = ("request.auth.", "request.headers", "request.experimental.inline.headers")


def _operation_fields(op: Operation, loc: str, widen: bool) -> list[Field]:
    """``widen`` (DENY/AUDIT): hosts and paths also match the spellings that reach a lenient
    backend as the same host or path (repeated Host headers, ``//``, ``%2F``, dot segments...)."""
    spec: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], PermGen, WidenGen | None, bool], ...] = (
        ("hosts", "notHosts", op.hosts, op.not_hosts, _hosts, _deny_hosts, True),
        ("methods", "notMethods", op.methods, op.not_methods, _methods, None, True),
        ("paths", "notPaths", op.paths, op.not_paths, _paths, _deny_paths, True),
        ("ports", "notPorts", op.ports, op.not_ports, _ports, None, False))
    return [Field(k, vs, nvs, f"{loc}.{k}", f"{loc}.{nk}", http, gen=g, widen=w if widen else None)
            for k, nk, vs, nvs, g, w, http in spec if vs or nvs]


def _source_fields(src: Source, loc: str, policy_ns: str, bundle: tuple[str, ...] = ()) -> list[Field]:
    out: list[Field] = []
    if src.principals or src.not_principals:
        out.append(Field("principals", expand_principals(src.principals, bundle),
                         expand_principals(src.not_principals, bundle), f"{loc}.principals",
                         f"{loc}.notPrincipals", False, gen=_principals))
    if src.request_principals or src.not_request_principals:
        out.append(Field("requestPrincipals", src.request_principals, src.not_request_principals,
                         f"{loc}.requestPrincipals", f"{loc}.notRequestPrincipals", True,
                         extended=_request_principals))
    rest: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], PrinGen], ...] = (
            ("serviceAccounts", "notServiceAccounts", src.service_accounts, src.not_service_accounts,
             _service_accounts(policy_ns)),
            ("trustDomains", "notTrustDomains", expand_trust_domains(src.trust_domains, bundle),
             expand_trust_domains(src.not_trust_domains, bundle), _trust_domains),
            ("namespaces", "notNamespaces", src.namespaces, src.not_namespaces, _namespaces),
            ("remoteIpBlocks", "notRemoteIpBlocks", src.remote_ip_blocks, src.not_remote_ip_blocks, _remote_ip),
            ("ipBlocks", "notIpBlocks", src.ip_blocks, src.not_ip_blocks, _direct_ip))
    for k, nk, vs, nvs, g in rest:
        if vs or nvs:
            out.append(Field(k, vs, nvs, f"{loc}.{k}", f"{loc}.{nk}", False, gen=g))
    return out


def _when_field(cond: Condition, loc: str, policy_ns: str, bundle: tuple[str, ...] = ()) -> tuple[str, Field]:
    """(``"permission"`` or ``"principal"``, the field) for one ``when`` condition; ``bundle``:
    ``source.principal`` and ``source.trustDomain`` values are expanded to the trust domain's
    aliases (as the ``from.source`` fields are)."""
    k = cond.key
    vloc, nloc = f"{loc}.values", f"{loc}.notValues"
    http_only = k.startswith(_HTTP_ONLY_WHEN)

    def f(gen: PermGen | PrinGen | None = None,
          extended: Callable[[tuple[str, ...], Limits], Permission | Principal] | None = None) -> Field:
        if k == "source.principal":
            return Field(k, expand_principals(cond.values, bundle), expand_principals(cond.not_values, bundle),
                         vloc, nloc, http_only, gen=gen, extended=extended)
        if k == "source.trustDomain":
            return Field(k, expand_trust_domains(cond.values, bundle), expand_trust_domains(cond.not_values, bundle),
                         vloc, nloc, http_only, gen=gen, extended=extended)
        return Field(k, cond.values, cond.not_values, vloc, nloc, http_only, gen=gen, extended=extended)

    permission_gens: dict[str, PermGen] = {"destination.ip": _dest_ip, "destination.port": _ports,
                                           "connection.sni": _sni}
    principal_gens: dict[str, PrinGen] = {"source.ip": _direct_ip, "remote.ip": _remote_ip,
                                          "source.namespace": _namespaces, "source.principal": _principals,
                                          "source.trustDomain": _trust_domains,
                                          "source.serviceAccount": _service_accounts(policy_ns)}
    if k in permission_gens:
        return "permission", f(permission_gens[k])
    if k.startswith("experimental.envoy.filters."):
        return "permission", f(extended=_envoy_filter(k))
    if k in principal_gens:
        return "principal", f(principal_gens[k])
    extended = {"request.auth.principal": _request_principals, "request.auth.audiences": _audiences,
                "request.auth.presenter": _presenter}
    if k in extended:
        return "principal", f(extended=extended[k])
    if k.startswith("request.auth.claims"):
        return "principal", f(extended=_claims(k))
    if k.startswith("request.headers"):
        return "principal", f(_request_header(k[len("request.headers"):].removeprefix("[").removesuffix("]")))
    if k.startswith("request.experimental.inline.headers"):
        name = k[len("request.experimental.inline.headers"):].removeprefix("[").removesuffix("]")
        return "principal", f(_inline_header(name))
    return "principal", f(_unknown(k))


def _unknown(key: str) -> PrinGen:
    def gen(v: str, lim: Limits) -> list[Principal]:
        raise Unsupported(f"unknown attribute {key}")
    return gen


@dataclass
class RuleResult:
    """A compiled rule: ``policy`` is None when the rule is dropped on this chain."""

    policy: Policy | None
    #: (field path, reason) of every value that made the rule fail closed.
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: (field path, reason) of every DENY/AUDIT value that could not be widened (it still
    #: matches as written; the rule does not fail closed).
    narrow: list[tuple[str, str]] = field(default_factory=list)
    #: HTTP-only fields ignored (DENY/AUDIT/CUSTOM) or that dropped the rule (ALLOW) on a TCP chain.
    http_only: list[str] = field(default_factory=list)


def _generate(fld: Field, lim: Limits, fails: list[tuple[str, str]], is_perm: bool,
              narrow: list[tuple[str, str]]) -> list[Permission | Principal]:
    """The AND members one field contributes: ``or(values)`` and ``not(or(notValues))``."""
    out: list[Permission | Principal] = []
    for values, loc, negate in ((fld.values, fld.loc, False), (fld.not_values, fld.not_loc, True)):
        if not values:
            continue
        if len(values) > lim.max_values:
            fails.append((loc, f"{len(values)} values (limit {lim.max_values})"))
            continue
        if fld.extended is not None:
            try:
                one = fld.extended(values, lim)
            except Unsupported as exc:
                fails.append((loc, str(exc)))
                continue
            out.append(_negate(one, is_perm) if negate else one)
            continue
        assert fld.gen is not None
        items: list[Permission | Principal] = []
        for i, v in enumerate(values):
            try:
                if fld.widen is not None and not negate:
                    widened, problem = fld.widen(v, lim)
                    items.extend(widened)
                    if problem is not None:
                        narrow.append((f"{loc}[{i}]", problem))
                else:
                    items.extend(fld.gen(v, lim))
            except Unsupported as exc:
                fails.append((f"{loc}[{i}]", str(exc)))
        if not items:
            continue
        joined = permission_or(items) if is_perm else principal_or(items)
        out.append(_negate(joined, is_perm) if negate else joined)
    return out


def _negate(x: Permission | Principal, is_perm: bool) -> Permission | Principal:
    return Permission(not_rule=x) if is_perm else Principal(not_id=x)


def compile_rule(rule: Rule, index: int, policy_ns: str, action: Action, for_tcp: bool, lim: Limits,
                 bundle: tuple[str, ...] = ()) -> RuleResult:
    """Istio's ``model.New`` + ``MigrateTrustDomain`` (``bundle``: the mesh's trust domain and
    aliases) + ``Generate`` for one rule, with the fail-closed rules above."""
    loc = f"spec.rules[{index}]"
    perm_when: list[Field] = []
    prin_when: list[Field] = []
    for k, cond in enumerate(rule.when):
        side, fld = _when_field(cond, f"{loc}.when[{k}]", policy_ns, bundle)
        (perm_when if side == "permission" else prin_when).append(fld)
    widen = action in ("DENY", "AUDIT")
    perm_sets = [_operation_fields(op, f"{loc}.to[{j}].operation", widen) + perm_when
                 for j, op in enumerate(rule.operations)] or [list(perm_when)]
    prin_sets = [_source_fields(src, f"{loc}.from[{j}].source", policy_ns, bundle) + prin_when
                 for j, src in enumerate(rule.sources)] or [list(prin_when)]

    result = RuleResult(policy=None)
    allow = action == "ALLOW"
    policy = Policy()
    for sets, is_perm in ((perm_sets, True), (prin_sets, False)):
        for fields in sets:
            members: list[Permission | Principal] = []
            for fld in fields:
                if for_tcp and fld.http_only:
                    result.http_only.append(fld.key)
                    continue
                members.extend(_generate(fld, lim, result.failures, is_perm, result.narrow))
            if is_perm:
                policy.permissions.append(permission_and(members or [permission_any()]))
            else:
                policy.principals.append(principal_and(members or [principal_any()]))
    result.http_only = sorted(set(result.http_only))
    if result.failures:
        result.policy = None if allow else match_all()
    elif allow and result.http_only:
        result.policy = None
    else:
        result.policy = policy
    return result
