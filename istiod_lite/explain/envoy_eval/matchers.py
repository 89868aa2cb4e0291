"""Envoy's matchers evaluated in Python: string matchers (RE2 for regexes, as Envoy), header and
query-parameter matchers, metadata value matchers and CIDR ranges.

Each function follows Envoy's documented semantics; the differential test
(tests/e2e/test_explain_request_differential.py) checks them against a real Envoy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import re2
from envoy.config.core.v3 import address_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def regex_full_match(regex: regex_pb2.RegexMatcher, value: str) -> bool:
    """Envoy's ``safe_regex``: the whole value must match (RE2)."""
    return _compiled(regex.regex).fullmatch(value) is not None


def string_match(m: string_pb2.StringMatcher, value: str) -> bool:
    """``type.matcher.v3.StringMatcher`` (``ignore_case`` applies to exact/prefix/suffix/contains)."""
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return regex_full_match(m.safe_regex, value)
    if kind is None:
        return False
    pattern = getattr(m, kind)
    subject = value
    if m.ignore_case:
        pattern, subject = pattern.lower(), value.lower()
    if kind == "exact":
        return bool(subject == pattern)
    if kind == "prefix":
        return bool(subject.startswith(pattern))
    if kind == "suffix":
        return bool(subject.endswith(pattern))
    if kind == "contains":
        return pattern in subject
    return False  # custom matchers: not used by the translator


def describe_string_match(m: string_pb2.StringMatcher) -> str:
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return f"regex {m.safe_regex.regex!r}"
    value = getattr(m, kind) if kind else ""
    return f"{kind} {value!r}" + (" (ignore case)" if m.ignore_case else "")


Headers = Sequence[tuple[str, str]]


def header_values(headers: Headers, name: str) -> list[str]:
    name = name.lower()
    return [v for k, v in headers if k == name]


def header_match(m: rc.HeaderMatcher, headers: Headers) -> bool:
    """``config.route.v3.HeaderMatcher``: several values of one header are joined with ``,``;
    a missing header fails every kind of match (``invert_match`` included) except
    ``present_match``, which compares presence and then applies ``invert_match``, unless
    ``treat_missing_header_as_empty``."""
    values = header_values(headers, m.name)
    kind = m.WhichOneof("header_match_specifier")
    if kind == "present_match":
        return bool((bool(values) == m.present_match) != m.invert_match)
    if not values:
        if not m.treat_missing_header_as_empty:
            return False
        values = [""]
    value = ",".join(values)
    if kind is None:
        matched = True
    elif kind == "exact_match":
        matched = value == m.exact_match
    elif kind == "safe_regex_match":
        matched = regex_full_match(m.safe_regex_match, value)
    elif kind == "range_match":
        try:
            n = int(value)
        except ValueError:
            matched = False
        else:
            matched = m.range_match.start <= n < m.range_match.end
    elif kind == "prefix_match":
        matched = value.startswith(m.prefix_match)
    elif kind == "suffix_match":
        matched = value.endswith(m.suffix_match)
    elif kind == "contains_match":
        matched = m.contains_match in value
    elif kind == "string_match":
        matched = string_match(m.string_match, value)
    else:
        matched = False
    return bool(matched != m.invert_match)


def describe_header_match(m: rc.HeaderMatcher) -> str:
    kind = m.WhichOneof("header_match_specifier")
    if kind == "present_match":
        text = f"{m.name} {'present' if m.present_match else 'absent'}"
    elif kind == "string_match":
        text = f"{m.name} {describe_string_match(m.string_match)}"
    elif kind == "safe_regex_match":
        text = f"{m.name} regex {m.safe_regex_match.regex!r}"
    elif kind is None:
        text = f"{m.name} present"
    else:
        text = f"{m.name} {kind} {getattr(m, kind)!r}"
    return ("NOT " if m.invert_match else "") + text


def query_params(path: str) -> list[tuple[str, str]]:
    """The query string's parameters as Envoy parses them for route matching (not URL-decoded)."""
    if "?" not in path:
        return []
    query = path.split("?", 1)[1].split("#", 1)[0]
    out: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        out.append((key, value))
    return out


def query_match(m: rc.QueryParameterMatcher, params: Sequence[tuple[str, str]]) -> bool:
    """``QueryParameterMatcher``: the first value of the parameter is matched."""
    values = [v for k, v in params if k == m.name]
    kind = m.WhichOneof("query_parameter_match_specifier")
    if kind == "present_match":
        return bool(bool(values) == m.present_match)
    if not values:
        return False
    if kind == "string_match":
        return string_match(m.string_match, values[0])
    return True


def cidr_match(r: address_pb2.CidrRange, ip: str | None) -> bool:
    if ip is None:
        return False
    try:
        net = ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len.value if r.HasField('prefix_len') else 32}",
                                   strict=False)
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


def _value_match(m: value_pb2.ValueMatcher, value: Any, present: bool) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "present_match":
        return bool(present == m.present_match)
    if not present:
        return False
    if kind == "null_match":
        return value is None
    if kind == "string_match":
        return isinstance(value, str) and string_match(m.string_match, value)
    if kind == "bool_match":
        return isinstance(value, bool) and value == m.bool_match
    if kind == "double_match":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        dm = m.double_match
        if dm.WhichOneof("match_pattern") == "exact":
            return bool(float(value) == dm.exact)
        return bool(dm.range.start <= float(value) < dm.range.end)
    if kind == "list_match":
        return isinstance(value, list) and any(_value_match(m.list_match.one_of, v, True) for v in value)
    if kind == "or_match":
        return any(_value_match(v, value, present) for v in m.or_match.value_matchers)
    return False


def metadata_match(m: metadata_pb2.MetadataMatcher, metadata: Mapping[str, Mapping[str, Any]]) -> bool:
    """``MetadataMatcher`` over dynamic metadata ``{filter: {key: value}}`` (``invert`` applied)."""
    node: Any = metadata.get(m.filter)
    present = node is not None
    for seg in m.path:
        if isinstance(node, Mapping) and seg.key in node:
            node = node[seg.key]
        else:
            present, node = False, None
            break
    return bool(_value_match(m.value, node, present) != m.invert)
