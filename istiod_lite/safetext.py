"""Render a string a client chose (a node id, node metadata, a NACK message, a peer) safely for a
log line or a terminal.

Such strings arrive before and regardless of authentication.  Written raw, a newline forges a
whole log line, a carriage return hides one, and an ANSI escape repaints the operator's terminal
(or sets its title).  ``safe`` escapes every character that is not printable — control
characters, Unicode line/paragraph separators, bidi overrides — the way ``repr`` does, escapes
the backslash itself (so ``\\n`` typed by a client cannot pass for an escaped newline), and bounds
the length so one request cannot flood a log.  Ordinary text (a well-formed node id) comes out
unchanged, so logs stay readable and greppable.
"""

from __future__ import annotations

#: Characters kept from a string before it is cut (escaping can make the result longer).
DEFAULT_LIMIT = 256

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as text on one line, with no raw control character, at most ``limit`` characters
    of it kept (the rest is counted, not shown)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit if len(text) > limit else 0
    if cut:
        text = text[:limit]
    if not (text.isprintable() and "\\" not in text):
        text = "".join(map(_escape, text))
    return f"{text}...(+{cut} chars)" if cut else text
