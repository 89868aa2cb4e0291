"""Envoy matchers for authorization values, and the limits that keep them acceptable to Envoy.

Why a module of its own: every user string that reaches an RBAC matcher passes through here, so
the two security rules that matter most live in one place:

* a user string placed in a regex is escaped for RE2 (security bulletin 2026-003: unescaped
  ``.`` in namespace and service-account names let policies be bypassed), and every regex we
  emit is compiled with RE2 and checked against Envoy's limits before it leaves the translator
  (Envoy rejects a regex whose RE2 program is larger than ``re2.max_program_size.error_level``,
  100 by default, and a rejected regex NACKs the whole listener: bulletin 2026-006);
* a value Envoy would refuse, or that is too large, raises ``Unsupported`` so the caller can fail
  the rule closed instead of emitting config that breaks every chain of the waypoint.

Wildcards follow Istio (``pilot/pkg/security/authz/matcher``): ``*`` alone is presence (``.+``),
a leading ``*`` is a suffix match, a trailing ``*`` a prefix match, anywhere else ``*`` is literal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, TypeAlias

import re2
from envoy.config.core.v3 import address_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2

from istiod_lite.model.types import MAX_REGEX_LENGTH, MAX_REGEX_PROGRAM_SIZE

StringMatcher: TypeAlias = string_pb2.StringMatcher
ValueMatcher: TypeAlias = value_pb2.ValueMatcher
HeaderMatcher: TypeAlias = route_components_pb2.HeaderMatcher

#: Longest single value placed in a matcher (the same cap Istio's webhook puts on user regexes).
MAX_VALUE_LENGTH: Final = 1024
#: Most values one field (``hosts``, ``principals``, ``when[].values`` ...) may list.
MAX_VALUES: Final = 1024
#: Envoy's ``UriTemplateMatchConfig.path_template`` length limit.
MAX_PATH_TEMPLATE_LENGTH: Final = 256
SPIFFE_PREFIX: Final = "spiffe://"


@dataclass(frozen=True)
class Limits:
    """What the target Envoy accepts.  ``max_regex_program_size`` must not exceed the proxy's
    ``re2.max_program_size.error_level`` runtime value (Envoy's default 100; Istio's bootstrap
    raises it to 1024)."""

    max_regex_program_size: int = MAX_REGEX_PROGRAM_SIZE
    max_regex_length: int = MAX_REGEX_LENGTH
    max_value_length: int = MAX_VALUE_LENGTH
    max_values: int = MAX_VALUES


DEFAULT_LIMITS: Final = Limits()


class Unsupported(Exception):
    """A value this translator cannot express safely for Envoy: the rule holding it fails closed."""


#: RE2 metacharacters (Go's ``regexp.QuoteMeta`` set).  Escaping only these keeps the pattern
#: readable; every other printable character is literal in RE2.
_RE2_META: Final = frozenset("\\.+*?()|[]{}^$")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def re2_escape(text: str) -> str:
    """``text`` as an RE2 literal: metacharacters backslashed, control characters as ``\\x{..}``."""
    out = []
    for ch in text:
        if ch in _RE2_META:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{{{ord(ch):02x}}}")
        else:
            out.append(ch)
    return "".join(out)


def check_regex(pattern: str, limits: Limits) -> str:
    """``pattern`` if Envoy will accept it (compiles under RE2, length and program size within
    ``limits``); else ``Unsupported``."""
    if len(pattern) > limits.max_regex_length:
        raise Unsupported(f"generated regex is {len(pattern)} characters long (limit {limits.max_regex_length})")
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:  # only reachable through a bug in the escaping: still fail closed
        raise Unsupported(f"generated regex does not compile under RE2: {exc}") from None
    if compiled.programsize > limits.max_regex_program_size:
        raise Unsupported(
            f"generated regex has RE2 program size {compiled.programsize}, above the proxy's limit "
            f"{limits.max_regex_program_size} (runtime re2.max_program_size.error_level)")
    return pattern


def regex(pattern: str, limits: Limits) -> StringMatcher:
    """A ``safe_regex`` matcher (RE2 is Envoy's only engine, so no ``google_re2`` field is set)."""
    return StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=check_regex(pattern, limits)))


def check_value(value: str, limits: Limits) -> str:
    if len(value) > limits.max_value_length:
        raise Unsupported(f"value is {len(value)} characters long (limit {limits.max_value_length})")
    return value


