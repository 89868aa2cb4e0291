"""Scalar types the Istio APIs share: durations, percentages, ports, RE2 regexes, bounded strings.

Each type validates once at load time and raises a ``PydanticCustomError`` whose message reads well
after a field path (``spec.http[0].timeout: invalid duration "1.5x" ...``).  The translator can
then rely on every value being well formed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import re2
from pydantic import AfterValidator, BeforeValidator, PlainSerializer
from pydantic_core import PydanticCustomError

#: Istio caps user regexes at 1024 characters (Envoy's RE2 program-size limit is reached well
#: before pathological patterns finish compiling otherwise; see security bulletin 2026-006).
MAX_REGEX_LENGTH = 1024
#: RE2 program size above which Envoy rejects a regex by default (runtime key
#: ``re2.max_program_size.error_level``, default 100): checked here so Envoy never NACKs it.
MAX_REGEX_PROGRAM_SIZE = 100

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True, order=True, slots=True)
class Duration:
    """A non-negative duration with nanosecond precision (Go ``time.Duration`` semantics)."""

    nanos: int

    @property
    def seconds(self) -> int:
        return self.nanos // 1_000_000_000

    @property
    def subsecond_nanos(self) -> int:
        return self.nanos % 1_000_000_000

    @property
    def total_seconds(self) -> float:
        return self.nanos / 1e9

    @property
    def millis(self) -> int:
        return self.nanos // 1_000_000

    def __str__(self) -> str:
        if self.nanos % 1_000_000_000 == 0:
            return f"{self.nanos // 1_000_000_000}s"
        return f"{self.nanos / 1e9:.9f}".rstrip("0") + "s"


def parse_duration(value: Any) -> Duration:
    """Parse a Go-style duration ("1.5s", "100ms", "1h30m") or a protobuf-JSON one ("1.500s").

    Istio's CRDs accept both spellings.  Negative and unit-less values are rejected, except the
    literal ``0``.
    """
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("duration", "must be a duration string such as \"1.5s\" or \"100ms\"")
    text = str(value).strip()
    if text in ("0", ""):
        if text == "":
            raise PydanticCustomError("duration", "must be a duration string such as \"1.5s\" or \"100ms\"")
        return Duration(0)
    if text.startswith("-"):
        raise PydanticCustomError("duration", 'invalid duration "{value}": must not be negative', {"value": text})
    pos = 0
    total = 0.0
    exact = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        number, unit = match.group(1), match.group(2)
        scale = _UNITS_NS[unit]
        if "." in number:
            total += float(number) * scale
        else:
            exact += int(number) * scale
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise PydanticCustomError(
            "duration",
            'invalid duration "{value}": expected a number with a unit (ns, us, ms, s, m, h), e.g. "1.5s"',
            {"value": text},
        )
    nanos = exact + round(total)
    if nanos > 315_576_000_000 * 1_000_000_000:
        raise PydanticCustomError("duration", 'invalid duration "{value}": too large', {"value": text})
    return Duration(nanos)


def _serialize_duration(d: Duration) -> str:
    return str(d)


DurationField = Annotated[Duration, BeforeValidator(parse_duration), PlainSerializer(_serialize_duration)]


def _check_positive_duration(d: Duration) -> Duration:
    if d.nanos < 1_000_000:
        raise PydanticCustomError("duration", "must be at least 1ms")
    return d


#: A duration of at least 1 ms (Istio's ValidateDuration rule for timeouts and intervals).
PositiveDuration = Annotated[
    Duration,
    BeforeValidator(parse_duration),
    AfterValidator(_check_positive_duration),
    PlainSerializer(_serialize_duration),
]


def _between(lo: float, hi: float) -> Any:
    def check(v: Any) -> Any:
        if v < lo or v > hi:
            raise PydanticCustomError(
                "range", "must be between {lo} and {hi}", {"lo": _fmt(lo), "hi": _fmt(hi)}
            )
        return v

    return AfterValidator(check)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounded_int(lo: int, hi: int) -> Any:
    """``Annotated[int, bounded_int(0, 100)]`` -> "must be between 0 and 100"."""
    return _between(lo, hi)


def bounded_float(lo: float, hi: float) -> Any:
    return _between(lo, hi)


#: A TCP/UDP port number.
PortNumber = Annotated[int, _between(1, 65535)]
#: A percentage 0..100 as a double (Istio's ``Percent``).
Percentage = Annotated[float, _between(0.0, 100.0)]
#: An integer percentage 0..100 (legacy ``percent`` fields, weights).
IntPercentage = Annotated[int, _between(0, 100)]
NonNegativeInt = Annotated[int, _between(0, 2**31 - 1)]


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def _check_re2(pattern: str) -> str:
    if len(pattern) > MAX_REGEX_LENGTH:
        raise PydanticCustomError(
            "regex", "regex is {n} characters long; the maximum is {m}", {"n": len(pattern), "m": MAX_REGEX_LENGTH}
        )
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PydanticCustomError("regex", 'invalid RE2 regex "{p}": {err}', {"p": pattern, "err": reason}) from None
    if compiled.programsize > MAX_REGEX_PROGRAM_SIZE:
        raise PydanticCustomError(
            "regex",
            'regex "{p}" is too complex for Envoy (RE2 program size {n} > {m})',
            {"p": pattern, "n": compiled.programsize, "m": MAX_REGEX_PROGRAM_SIZE},
        )
    return pattern


#: A regular expression that must compile under RE2 (the engine Envoy uses), length-capped.
RE2Regex = Annotated[str, AfterValidator(_check_re2)]


def bounded_str(max_len: int) -> Any:
    def check(v: str) -> str:
        if len(v) > max_len:
            raise PydanticCustomError("length", "must be at most {m} characters", {"m": max_len})
        return v

    return AfterValidator(check)


#: General user strings placed into Envoy config: capped so one object cannot bloat every push.
ShortStr = Annotated[str, bounded_str(1024)]
