"""The status page at `/` on `metrics_listen`: what `refreshd status` shows, as one HTML page.

Server-rendered from the same document as the CLI (views.stored_status), with no script
and no external asset: the CSS is inline and the Content-Security-Policy allows that one
style block (by its hash) and nothing else, so the page loads nothing from anywhere. Every
value goes through the CLI's rules first (control characters escaped, known secrets
masked) and is then escaped for HTML, so a server named `<img src=x onerror=...>` is shown
as that text. Times are this machine's local time with their UTC offset, as `status` shows
them. The page reloads itself every REFRESH_SECONDS.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from refreshd.cli.text import when
from refreshd.core.vicidial import redact
from refreshd.escapes import safe
from refreshd.httpd import EndpointAnswer
from refreshd.logs import redactor
from refreshd.store import StateError
from refreshd.views import WAIT_WORDS, stored_status

if TYPE_CHECKING:
    from refreshd.daemon import Daemon

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "REFRESH_SECONDS",
    "daemon_page",
    "html_answer",
    "render_status",
]

REFRESH_SECONDS = 30

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fff; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
p.summary { margin: .2em 0 1em; color: #444; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35em .6em;
  border-bottom: 1px solid #ddd; }
th { background: #f1f3f5; font-weight: 600; white-space: nowrap; }
td.name { font-weight: 600; white-space: nowrap; }
time { white-space: nowrap; }
small { display: block; color: #555; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #b42318; font-weight: 600; }
.badge { display: inline-block; padding: 0 .45em; border-radius: .6em; font-size: .85em;
  font-weight: 600; color: #fff; }
.badge.suspended { background: #b42318; }
.badge.waiting { background: #b54708; }
.badge.notapplied { background: #7a2e0e; }
tr.suspended td { background: #fef3f2; }
tr.waiting td { background: #fffaeb; }
.down { color: #b42318; font-weight: 600; }
.error { padding: .8em; background: #fef3f2; border: 1px solid #b42318; }
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()

# Nothing may load from anywhere (no script, image, font, frame, form target); the one
# inline style block is allowed by its hash, not by 'unsafe-inline'.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
_COLUMNS = ("Server", "Last outcome", "Last call", "Last success", "Next run", "Held", "Verified")


def daemon_page(daemon: Daemon) -> EndpointAnswer:
    """The page for `daemon`'s state file and config, as they are now (called on the
    endpoint's answer threads, like a scrape)."""
    now = daemon.clock.now()
    scheduler = daemon.scheduler
    if scheduler is None:
        return html_answer(503, _page(now, '<p class="error">refreshd is starting.</p>'))
    try:
        document = stored_status(
            scheduler.config, scheduler.runner.store, now, running=True, pid=os.getpid()
        )
    except StateError as err:
        return html_answer(503, _page(now, f'<p class="error">{_text(str(err))}</p>'))
    return html_answer(200, render_status(document, now))


def render_status(document: dict[str, Any], now: datetime) -> str:
    """The whole page for a `views.status_document`."""
    servers = document["servers"]
    rows = "".join(_row(entry, now) for entry in servers) or (
        f'<tr><td colspan="{len(_COLUMNS)}">no servers configured</td></tr>'
    )
    head = "".join(f"<th>{name}</th>" for name in _COLUMNS)
    body = (
        f'<p class="summary">{_daemon_line(document["daemon"], now)}<br>'
        f"{_counts(servers)}</p>\n{_instances(document.get('instances', []), now)}"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"
    )
    return _page(now, body)


def _instances(instances: list[dict[str, Any]], now: datetime) -> str:
    """The instances sharing the store (live by their heartbeat) and the runs each holds."""
    if not instances:
        return ""
    items = []
    for each in instances:
        holds = ", ".join(
            f"{_text(held['server'])} (due {_time(datetime.fromisoformat(held['due']), now)})"
            for held in each["holds"]
        )
        beat = _time(datetime.fromisoformat(each["last_heartbeat"]), now)
        items.append(
            f"<li>{_text(each['instance'])}: {_text(each['host'])} pid {int(each['pid'])}, "
            f"heartbeat {beat}, holds {holds or 'nothing'}</li>"
        )
    return f'<p class="summary">Instances sharing the store:</p>\n<ul>{"".join(items)}</ul>\n'


def html_answer(status: int, page: str) -> EndpointAnswer:
    """`page` served with its Content-Type and the headers that keep it self-contained."""
    return EndpointAnswer(status, page.encode(), "text/html; charset=utf-8", _HEADERS)


