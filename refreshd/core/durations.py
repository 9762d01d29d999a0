"""Duration values of the config and the CLI: '90', '30s', '10m', '1.5h', '1h30m' (pure)."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
# [0-9], not \d: \d also matches other scripts' digits.
_NUMBER = r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+"
_PLAIN = re.compile(_NUMBER)
_PART = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]+)")
_HELP = "use a number of seconds or a number with s, m, h or d, e.g. '30s', '10m', '1h'"


def parse_duration(value: str | int | float) -> timedelta:
    """A number of seconds, or a string of numbers with units s, m, h, d ('1h30m').

    Raises ValueError, with a message saying how to write one, for anything else
    and for negative values.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r}: {_HELP}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r}: {_HELP}")
        if value < 0:
            raise ValueError(f"{value!r}: a duration cannot be negative")
        return _from_seconds(Decimal(value), value)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"{value!r}: a duration cannot be negative")
    if _PLAIN.fullmatch(text):
        return _from_seconds(Decimal(text), value)
    return _from_seconds(_compound_seconds(text, value), value)


def format_duration(duration: timedelta) -> str:
    """The shortest compound form, largest unit first: '1d2h', '1h30m', '45s', '0.5s', '0s'."""
    if duration < timedelta(0):
        return "-" + format_duration(-duration)
    whole, micro = divmod(duration // timedelta(microseconds=1), 1_000_000)
    parts: list[str] = []
    for unit, size in _UNIT_SECONDS.items():
        count, whole = divmod(whole, size)
        if unit == "s" and micro:
            parts.append(f"{count}.{micro:06d}".rstrip("0") + "s")
        elif count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _compound_seconds(text: str, original: str) -> Decimal:
    total = Decimal(0)
    seen: set[str] = set()
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(f"{original!r}: {_HELP}")
        number, unit = match[1], match[2]
        if unit not in _UNIT_SECONDS:
            raise ValueError(f"{original!r}: unknown unit {unit!r}; {_HELP}")
        if unit in seen:
            raise ValueError(f"{original!r}: unit {unit!r} given twice; {_HELP}")
        seen.add(unit)
        total += Decimal(number) * _UNIT_SECONDS[unit]
        position = match.end()
    if not seen:
        raise ValueError(f"{original!r}: {_HELP}")
    return total


def _from_seconds(seconds: Decimal, original: object) -> timedelta:
    # Decimal, not float: '0.1s' is exactly 100 ms, and format_duration's output parses
    # back to the same value.
    micro = (seconds * 1_000_000).to_integral_value(rounding=ROUND_HALF_EVEN)
    try:
        return timedelta(microseconds=int(micro))
    except OverflowError:
        raise ValueError(f"{original!r}: too long a duration") from None