def string_matcher(value: str, limits: Limits, prefix: str = "", *, ignore_case: bool = False) -> StringMatcher:
    """Istio's ``StringMatcherWithPrefix``: ``*`` -> ``.+`` (``prefix`` ignored), ``*x`` -> suffix
    (a regex ``<prefix>.*x`` when there is a prefix), ``x*`` -> prefix, else exact."""
    check_value(value, limits)
    if value == "*":
        return regex(".+", limits)
    if value.startswith("*"):
        if not prefix:
            return StringMatcher(suffix=value[1:], ignore_case=ignore_case)
        flags = "(?i)" if ignore_case else ""
        return regex(f"{flags}{re2_escape(prefix)}.*{re2_escape(value[1:])}", limits)
    if value.endswith("*"):
        return StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def string_value(value: str, limits: Limits) -> ValueMatcher:
    return ValueMatcher(string_match=string_matcher(value, limits))


def or_values(matchers: list[ValueMatcher]) -> ValueMatcher:
    """Istio's ``OrMatcher``: one matcher as is (Envoy's ``or_match`` needs two or more)."""
    if len(matchers) == 1:
        return matchers[0]
    out = ValueMatcher()
    out.or_match.value_matchers.extend(matchers)
    return out


def string_or_values(values: tuple[str, ...], limits: Limits) -> ValueMatcher:
    return or_values([string_value(v, limits) for v in values])


def list_or_value(value: ValueMatcher) -> ValueMatcher:
    """A claim may be a string or a list of strings: match the value itself or any list element
    (Istio's ``MetadataListValueMatcher`` with extended JWT support)."""
    listed = ValueMatcher()
    listed.list_match.one_of.CopyFrom(value)
    out = ValueMatcher()
    out.or_match.value_matchers.extend([listed, value])
    return out


def metadata(filter_name: str, path: list[str], value: ValueMatcher) -> metadata_pb2.MetadataMatcher:
    if not filter_name or not path or any(not k for k in path):
        raise Unsupported("metadata matcher needs a filter name and non-empty path keys")
    m = metadata_pb2.MetadataMatcher(filter=filter_name, value=value)
    for key in path:
        m.path.add(key=key)
    return m


def check_header_name(name: str) -> str:
    """Envoy's (non-strict) ``HTTP_HEADER_NAME``: non-empty, no NUL, CR or LF."""
    if not name or any(c in name for c in "\x00\r\n"):
        raise Unsupported(f"invalid header name {name!r}")
    return name


def header(name: str, value: str, limits: Limits, *, ignore_case: bool = False) -> HeaderMatcher:
    """Istio's ``HeaderMatcher``/``HostMatcher``: ``*`` -> present, ``*x`` suffix, ``x*`` prefix, else exact."""
    check_header_name(name)
    check_value(value, limits)
    if value == "*":
        return HeaderMatcher(name=name, present_match=True)
    if value.startswith("*"):
        sm = StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    elif value.endswith("*"):
        sm = StringMatcher(prefix=value[:-1], ignore_case=ignore_case)
    else:
        sm = StringMatcher(exact=value, ignore_case=ignore_case)
    return HeaderMatcher(name=name, string_match=sm)


def host_headers(value: str, limits: Limits) -> list[HeaderMatcher]:
    """``:authority`` matchers for one ``hosts`` value, case-insensitive (RFC 4343, bulletin
    2021-008), and with the port form too: clients of a waypoint send ``Host: name:port``, and
    Istio's own advice is to list ``x`` and ``x:*`` (an exact ``x`` alone silently misses
    ``x:8080``).  So ``x`` -> exact ``x`` or prefix ``x:``; ``*x`` -> suffix ``x`` or the regex
    ``.*x:[0-9]+``; ``x*`` (a prefix covers the port already) and ``*`` (presence) as Istio."""
    out = [header(":authority", value, limits, ignore_case=True)]
    if value == "*" or value.endswith("*"):
        return out
    if value.startswith("*"):
        port_form = regex(f"(?i).*{re2_escape(value[1:])}:[0-9]+", limits)
    else:
        port_form = StringMatcher(prefix=value + ":", ignore_case=True)
    out.append(HeaderMatcher(name=":authority", string_match=port_form))
    return out