def _page(now: datetime, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>refreshd status</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>refreshd status</h1>\n{body}"
        f'<p class="summary">Shown {_time(now, now)}; this page reloads every '
        f"{REFRESH_SECONDS} s. Times are this machine's local time.</p>\n</body>\n</html>\n"
    )


def _text(value: str) -> str:
    """The CLI's rules (known secrets masked, control characters escaped), then HTML's."""
    return html.escape(safe(redact(value, redactor.secrets)))


def _time(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    try:
        shown = moment.astimezone()  # this machine's zone, as `status` shows it
    except (OverflowError, OSError, ValueError):  # beyond the C library's local time
        shown = moment
    local = _text(shown.isoformat(timespec="seconds"))
    return f'<time datetime="{local}" title="{local}">{_text(_when(moment, now))}</time>'


def _when(moment: datetime, now: datetime) -> str:
    return when(moment, now, utc=False, offset=True)


def _at(entry: dict[str, Any], key: str, now: datetime) -> str:
    value = entry[key]
    return _time(datetime.fromisoformat(value) if value else None, now)


def _daemon_line(daemon: dict[str, Any], now: datetime) -> str:
    beat = daemon["heartbeat"]
    heartbeat = (
        f"last heartbeat {_time(datetime.fromisoformat(beat), now)}"
        if beat
        else "no heartbeat recorded"
    )
    if daemon["running"]:
        return f"Daemon running (pid {_text(str(daemon['pid']))}), {heartbeat}."
    return f'<span class="down">Daemon NOT running</span> ({heartbeat}).'


def _counts(servers: list[dict[str, Any]]) -> str:
    suspended = sum(bool(entry["suspended_until"]) for entry in servers)
    waiting = sum(
        bool(entry["credentials_wait_until"]) and not entry["suspended_until"] for entry in servers
    )
    unapplied = sum(
        bool(entry["verified"]) and not entry["verified"]["applied"] for entry in servers
    )
    return (
        f"{len(servers)} server(s): {suspended} suspended, {waiting} waiting for their "
        f"credentials, {unapplied} whose last verified refresh was not applied."
    )


def _row(entry: dict[str, Any], now: datetime) -> str:
    kind = "suspended" if entry["suspended_until"] else ""
    kind = kind or ("waiting" if entry["credentials_wait_until"] else "")
    outcome = entry["last_outcome"]
    shown = "-"
    if outcome:
        good = outcome in ("ok", "settled")  # settled: a lost call found taken, no call
        shown = f'<span class="{"ok" if good else "bad"}">{_text(outcome)}</span>'
    next_run = _at(entry, "next_run", now) if entry["next_run"] else "none ahead"
    if entry["next_slot"]:
        next_run += f"<small>slot from {_at(entry, 'next_slot', now)}</small>"
    cells = [
        f'<td class="name">{_text(entry["server"])}</td>',
        f"<td>{shown}</td>",
        f"<td>{_at(entry, 'last_attempt_at', now)}</td>",
        f"<td>{_at(entry, 'last_success_at', now)}</td>",
        f"<td>{next_run}</td>",
        f"<td>{_held(entry, now)}</td>",
        f"<td>{_verified(entry['verified'])}</td>",
    ]
    classes = f"server {kind}" if kind else "server"
    return f'<tr class="{classes}">{"".join(cells)}</tr>\n'


def _held(entry: dict[str, Any], now: datetime) -> str:
    if entry["suspended_until"]:
        reason = entry["suspension_reason"]
        return (
            f'<span class="badge suspended">suspended</span> until '
            f"{_at(entry, 'suspended_until', now)}"
            + (f"<small>{_text(reason)}</small>" if reason else "")
        )
    if entry["credentials_wait_until"]:
        words = WAIT_WORDS.get(entry["credentials_wait_kind"], "credentials wait")
        reason = entry["credentials_wait_reason"]
        return (
            f'<span class="badge waiting">waiting</span> {_text(words)} until '
            f"{_at(entry, 'credentials_wait_until', now)}"
            f"<small>credentials {_text(entry['credentials'])}"
            + (f": {_text(reason)}" if reason else "")
            + "</small>"
        )
    return "-"


def _verified(found: dict[str, Any] | None) -> str:
    if found is None:
        return "-"
    seconds = f"{found['seconds']:.0f}s"
    if found["applied"]:
        return f'<span class="ok">applied</span> ({seconds})'
    detail = found["detail"]
    return f'<span class="badge notapplied">NOT applied</span> ({seconds})' + (
        f"<small>{_text(detail)}</small>" if detail else ""
    )
