"""The request path as the HTTP connection manager hands it to filters and routing: escaped
slashes handling, RFC 3986 normalisation (``normalize_path``) and ``merge_slashes``, in Envoy's
order; and Envoy's URI template (``path_match_policy``) matching."""

from __future__ import annotations

import re
from functools import lru_cache

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def split_query(path: str) -> tuple[str, str]:
    """(path, "?query" or "") with any fragment dropped."""
    path = path.split("#", 1)[0]
    if "?" in path:
        p, q = path.split("?", 1)
        return p, "?" + q
    return path, ""


def _decode_unreserved(path: str) -> str:
    def one(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return _PCT.sub(one, path)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def normalize(path: str, *, normalize_path: bool, merge_slashes: bool, escaped_slashes: str) -> str:
    """``path`` (with query) after the connection manager's path handling."""
    p, query = split_query(path)
    if escaped_slashes in ("UNESCAPE_AND_FORWARD", "UNESCAPE_AND_REDIRECT"):
        p = re.sub(r"%2[Ff]", "/", p)
        p = re.sub(r"%5[Cc]", "\\\\", p)
    if normalize_path:
        p = _remove_dot_segments(_decode_unreserved(p.replace("\\", "/")))
    if merge_slashes:
        p = re.sub(r"/{2,}", "/", p)
    return p + query


_SEGMENT_CHARS = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]"


@lru_cache(maxsize=256)
def uri_template_regex(template: str) -> re.Pattern[str]:
    """Envoy's ``UriTemplateMatchConfig.path_template`` as a regex: ``*`` and ``{v}`` one path
    segment, ``**`` and ``{v=**}`` any number of segments (the rest of the path)."""
    out: list[str] = []
    i = 0
    while i < len(template):
        if template.startswith("**", i):
            out.append(f"{_SEGMENT_CHARS[:-1]}/]*")
            i += 2
        elif template[i] == "*":
            out.append(f"{_SEGMENT_CHARS}+")
            i += 1
        elif template[i] == "{":
            end = template.index("}", i)
            body = template[i + 1:end]
            _, _, pattern = body.partition("=")
            out.append(uri_template_regex(pattern).pattern[:-2] if pattern else f"{_SEGMENT_CHARS}+")
            i = end + 1
        else:
            out.append(re.escape(template[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def uri_template_match(template: str, path: str) -> bool:
    return uri_template_regex(template).match(split_query(path)[0]) is not None
