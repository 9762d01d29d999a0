"""The status page in-process: what `render_status` writes for a status document (every value
escaped, secrets masked, local times with their offset) and how the endpoint serves it at
`/` (GET and HEAD, its Content-Type and Content-Security-Policy)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from refreshd.clock import FakeClock
from refreshd.httpd import EndpointAnswer, MetricsServer
from refreshd.logs import redactor
from refreshd.metrics import Metrics
from refreshd.statuspage import daemon_page, html_answer, render_status
from refreshd.store import StateError
from refreshd.views import iso

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
HOSTILE = "<img src=x onerror=alert(1)>\"'&\x1b[2J"


def entry(name: str, **fields: Any) -> dict[str, Any]:
    """One server of a `views.status_document`, nothing known unless given."""
    return {
        "server": name,
        "last_outcome": None,
        "last_attempt_at": None,
        "last_success_at": None,
        "next_run": None,
        "next_slot": None,
        "suspended_until": None,
        "suspension_reason": None,
        "credentials": "main",
        "credentials_wait_until": None,
        "credentials_wait_kind": None,
        "credentials_wait_reason": None,
        "verified": None,
        **fields,
    }


def document(*servers: dict[str, Any], running: bool = True) -> dict[str, Any]:
    daemon = {"running": running, "pid": 4242, "heartbeat": iso(NOW - timedelta(seconds=5))}
    return {"at": iso(NOW), "daemon": daemon, "servers": list(servers)}


def hostile_document() -> dict[str, Any]:
    later = iso(NOW + timedelta(hours=1))
    return document(
        entry(
            HOSTILE,
            last_outcome=HOSTILE,
            suspended_until=later,
            suspension_reason=HOSTILE,
            credentials=HOSTILE,
            verified={"applied": False, "call_at": iso(NOW), "seconds": 180.0, "detail": HOSTILE},
        ),
        entry(
            "west-1",
            credentials=HOSTILE,
            credentials_wait_until=later,
            credentials_wait_kind=HOSTILE,
            credentials_wait_reason=HOSTILE,
        ),
    )


def test_every_value_is_escaped_for_html_after_the_cli_escapes_control_characters() -> None:
    page = render_status(hostile_document(), NOW)
    assert "<img" not in page
    assert "\x1b" not in page
    escaped = "&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;\\x1b[2J"
    # The name, the outcome, the suspension's reason, the verdict's detail, the wait's
    # reason and the credentials' name (the suspended server's is not shown: it is not held
    # by its credentials).
    assert page.count(escaped) == 6
    assert "<script" not in page


def test_a_known_secret_in_a_value_is_masked() -> None:
    redactor.set_secrets(["Sekrit-pass-42"])
    try:
        page = render_status(
            document(entry("east-1", suspended_until=iso(NOW), suspension_reason="Sekrit-pass-42")),
            NOW - timedelta(minutes=1),
        )
    finally:
        redactor.set_secrets(())
    assert "Sekrit-pass-42" not in page
    assert "***" in page


@pytest.fixture
def new_york() -> Iterator[None]:
    """This process's local zone set to America/New_York for the test, then put back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_times_are_this_machines_local_time_with_their_utc_offset() -> None:
    page = render_status(
        document(entry("east-1", last_outcome="ok", last_success_at=iso(NOW))), NOW
    )
    # 07:00 UTC is 02:00 in New York in November (EST, UTC-05:00).
    assert "Mon 02:00 UTC-05:00, now" in page
    assert 'datetime="2026-11-30T02:00:00-05:00"' in page


def test_a_suspended_server_and_a_waiting_one_say_so_and_a_verdict_shows() -> None:
    later = iso(NOW + timedelta(minutes=30))
    page = render_status(
        document(
            entry("east-1", last_outcome="permission_denied", suspended_until=later),
            entry(
                "west-1",
                last_outcome="auth_failed",
                credentials_wait_until=later,
                credentials_wait_kind="refused_login",
            ),
            entry(
                "north-1",
                last_outcome="ok",
                verified={"applied": True, "call_at": iso(NOW), "seconds": 42.0, "detail": None},
            ),
        ),
        NOW,
    )
    rows = re.findall(r'<tr class="([^"]*)"><td class="name">([^<]*)</td>', page)
    assert rows == [
        ("server suspended", "east-1"),
        ("server waiting", "west-1"),
        ("server", "north-1"),
    ]
    assert "login refused: credentials wait until" in page
    assert "applied</span> (42s)" in page
    assert "1 suspended, 1 waiting" in page


def test_the_page_reloads_itself_and_says_when_the_daemon_is_not_running() -> None:
    page = render_status(document(running=False), NOW)
    assert '<meta http-equiv="refresh" content="30">' in page
    assert "Daemon NOT running" in page
    assert "no servers configured" in page


def test_a_state_file_that_cannot_be_read_is_a_503_page_saying_why() -> None:
    class Unreadable:
        def all_server_states(self) -> None:
            raise StateError("state file /var/lib/refreshd/state.db: disk I/O error")

    daemon = SimpleNamespace(
        clock=FakeClock(NOW),
        scheduler=SimpleNamespace(config=None, runner=SimpleNamespace(store=Unreadable())),
    )
    answer = daemon_page(daemon)  # type: ignore[arg-type]
    assert answer.status == 503
    assert answer.content_type == "text/html; charset=utf-8"
    assert b"state.db: disk I/O error" in answer.body


# --- served at / -----------------------------------------------------------------------


@contextlib.contextmanager
def serving(page: str | None) -> Iterator[int]:
    def answer() -> EndpointAnswer:
        assert page is not None
        return html_answer(200, page)

    server = MetricsServer(
        "127.0.0.1", 0, Metrics().registry, lambda: True, page=answer if page else None
    )
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def request(port: int, method: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def test_get_and_head_serve_the_page_as_html_under_a_policy_that_loads_nothing() -> None:
    page = render_status(hostile_document(), NOW)
    with serving(page) as port:
        status, headers, body = request(port, "GET")
        head_status, head_headers, head_body = request(port, "HEAD")
        assert request(port, "GET", "/?x=1")[0] == 200
        assert request(port, "POST")[0] == 405
    assert status == 200
    assert body.decode() == page
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert (head_status, head_body) == (200, b"")
    assert head_headers == headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    # The one style block the policy allows is the page's own, by its hash.
    (style,) = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy


def test_without_a_page_slash_is_not_found_as_before() -> None:
    with serving(None) as port:
        assert request(port, "GET")[0] == 404
        assert request(port, "GET", "/healthz")[0] == 200


def test_the_instances_sharing_the_store_are_listed_with_what_each_holds() -> None:
    page_document = document(entry("east-1"))
    page_document["instances"] = [
        {
            "instance": "web-1",
            "host": "host-a",
            "pid": 101,
            "started": iso(NOW - timedelta(hours=1)),
            "last_heartbeat": iso(NOW - timedelta(seconds=2)),
            "holds": [{"server": "east-1", "due": iso(NOW)}],
        },
        {
            "instance": HOSTILE,
            "host": "host-b",
            "pid": 202,
            "started": iso(NOW - timedelta(hours=1)),
            "last_heartbeat": iso(NOW - timedelta(seconds=4)),
            "holds": [],
        },
    ]
    page = render_status(page_document, NOW)
    assert "Instances sharing the store" in page
    assert "web-1: host-a pid 101" in page
    assert "holds east-1 (due " in page
    assert "host-b pid 202" in page
    assert "holds nothing" in page
    assert "<img" not in page
    # A single daemon (no instance row yet) shows no list.
    assert "Instances sharing" not in render_status(document(entry("east-1")), NOW)
