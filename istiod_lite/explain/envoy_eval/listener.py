"""Which filter chain of ``main_internal`` a connection lands on: the listener's
``filter_chain_matcher`` (xDS matcher tree: destination IP ranges, destination port, application
protocol) evaluated as Envoy does."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from google.protobuf import wrappers_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from istiod_lite.explain.envoy_eval.config import type_name, unpack


@dataclass(frozen=True)
class ConnectionInputs:
    """What the matcher inputs read for one connection."""

    dest_ip: str
    dest_port: int
    application_protocol: str = "http/1.1"  # what http_inspector reports for an HTTP/1.1 request
    server_name: str = ""


@dataclass
class ChainMatch:
    chain: listener_components_pb2.FilterChain | None
    steps: list[str] = field(default_factory=list)


def _input_value(inp: str, c: ConnectionInputs) -> str | None:
    if inp.endswith("DestinationIPInput"):
        return c.dest_ip
    if inp.endswith("DestinationPortInput"):
        return str(c.dest_port)
    if inp.endswith("ApplicationProtocolInput"):
        return f"'{c.application_protocol}'" if c.application_protocol else ""
    if inp.endswith("ServerNameInput"):
        return c.server_name
    if inp.endswith("TransportProtocolInput"):
        return "raw_buffer"
    return None


def _ip_ranges(ipm: ip_pb2.IPMatcher, ip: str) -> list[tuple[int, ip_pb2.IPMatcher.IPRangeMatcher]]:
    addr = ipaddress.ip_address(ip)
    hits: list[tuple[int, ip_pb2.IPMatcher.IPRangeMatcher]] = []
    for rm in ipm.range_matchers:
        best = -1
        for r in rm.ranges:
            plen = r.prefix_len.value if r.HasField("prefix_len") else (32 if ":" not in r.address_prefix else 128)
            try:
                if addr in ipaddress.ip_network(f"{r.address_prefix}/{plen}", strict=False):
                    best = max(best, plen)
            except ValueError:
                continue
        if best >= 0:
            hits.append((best, rm))
    hits.sort(key=lambda h: -h[0])  # longest prefix first
    return hits


def _on_match(om: matcher_pb2.Matcher.OnMatch, c: ConnectionInputs, steps: list[str]) -> str | None:
    if om.HasField("matcher"):
        return _matcher(om.matcher, c, steps)
    msg = unpack(om.action.typed_config)
    if isinstance(msg, wrappers_pb2.StringValue):
        return str(msg.value)
    return str(om.action.name)


def _matcher(m: matcher_pb2.Matcher, c: ConnectionInputs, steps: list[str]) -> str | None:
    tree = m.matcher_tree
    value = _input_value(type_name(tree.input.typed_config), c)
    found: str | None = None
    if tree.HasField("exact_match_map"):
        om = tree.exact_match_map.map.get(value or "")
        steps.append(f"{tree.input.name} {value!s}: " + ("matched" if om is not None else "no entry"))
        if om is not None:
            found = _on_match(om, c, steps)
    elif tree.HasField("prefix_match_map"):
        for key in sorted(tree.prefix_match_map.map, key=len, reverse=True):
            if (value or "").startswith(key):
                steps.append(f"{tree.input.name} {value!s}: prefix {key!r}")
                found = _on_match(tree.prefix_match_map.map[key], c, steps)
                if found is not None:
                    break
    elif tree.HasField("custom_match"):
        ipm = unpack(tree.custom_match.typed_config)
        if isinstance(ipm, ip_pb2.IPMatcher) and value is not None:
            hits = _ip_ranges(ipm, value)
            steps.append(f"{tree.input.name} {value}: " + (f"in a /{hits[0][0]} range" if hits else "in no range"))
            for _, rm in hits:
                found = _on_match(rm.on_match, c, steps)
                if found is not None or rm.exclusive:
                    break
    if found is None and m.HasField("on_no_match"):
        steps.append(f"{tree.input.name}: on_no_match")
        found = _on_match(m.on_no_match, c, steps)
    return found


def select_chain(listener: listener_pb2.Listener, c: ConnectionInputs) -> ChainMatch:
    """The filter chain the connection would use (``None``: Envoy closes it)."""
    steps: list[str] = []
    if listener.HasField("filter_chain_matcher"):
        name = _matcher(listener.filter_chain_matcher, c, steps)
        for fc in listener.filter_chains:
            if name is not None and fc.name == name:
                return ChainMatch(fc, steps)
        if name is None and listener.HasField("default_filter_chain"):
            steps.append("default filter chain")
            return ChainMatch(listener.default_filter_chain, steps)
        return ChainMatch(None, steps)
    # Legacy filter_chain_match: destination port only (all this translator would use).
    for fc in listener.filter_chains:
        fcm = fc.filter_chain_match
        if fcm.HasField("destination_port") and fcm.destination_port.value != c.dest_port:
            continue
        return ChainMatch(fc, [f"filter_chain_match on port {c.dest_port}"])
    return ChainMatch(None, steps)
