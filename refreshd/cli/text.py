"""What reaches a terminal: times as people read them, control characters made visible,
aligned tables, and a stdout that writes any character whatever its encoding.

Text from outside (VICIdial's answers kept in the history, names, paths, arguments) may hold
ESC sequences, CR or BEL that would rewrite or hide what a terminal shows: every human line
goes through `safe` (refreshd/escapes.py), which writes them as Python escapes (`\\x1b`).
JSON output needs nothing: json.dumps escapes them itself.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from refreshd.escapes import safe

__all__ = ["print_table", "relative", "safe", "say", "survive_any_encoding", "when"]

# Beyond this, a weekday alone is ambiguous: the date is shown too.
_NEAR = timedelta(days=6)


def survive_any_encoding() -> None:
    """Make stdout write a character its encoding lacks (an ASCII locale,
    PYTHONIOENCODING=ascii, a C locale under cron) as a backslash escape instead of raising:
    names, paths and VICIdial's answers may hold any character, and every command prints
    through it. (Python's stderr already escapes so, whatever the encoding.)"""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def say(text: str) -> None:
    """A message for the operator on stderr, each of its lines made safe."""
    print("\n".join(safe(line) for line in text.split("\n")), file=sys.stderr)


def when(
    moment: datetime | None,
    now: datetime,
    *,
    utc: bool,
    seconds: bool = False,
    offset: bool = False,
) -> str:
    """'Mon 02:00 EST, in 13h' (local time, or UTC with `utc`), the date added when it is
    more than six days away; never microseconds. With `offset` the zone is written as its
    offset ('Mon 02:00 UTC-05:00, in 13h'). '-' for None."""
    if moment is None:
        return "-"
    shown = _shown(moment, utc=utc)
    delta = moment - now
    day = "%a" if abs(delta) <= _NEAR else "%a %Y-%m-%d"
    clock = "%H:%M:%S" if seconds else "%H:%M"
    zone = shown.tzname() or shown.strftime("%z")
    if offset:
        zone = _offset(shown)
    return f"{shown.strftime(f'{day} {clock}')} {zone}, {relative(delta)}"


def _offset(moment: datetime) -> str:
    """'UTC-05:00'; to the minute (a zone's old local mean time had seconds too)."""
    minutes = int((moment.utcoffset() or timedelta(0)).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _shown(moment: datetime, *, utc: bool) -> datetime:
    if not utc:
        try:
            return moment.astimezone()  # the machine's zone ($TZ, /etc/localtime)
        except (OverflowError, OSError, ValueError):
            pass  # outside what the C library's local time covers: show UTC
    return moment.astimezone(UTC)


def relative(delta: timedelta) -> str:
    """'in 13h', '5m ago', 'now': the largest whole unit (days from two days on)."""
    seconds = int(abs(delta).total_seconds())
    if seconds == 0:
        return "now"
    for size, unit in ((2 * 86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")):
        if seconds >= size:
            count = seconds // (86_400 if unit == "d" else size)
            break
    text = f"{count}{unit}"
    return f"in {text}" if delta > timedelta(0) else f"{text} ago"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned, two spaces apart, every cell made safe first."""
    lines = [[safe(str(cell)) for cell in row] for row in [headers, *rows]]
    widths = [max(len(cell) for cell in column) for column in zip(*lines, strict=False)]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip())
