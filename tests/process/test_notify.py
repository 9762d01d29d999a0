"""Notifications and pings from a real `refreshd run`, to a real HTTP listener on loopback:
one POST per suspension (and per other event asked for), one /start and one success ping
per slot, /fail for a missed slot; with the listener down, refreshes keep their time and
each failed delivery is one `notify.failed` line. No webhook or ping URL token in any
output."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path
from typing import Any

from refreshd.config.notify import DEFAULT_EVENTS
from refreshd.simulator import Simulator
from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    NOAPI_PASSWORD,
    NOAPI_USER,
    instant,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import EXIT_OK, DaemonProcess, RunRefreshd, StartDaemon
from tests.support.listener import listening
from tests.support.ports import refused_port
from tests.support.simulator import api_path
from tests.support.waiting import eventually

HOOK_TOKEN = "T0KEN-hook-s3cr3t"
CHAT_TOKEN = "T0KEN-chat-s3cr3t"
PING_TOKEN = "uuid-ping-s3cr3t"
TOKENS = (HOOK_TOKEN, CHAT_TOKEN, PING_TOKEN)
CREDENTIALS = {
    "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
    "noapi": {"user": NOAPI_USER, "password": NOAPI_PASSWORD},
    # Its own login, so that its 500s spend no other server's failed-login budget.
    "outage": {"user": "outage", "password": "outage-pass-500"},
}


def _server(
    sim: Simulator, index: int, credentials: str, *windows: str, **more: Any
) -> dict[str, Any]:
    return {
        "name": f"s{index}",
        "api_url": sim.url + api_path(index),
        "credentials": credentials,
        "windows": list(windows),
        **more,
    }


def _write(tmp_path: Path, servers: list[dict[str, Any]], notify: list[dict[str, Any]]) -> Path:
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        daemon={
            "state_path": str(tmp_path / "state.db"),
            "metrics_listen": "127.0.0.1:0",
            "shutdown_grace": "2s",
        },
        backoff={"retry_initial": "1s", "retry_max": "1s"},
        credentials=CREDENTIALS,
        servers=servers,
        notify=notify,
    )


def _no_token_in(*texts: str) -> None:
    for text in texts:
        assert not [token for token in TOKENS if token in text], text[-2000:]


def test_one_post_per_event_and_the_ping_protocol_per_slot(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, run_refreshd: RunRefreshd
) -> None:
    simulator.set_fault("http500", path=api_path(2))
    with listening() as listener:
        (tmp_path / "chat.webhook").write_text(f"{listener.url}/chat/{CHAT_TOKEN}\n")
        config = _write(
            tmp_path,
            [
                # Two slots, each refreshed once: /start, success, /start, success. The first
                # is open 14 s after the config is written: a loaded machine (both cores
                # busy) took 8 s to start the daemon.
                _server(
                    simulator,
                    0,
                    "main",
                    window_from_now(-1, 15),
                    window_from_now(15, 3),
                    ping_url=f"{listener.url}/ping/{PING_TOKEN}-s0",
                ),
                # Permission denied: suspended once (an hour), whatever else happens.
                _server(simulator, 1, "noapi", window_from_now(-1, 600)),
                # 500s until its slot ends: /start, then /fail.
                _server(simulator, 2, "outage", window_from_now(-1, 15), ping_url_env="S2_PING"),
            ],
            [
                {"name": "ops", "url_env": "OPS_HOOK"},
                {
                    "name": "chat",
                    "url_file": "chat.webhook",
                    "format": "slack",
                    "events": ["server.suspended"],
                },
            ],
        )
        env = {
            "OPS_HOOK": f"{listener.url}/hook/{HOOK_TOKEN}",
            "S2_PING": f"{listener.url}/ping/{PING_TOKEN}-s2",
        }
        daemon = start_daemon(config, env=env)
        port = daemon.metrics_port()
        daemon.wait_for("refresh.succeeded", server="s0", count=2, timeout=30)
        daemon.wait_for("server.suspended", server="s1")
        daemon.wait_for("slot.missed", server="s2", timeout=30)
        s0, s2 = f"/ping/{PING_TOKEN}-s0", f"/ping/{PING_TOKEN}-s2"
        eventually(lambda: len(listener.paths(s0)) == 4, what="s0's four pings")
        eventually(lambda: f"{s2}/fail" in listener.paths(s2), what="s2's /fail")
        eventually(lambda: len(listener.paths("/chat/")) == 1, what="the Slack line")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert daemon.stop() == EXIT_OK
        received = listener.received

    assert listener.paths(s0) == [f"{s0}/start", s0, f"{s0}/start", s0]
    assert listener.paths(s2) == [f"{s2}/start", f"{s2}/fail"]
    assert {r.method for r in received if r.path.startswith("/ping/")} == {"GET"}
    # The JSON webhook: every default event once per line the daemon logged, no more.
    posted = [r.json() for r in received if r.path == f"/hook/{HOOK_TOKEN}"]
    assert {r.method for r in received if r.path.startswith("/hook/")} == {"POST"}
    for event in DEFAULT_EVENTS:
        logged = daemon.matching(event)
        assert [p for p in posted if p["event"] == event] == [
            {k: v for k, v in line.items() if k != "timestamp"} | {"timestamp": p["timestamp"]}
            for line, p in zip(logged, [p for p in posted if p["event"] == event], strict=False)
        ]
        assert len([p for p in posted if p["event"] == event]) == len(logged), event
    assert len([p for p in posted if p["event"] == "server.suspended" and p["server"] == "s1"]) == 1
    # The Slack webhook: the one suspension, as a line a person acts on.
    (chat,) = [r.json() for r in received if r.path.startswith("/chat/")]
    assert chat["text"].startswith("*s1*: refreshes suspended until ")
    assert "What to do: give the VICIdial user API access" in chat["text"]
    assert b'refreshd_notify_sent_total{kind="ping"} 6.0' in metrics
    assert daemon.matching("notify.failed") == []
    # No token anywhere a person or a collector reads: the log, stderr, /metrics, `check`.
    code, out, err = run_refreshd(["check", "-c", str(config)], env=env)
    assert code == 0, out + err
    _no_token_in(daemon.stdout, daemon.stderr, metrics.decode(), out, err)


def _lags(daemon: DaemonProcess, server: str) -> dict[str, float]:
    """Seconds from each run's due instant to its refresh.succeeded line, by due (the first
    run, a catch-up started with the daemon, aside)."""
    return {
        line["due"]: (instant(line["timestamp"]) - instant(line["due"])).total_seconds()
        for line in daemon.matching("refresh.succeeded", server=server)
        if "due" in line
    }


def test_with_the_listener_down_refreshes_keep_their_time_and_each_failure_is_logged_once(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    with refused_port() as port:
        down = f"http://127.0.0.1:{port}"
        window = window_from_now(-1, 30)  # six runs, however long the start takes (8 s seen)
        config = _write(
            tmp_path,
            [
                # s0 pings (and fails to) while it refreshes every 2 s; s1, the same
                # schedule without a ping, is the control its lag is compared with.
                _server(
                    simulator,
                    0,
                    "main",
                    window,
                    every="2s",
                    server_ip="10.0.0.1",
                    ping_url=f"{down}/ping/{PING_TOKEN}",
                ),
                _server(simulator, 1, "main", window, every="2s", server_ip="10.0.0.2"),
                # Suspended for longer than its slot: server.suspended and slot.missed.
                _server(simulator, 2, "noapi", window_from_now(-1, 15)),
            ],
            [{"name": "ops", "url": f"{down}/hook/{HOOK_TOKEN}"}],
        )
        daemon = start_daemon(config)
        # /start and success for s0's slot, s2's two events: four deliveries, each tried
        # three times over about three seconds (one worker, so about twelve in all).
        daemon.wait_for("notify.failed", count=4, timeout=40)
        daemon.wait_for("refresh.succeeded", server="s1", count=6, timeout=40)
        assert daemon.stop() == EXIT_OK

    failed = daemon.matching("notify.failed")
    assert len(failed) == 4, failed
    assert sorted((f["kind"], f["notify_event"]) for f in failed) == [
        ("notification", "server.suspended"),
        ("notification", "slot.missed"),
        ("ping", "start"),
        ("ping", "success"),
    ]
    assert {(f["error"], f["attempts"], f["url"]) for f in failed} == {
        ("connection_refused", 3, down)
    }
    pinged, control = _lags(daemon, "s0"), _lags(daemon, "s1")
    both = sorted(pinged.keys() & control.keys())
    assert len(both) >= 4, (pinged, control)
    # On time: each run as late as the same run of the server that pings nothing (a few
    # milliseconds on an idle machine, more on a loaded one, alike for both), where a
    # sender in the way would add its three seconds of tries.
    assert all(pinged[due] - control[due] < 1.0 for due in both), (pinged, control)
    _no_token_in(daemon.stdout, daemon.stderr)


def test_a_reload_that_changes_notify_sends_to_the_new_url_only(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    with listening() as listener:
        window = window_from_now(-1, 600)
        first = [_server(simulator, 1, "noapi", window)]

        def notify(path: str) -> list[dict[str, Any]]:
            return [{"name": "ops", "url": f"{listener.url}/{path}/{HOOK_TOKEN}"}]

        config = _write(tmp_path, first, notify("old"))
        daemon = start_daemon(config)
        daemon.wait_for("server.suspended", server="s1")
        eventually(lambda: len(listener.paths("/old/")) == 2, what="s1's two events")
        _write(tmp_path, [*first, _server(simulator, 3, "noapi", window)], notify("new"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config.reloaded")
        daemon.wait_for("server.suspended", server="s3")
        eventually(lambda: len(listener.paths("/new/")) == 2, what="s3's two events")
        assert daemon.stop() == EXIT_OK
        received = listener.received

    old = [r.json() for r in received if r.path.startswith("/old/")]
    new = [r.json() for r in received if r.path.startswith("/new/")]
    assert sorted((p["event"], p["server"]) for p in old) == [
        ("server.suspended", "s1"),
        ("slot.missed", "s1"),
    ]
    assert sorted((p["event"], p["server"]) for p in new) == [
        ("server.suspended", "s3"),
        ("slot.missed", "s3"),
    ]
    _no_token_in(daemon.stdout, daemon.stderr)
