"""Console log lines (refreshd/console.py) and the format `logs.configure` picks: the JSON
line's fields in a short line, colour only on a terminal without NO_COLOR, control
characters escaped, secrets masked as in JSON."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from refreshd.console import ConsoleRenderer
from refreshd.logs import configure, get_logger, redactor

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a tty stdout does."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    configure()  # JSON on stdout, as every other test expects
    redactor.set_secrets(())


def logged(stream: io.StringIO, log_format: str, environ: dict[str, str] | None = None) -> str:
    configure(stream, log_format=log_format, environ=environ or {})
    get_logger().warning(
        "server.suspended",
        server="east-1",
        attempt=2,
        retry=None,
        detail='VICIdial said "no" = bad',
        flagged=[{"server_id": "dial2"}],
        empty="",
    )
    return stream.getvalue()


def test_a_console_line_has_every_field_of_the_json_line_in_the_same_order() -> None:
    as_json = json.loads(logged(io.StringIO(), "json"))
    line = logged(io.StringIO(), "console")
    assert line.count("\n") == 1
    stamp, level, event, rest = line.rstrip("\n").split(" ", 3)
    # The JSON line's timestamp, as it writes it (the two lines were logged apart).
    stamp_shape = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(stamp_shape, stamp)
    assert re.fullmatch(stamp_shape, as_json["timestamp"])
    assert (level, event) == ("warning", "server.suspended")
    assert rest == (
        'server=east-1 attempt=2 retry=null detail="VICIdial said \\"no\\" = bad" '
        'flagged=[{"server_id":"dial2"}] empty=""'
    )
    keys = [pair.split("=", 1)[0] for pair in re.findall(r'(\w+)=(?:"(?:[^"\\]|\\.)*"|\S+)', rest)]
    assert keys == [k for k in as_json if k not in ("timestamp", "level", "event")]


def test_auto_is_json_off_a_terminal_and_console_on_one() -> None:
    assert json.loads(logged(io.StringIO(), "auto"))["event"] == "server.suspended"
    line = logged(Terminal(), "auto")
    assert "\x1b[" in line
    assert ANSI.sub("", line).split(" ")[1:3] == ["warning", "server.suspended"]


def test_json_stays_json_on_a_terminal() -> None:
    assert json.loads(logged(Terminal(), "json"))["level"] == "warning"


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert "\x1b" not in logged(io.StringIO(), "console")
    assert "\x1b[33mwarning" in logged(Terminal(), "console")
    assert "\x1b" not in logged(Terminal(), "console", {"NO_COLOR": "1"})
    # no-color.org: an empty NO_COLOR does not count.
    assert "\x1b[" in logged(Terminal(), "console", {"NO_COLOR": ""})


def test_control_characters_from_outside_are_escaped_as_the_cli_does() -> None:
    stream = Terminal()
    configure(stream, log_format="console", environ={})
    get_logger().error("refresh.failed", detail="\x1b]0;owned\x07\rgone\u202e", server="a\nb")
    line = stream.getvalue()
    shown = ANSI.sub("", line)
    assert "\\x1b]0;owned\\x07\\rgone\\u202e" in shown
    assert "server=a\\nb" in shown
    # Only the renderer's own colours reach the terminal: no ESC other than theirs, one line.
    assert ANSI.sub("", line).count("\x1b") == 0
    assert line.count("\n") == 1


def test_a_secret_is_masked_in_console_lines_as_in_json() -> None:
    redactor.set_secrets(["Sekrit-pass-42"])
    for log_format in ("json", "console"):
        stream = io.StringIO()
        configure(stream, log_format=log_format, environ={})
        get_logger().error("refresh.failed", detail="Login incorrect: Sekrit-pass-42")
        assert "Sekrit-pass-42" not in stream.getvalue()
        assert "***" in stream.getvalue()


def test_a_traceback_follows_its_line_indented_each_line_escaped() -> None:
    stream = io.StringIO()
    configure(stream, log_format="console", environ={})
    try:
        raise ValueError("bad \x1b[2J value")
    except ValueError:
        get_logger().exception("daemon.failed", error="boom")
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    assert first.endswith("daemon.failed error=boom")
    assert rest[0] == "    Traceback (most recent call last):"
    assert rest[-1] == "    ValueError: bad \\x1b[2J value"


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_the_level_filter_keeps_that_level_and_above(level: str) -> None:
    stream = io.StringIO()
    configure(stream, level=level, log_format="json", environ={})
    log = get_logger()
    for name in ("debug", "info", "warning", "error"):
        getattr(log, name)(f"event.{name}")
    shown = [json.loads(line)["level"] for line in stream.getvalue().splitlines()]
    order = ["debug", "info", "warning", "error"]
    assert shown == order[order.index(level) :]


def test_the_renderer_alone_renders_an_event_without_colour_when_told() -> None:
    line = ConsoleRenderer(colour=False)(
        None, "info", {"timestamp": "T", "level": "info", "event": "e", "n": 1.5, "ok": True}
    )
    assert line == "T info    e n=1.5 ok=true"
