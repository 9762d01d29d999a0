"""A notification's body: "json" (the event as logged) or "slack" (one readable line: the
server, what happened, what to do). Every string is masked with the config's secrets, as
the log is: no password, webhook or ping URL ever leaves in a body."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from refreshd.core.secrets import Secrets
from refreshd.core.vicidial import redact

__all__ = ["body", "slack_text"]

# What to do after each outcome that suspends a server or a login.
_ADVICE = {
    "permission_denied": "give the VICIdial user API access with the server_refresh function "
    "(Admin > Users), then reload refreshd (SIGHUP)",
    "not_found": "check the server's api_url: it must end in /vicidial/non_agent_api.php",
    "ip_blocked": "allow refreshd's address in VICIdial's API allowed-IP list for this user",
    "tls_rejected": "make the certificate trusted (ca_file in [client] or the server's table) "
    "or renew it",
    "proxy_refused": "fix [client] proxy: see the refresh.failed line's detail",
    "auth_failed": "check the user and password in VICIdial and in the [credentials] table; a "
    "new password, then a reload (SIGHUP), ends the wait",
    "locked_out": "unlock the user in VICIdial (or let its lock-out end), and check the password",
    "transient": "check that VICIdial's web server answers: refreshd check --online",
    "unexpected": "check that api_url is VICIdial's API: refreshd check --online",
}
_SLOT_ADVICE = (
    "see refreshd status and refreshd history for the failed calls; the next slot runs as planned"
)
_NOT_APPLIED_ADVICE = (
    "check that the flagged telephony servers run VICIdial's keepalive "
    "(ADMIN_keepalive_ALL.pl) from cron"
)


def body(
    fmt: str,
    event: str,
    level: str,
    fields: Mapping[str, object],
    now: datetime,
    secrets: Iterable[str],
) -> bytes:
    """The POST body of `event` (with its log `level` and `fields`) in format `fmt`."""
    masked = secrets if isinstance(secrets, Secrets) else Secrets(secrets)
    clean = {key: _plain(value, masked) for key, value in fields.items()}
    if fmt == "slack":
        return json.dumps(
            {"text": _slack_escaped(redact(slack_text(event, clean), masked))}
        ).encode()
    line = {"timestamp": _iso(now), "level": level, "event": event, **clean}
    return json.dumps(line, ensure_ascii=False).encode()


def slack_text(event: str, fields: Mapping[str, object]) -> str:
    """One line a person can act on: the server, what happened, what to do."""
    server = fields.get("server")
    who = f"*{server}*" if server else "refreshd"
    outcome = str(fields.get("outcome") or "")
    reason = fields.get("reason")
    why = f" ({reason})" if reason else ""
    if event == "server.suspended":
        text = f"{who}: refreshes suspended until {fields.get('suspended_until')}{why}."
        return _with_advice(text, _ADVICE.get(outcome), fields)
    if event == "credentials.suspended":
        text = (
            f"{who}: logins as credentials {fields.get('credentials')!r} paused until "
            f"{fields.get('suspended_until')}{why}."
        )
        return _with_advice(text, _ADVICE.get(outcome), fields)
    if event in ("server.resumed", "credentials.resumed"):
        what = (
            "refreshes" if event == "server.resumed" else f"logins as {fields.get('credentials')!r}"
        )
        return f"{who}: {what} resumed{why}. Nothing to do."
    if event == "slot.missed":
        text = (
            f"{who}: the slot {fields.get('slot')} to {fields.get('slot_end')} ended without a "
            f"successful refresh ({fields.get('attempts')} attempts, last outcome "
            f"{fields.get('outcome')})."
        )
        return _with_advice(text, _SLOT_ADVICE, fields)
    if event == "refresh.not_applied":
        flagged = fields.get("flagged")
        still = (
            f"{len(flagged)} telephony servers still flagged" if isinstance(flagged, list) else None
        )
        text = (
            f"{who}: a refresh was sent but not applied after {fields.get('seconds')} s "
            f"({still or fields.get('error')})."
        )
        return _with_advice(text, _NOT_APPLIED_ADVICE, fields)
    details = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "server")
    return f"{who}: {event}" + (f" ({details})" if details else "") + "."


def _slack_escaped(text: str) -> str:
    """Slack's own escaping of message text: `<...>` is markup there (`<!channel>` mentions
    everyone, `<url|words>` disguises a link), and a detail is text from outside (a web
    server's answer), which must reach the channel as the text it is."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _with_advice(text: str, advice: str | None, fields: Mapping[str, object]) -> str:
    # The config's own advice, where the event carries one, comes first.
    told = fields.get("config_error") or advice
    return f"{text} What to do: {told}." if told else text


def _plain(value: object, secrets: Secrets) -> object:
    """A field as JSON holds it, as the log writes it: times in ISO UTC, strings masked."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list | tuple):
        return [_plain(v, secrets) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, secrets) for k, v in value.items()}
    if value is None or isinstance(value, int | float | bool):
        return value
    return redact(str(value), secrets)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
