"""Log lines for a person at a terminal: the JSON line's fields, shorter and in colour.

    2026-11-30T01:02:03.412Z info    refresh.succeeded server=east-1 outcome=ok attempt=1

Every field of the JSON line is there, in the same order, as `key=value`: text as it is
(quoted when it holds a space, an `=` or a quote, or is empty), anything else as JSON
(`null`, `true`, `[...]`). Control characters are escaped the CLI's way (escapes.safe),
so a name or an answer cannot rewrite the terminal; a traceback follows its line, indented.
Colour (ANSI) only when asked for: `logs.configure` asks on a terminal without NO_COLOR.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from refreshd.escapes import safe

__all__ = ["ConsoleRenderer"]

_RESET = "\x1b[0m"
_LEVEL_COLOURS = {
    "debug": "\x1b[2m",  # dim
    "info": "\x1b[32m",  # green
    "warning": "\x1b[33m",  # yellow
    "error": "\x1b[1;31m",  # bold red
    "critical": "\x1b[1;31m",
}
_EVENT_COLOUR = "\x1b[1m"  # bold
_KEY_COLOUR = "\x1b[36m"  # cyan
_LEVEL_WIDTH = len("warning")
# Text that would not read back as one value without quotes.
_QUOTED = (" ", "=", '"')


class ConsoleRenderer:
    """A structlog renderer (the last processor): one short line per event."""

    def __init__(self, *, colour: bool) -> None:
        self._colour = colour

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        fields = dict(event_dict)
        timestamp = _text(fields.pop("timestamp", ""))
        level = str(fields.pop("level", method_name))
        event = _text(fields.pop("event", ""))
        exception = fields.pop("exception", None)
        parts = [
            timestamp,
            self._paint(_LEVEL_COLOURS.get(level, ""), level.ljust(_LEVEL_WIDTH)),
            self._paint(_EVENT_COLOUR, event),
            *(f"{self._paint(_KEY_COLOUR, safe(str(k)))}={_value(v)}" for k, v in fields.items()),
        ]
        line = " ".join(part for part in parts if part)
        if exception:
            line += "".join(f"\n    {safe(row)}" for row in str(exception).splitlines())
        return line

    def _paint(self, colour: str, text: str) -> str:
        return f"{colour}{text}{_RESET}" if self._colour and colour and text else text


def _text(value: Any) -> str:
    return safe(value if isinstance(value, str) else json.dumps(value, default=str))


def _value(value: Any) -> str:
    if isinstance(value, str):
        shown = safe(value)
        if not shown or any(ch in shown for ch in _QUOTED):
            return '"' + shown.replace('"', '\\"') + '"'
        return shown
    # Numbers, booleans, None, lists and tables as in the JSON line, control characters and
    # all other unprintable ones escaped (json.dumps leaves bidi overrides as they are).
    return safe(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))
