"""What an operator review found at the edges, on the real `refreshd` processes: a proxy
refusing the tunnel, warnings that know where a secret was set, output under any stdout
encoding, and places (the state path, a proxy variable, the metrics address) named as they
are."""

from __future__ import annotations

from pathlib import Path

from tests.support.config import window_from_now
from tests.support.daemon import EXIT_FAILED
from tests.support.fleet import Fleet, secret_forms
from tests.support.proxy import running_proxy
from tests.support.simulator import api_path, total_requests
from tests.support.waiting import holds_for

PROXY_PASSWORD = "Pr0xy-Secret_9q"


def assert_never_shown(secret: str, *texts: str) -> None:
    for text in texts:
        assert [form for form in secret_forms(secret) if form in text] == []


# -- B1. a proxy refusing CONNECT -----------------------------------------------------------------


def test_a_proxy_refusing_the_tunnel_is_named_with_its_status_and_suspends_the_server(
    fleet: Fleet,
) -> None:
    with running_proxy(refuse=407) as proxy:
        # https://, so the call asks the proxy for a CONNECT tunnel, which it refuses.
        api_url = f"https://127.0.0.1:{fleet.sim.port}{api_path(0)}"
        server = fleet.server(0, window_from_now(-2, 120), api_url=api_url)
        fleet.write([server], backoff={"retry_initial": "1s", "retry_max": "1s"})
        with_login = proxy.url.replace("http://", f"http://refreshd:{PROXY_PASSWORD}@")
        fleet.env["REFRESHD_CLIENT__PROXY"] = with_login

        check = fleet.cli("check", "--online")

        assert check.returncode == EXIT_FAILED, check.stdout + check.stderr
        assert "proxy_refused: the proxy refused to connect to api_url's host (HTTP 407)" in (
            check.stdout
        )
        assert "fix USER:PASSWORD in [client] proxy" in check.stdout
        assert "could not connect" not in check.stdout

        daemon = fleet.start()
        (suspended,) = daemon.wait_for("server.suspended", timeout=20)
        assert suspended["outcome"] == "proxy_refused"
        tunnels = len(proxy.seen)
        # Suspended, not retried every second: a wrong proxy password does not heal.
        holds_for(lambda: len(proxy.seen) == tunnels, seconds=3, what="no retry")
        daemon.stop()
        assert total_requests(fleet.sim) == 0
        assert_never_shown(PROXY_PASSWORD, check.stdout, check.stderr, daemon.stdout)
        assert_never_shown(PROXY_PASSWORD, daemon.stderr)
