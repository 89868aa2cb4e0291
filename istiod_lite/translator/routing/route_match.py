"""VirtualService ``HTTPMatchRequest`` -> Envoy ``RouteMatch`` (Istio's ``TranslateRouteMatch``).

Facts: docs/istio-waypoint-shape.md §4 "Match mapping".  Details kept from Istio because
they change behaviour: an empty StringMatch (and ``regex: "*"``) means "header/parameter present";
``withoutHeaders`` inverts the match and treats a missing header as empty unless it is a presence
match; header matchers are sorted by name, then ``:method``, ``:authority`` and ``:scheme`` are
appended; ``case_sensitive`` is always set (``!ignoreUriCase``).  Query parameters are sorted by
name (Istio iterates a Go map; sorting makes the output deterministic).

Gateway semantics (routes converted from Gateway API HTTPRoutes): a prefix other than ``/`` becomes
``path_separated_prefix`` without its trailing ``/`` (``/api`` matches ``/api`` and ``/api/x``, not
``/apix``), as the Gateway API requires.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from istiod_lite.model.networking import HTTPMatchRequest, StringMatch

HEADER_METHOD = ":method"
HEADER_AUTHORITY = ":authority"
HEADER_SCHEME = ":scheme"


def string_matcher(m: StringMatch) -> string_pb2.StringMatcher | None:
    """``util.ConvertToEnvoyMatch``: exact, prefix or RE2 regex (None for an empty match)."""
    if m.exact is not None:
        return string_pb2.StringMatcher(exact=m.exact)
    if m.prefix is not None:
        return string_pb2.StringMatcher(prefix=m.prefix)
    if m.regex is not None:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.regex))
    return None


def is_presence(m: StringMatch | None) -> bool:
    """``canBeConvertedToPresentMatch``: empty, or the ``regex: "*"`` marker."""
    return m is None or m.is_empty or m.regex == "*"


def header_matcher(name: str, m: StringMatch) -> rc.HeaderMatcher:
    if is_presence(m):
        return rc.HeaderMatcher(name=name, present_match=True)
    return rc.HeaderMatcher(name=name, string_match=string_matcher(m))


def route_match(m: HTTPMatchRequest | None, gateway: bool = False) -> rc.RouteMatch:
    """The Envoy match of one Istio match (None: the catch-all ``prefix: /``); ``gateway``: the
    route has Gateway API semantics."""
    if m is None:
        return rc.RouteMatch(prefix="/")
    out = rc.RouteMatch()
    headers = [header_matcher(name, sm) for name, sm in m.headers.items()]
    for name, without in m.without_headers.items():
        hm = header_matcher(name, without)
        hm.invert_match = True
        if not is_presence(without):
            hm.treat_missing_header_as_empty = True  # conflicts with present_match in Envoy
        headers.append(hm)
    headers.sort(key=lambda h: h.name)  # stable: with/without of one name keep their order
    uri = m.uri
    if uri is None or uri.is_empty:
        out.prefix = "/"
    elif uri.exact is not None:
        out.path = uri.exact
    elif uri.prefix is not None:
        if gateway and uri.prefix != "/":
            out.path_separated_prefix = uri.prefix.removesuffix("/")
        else:
            out.prefix = uri.prefix
    else:
        out.safe_regex.regex = uri.regex or ""
    out.case_sensitive.value = not m.ignore_uri_case
    out.case_sensitive.SetInParent()
    for pseudo, psm in ((HEADER_METHOD, m.method), (HEADER_AUTHORITY, m.authority), (HEADER_SCHEME, m.scheme)):
        if psm is not None:
            headers.append(header_matcher(pseudo, psm))
    out.headers.extend(headers)
    for param in sorted(m.query_params):
        qsm = m.query_params[param]
        if is_presence(qsm):
            out.query_parameters.add(name=param, present_match=True)
        else:
            out.query_parameters.add(name=param, string_match=string_matcher(qsm))
    return out


def is_catch_all(match: rc.RouteMatch) -> bool:
    """``route.IsCatchAllRoute``: ``/`` prefix (or ``.*`` regex) with no header or parameter match;
    later routes can never be reached."""
    which = match.WhichOneof("path_specifier")
    if which == "prefix":
        catch_all = match.prefix == "/"
    elif which == "path_separated_prefix":
        catch_all = match.path_separated_prefix == "/"
    elif which == "safe_regex":
        catch_all = match.safe_regex.regex == ".*"
    else:
        catch_all = False
    return catch_all and not match.headers and not match.query_parameters and not match.dynamic_metadata


def path_pattern(match: rc.RouteMatch) -> str:
    """The path part of Istio's decorator operation (``GetRouteOperation``)."""
    which = match.WhichOneof("path_specifier")
    if which == "prefix":
        return str(match.prefix) + "*"
    if which == "path":
        return str(match.path)
    if which == "safe_regex":
        return str(match.safe_regex.regex)
    return "/*"