#: One ``/`` as a lenient backend may read it: ``/``, ``\\``, or percent-encoded ``/``/``\\``.
_SEP: Final = r"(?:[/\\]|%(?:2[fF]|5[cC]))"
#: A ``/`` followed by what resolves back to it: more separators, ``./`` and ``x/../`` segments.
_SEP_DOTS: Final = _SEP + r"(?:(?:\.|[^/]*" + _SEP + r"\.\.)?" + _SEP + r")*"


def deny_host_headers(value: str, limits: Limits) -> tuple[list[HeaderMatcher], str | None]:
    """``host_headers`` widened for DENY/AUDIT rules: also the value as any item of a comma-joined
    list (Envoy joins repeated ``Host`` headers as ``a,b``), case-insensitive, with or without
    ``:port``.  Returns (matchers, problem): when the regex is over the limits, only the
    ``host_headers`` matchers and the reason (the repeated-Host spelling is then not covered)."""
    out = host_headers(value, limits)
    if value == "*":
        return out, None
    if value.startswith("*"):
        item = "[^,]*" + re2_escape(value[1:])
    elif value.endswith("*"):
        item = re2_escape(value[:-1]) + "[^,]*"
    else:
        item = re2_escape(value)
    try:
        pattern = check_regex(rf"(?i)^(.*,)?\s*{item}(:[0-9]+)?\s*(,.*)?$", limits)
    except Unsupported as exc:
        return out, f"{exc}: repeated Host headers (a comma-joined authority) are not matched"
    out.append(HeaderMatcher(name=":authority", safe_regex_match=regex_pb2.RegexMatcher(regex=pattern)))
    return out, None


def deny_path_regex(value: str, limits: Limits) -> tuple[StringMatcher | None, str | None]:
    """For a DENY/AUDIT exact or prefix (``x*``) path: one regex for the spellings a lenient
    backend resolves to the same path - repeated slashes, ``%2F``/``%5C``/``\\`` for ``/``, and
    ``/./``, ``/x/../`` segments (left in the path by normalisation ``NONE``).  Returns
    (matcher, problem): ``(None, None)`` for values this does not apply to (``*``, suffix, no
    ``/``).  Over the regex limits, dot segments are dropped; if still over, no regex is made;
    either way the reason is returned."""
    check_value(value, limits)
    if value == "*" or value.startswith("*") or "/" not in value:
        return None, None
    prefix = value.endswith("*")
    body = value[:-1] if prefix else value
    parts = body.split("/")
    tail = ".*" if prefix else ""
    if prefix and parts[-1] == "":  # "/a/*": anything after the last separator
        parts.pop()
        last = _SEP + tail
    else:
        last = tail
    problems = []
    for sep, what in ((_SEP_DOTS, ""), (_SEP + "+", "dot segments (/./, /x/../) are not matched")):
        try:
            pattern = check_regex(sep.join(re2_escape(p) for p in parts) + last, limits)
        except Unsupported as exc:
            problems.append(str(exc))
            continue
        return StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern)), (
            f"{problems[0]}: {what}" if problems else None)
    return None, f"{problems[-1]}: alternative spellings (//, %2F, %5C, \\, dot segments) are not matched"


def inline_header(name: str, value: str, limits: Limits) -> HeaderMatcher:
    """Istio's ``HeaderMatcherWithRegex``: the value as one element of a comma-joined header."""
    check_header_name(name)
    check_value(value, limits)
    if value == "*":
        return HeaderMatcher(name=name, present_match=True)
    if value.startswith("*"):
        item = ".*" + re2_escape(value[1:])
    elif value.endswith("*"):
        item = re2_escape(value[:-1]) + ".*"
    else:
        item = re2_escape(value)
    pattern = f"^{item}$|^{item},.*|.*,{item},.*|.*,{item}$"
    return HeaderMatcher(name=name, safe_regex_match=regex_pb2.RegexMatcher(regex=check_regex(pattern, limits)))


def cidr(value: str) -> address_pb2.CidrRange:
    """An IP (``/32`` or ``/128``) or a CIDR block as written (Envoy masks host bits itself)."""
    addr, slash, bits = value.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise Unsupported(f"invalid IP address or CIDR {value!r}") from None
    r = address_pb2.CidrRange(address_prefix=str(ip))
    r.prefix_len.value = int(bits) if slash else ip.max_prefixlen
    return r


def port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise Unsupported(f"invalid port {value!r}")
    return int(value)
