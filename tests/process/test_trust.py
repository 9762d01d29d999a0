"""Issue 12 items 8-10 on the real `refreshd` processes: a private CA, certificate refusals
that suspend the server, an explicit proxy, and passwords put in the wrong place or echoed
in another form. Every password form is searched in everything the processes print."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from refreshd.simulator import API_PATH
from tests.support.config import window_from_now, write_daemon_config
from tests.support.daemon import EXIT_CONFIG, EXIT_OK, DaemonProcess, RunRefreshd
from tests.support.fleet import PASSWORD, PASSWORD_ENV, USER, open_fleet, report, secret_forms
from tests.support.proxy import running_proxy
from tests.support.simulator import ScriptedVicidial
from tests.support.tls import PrivateCa
from tests.support.waiting import eventually, holds_for

PROXY_PASSWORD = "Pr0xy-Secret_9q"
FAST_RETRY = {"retry_initial": "1s", "retry_max": "1s"}  # a retry, if any, comes at once


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("ca"))


def assert_never_shown(secret: str, *texts: str) -> None:
    for text in texts:
        found = [form for form in secret_forms(secret) if form in text]
        assert found == [], f"{secret[:3]}... shown as {len(found)} form(s)"


# -- 8. private CA ------------------------------------------------------------------------------


def test_with_ca_file_the_daemon_refreshes_a_server_with_a_private_certificate(
    tmp_path: Path, ca: PrivateCa
) -> None:
    with open_fleet(tmp_path, tls=ca.server_context("good")) as fleet:
        fleet.write([fleet.server(0, window_from_now(-2, 120))], client={"ca_file": str(ca.ca)})
        daemon = fleet.start()

        (line,) = daemon.wait_for("refresh.succeeded", timeout=20)

        assert fleet.sim.url.startswith("https://")
        assert line["outcome"] == "ok"
        assert fleet.sim.stats()["tls_refused"] == 0
        fleet.audit(daemon)


@pytest.mark.parametrize(
    ("label", "san", "expired", "with_ca_file", "words"),
    [
        ("untrusted", "IP:127.0.0.1", False, False, "not trusted"),
        ("wrong-name", "DNS:dialer.example.com", False, True, "another name"),
        ("expired", "IP:127.0.0.1", True, True, "expired"),
    ],
)
def test_a_refused_certificate_suspends_the_server_and_never_sends_the_password(
    tmp_path: Path,
    ca: PrivateCa,
    label: str,
    san: str,
    expired: bool,
    with_ca_file: bool,
    words: str,
) -> None:
    context = ca.server_context(label, san=san, expired=expired)
    with open_fleet(tmp_path, tls=context) as fleet:
        client = {"ca_file": str(ca.ca)} if with_ca_file else {}
        fleet.write([fleet.server(0, window_from_now(-2, 120))], client=client, backoff=FAST_RETRY)
        daemon = fleet.start()

        (suspended,) = daemon.wait_for("server.suspended", timeout=20)
        (failed,) = daemon.matching("refresh.failed")

        assert suspended["outcome"] == "tls_rejected"
        assert words in failed["detail"]
        # Were it still `transient`, the next handshake would come within a second or two.
        holds_for(
            lambda: (
                fleet.sim.stats()["tls_refused"] <= 1 and not daemon.matching("refresh.retrying")
            ),
            seconds=4,
            what="no retry of a refused certificate",
        )
        assert fleet.sim.stats()["tls_refused"] == 1
        assert fleet.sim.stats()["requests"] == {}  # no request, so no password, ever sent
        status = fleet.cli("status", "--json")
        assert '"suspended_until": "' in status.stdout
        places = fleet.audit(daemon)
        report(
            f"refused certificate: {label}",
            handshakes=fleet.sim.stats()["tls_refused"],
            requests=0,
            call_ms=failed["duration_ms"],
            suspended_until=suspended["suspended_until"],
            places_searched=places,
        )


def test_check_refuses_a_ca_file_that_holds_no_certificate(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[_server("https://127.0.0.1:9/vicidial/non_agent_api.php", ca_file="nope.pem")],
        credentials={"main": {"user": USER, "password_env": "REL_MAIN_PASSWORD"}},
        client={"ca_file": "ca.pem"},
    )

    code, _, err = run_cli(["check", "-c", config], env=PASSWORD_ENV)

    assert code == EXIT_CONFIG
    assert f"client.ca_file: {tmp_path / 'ca.pem'}: no PEM certificate in it" in err
    assert f"servers[0].ca_file: {tmp_path / 'nope.pem'}: no such file" in err
    assert "Traceback" not in err


# -- 9. proxy -----------------------------------------------------------------------------------


def test_check_and_the_daemon_go_through_the_configured_proxy_and_say_which(
    tmp_path: Path, ca: PrivateCa, refused_port: int
) -> None:
    with open_fleet(tmp_path, tls=ca.server_context("good")) as fleet, running_proxy() as proxy:
        with_login = proxy.url.replace("http://", f"http://refreshd:{PROXY_PASSWORD}@")
        client = {"ca_file": str(ca.ca), "proxy": with_login}
        fleet.write([fleet.server(0, window_from_now(-2, 120))], client=client)
        # A proxy in the environment is ignored: were it used, every call would fail.
        fleet.env["HTTPS_PROXY"] = f"http://127.0.0.1:{refused_port}"

        check = fleet.cli("check", "--online")

        assert check.returncode == EXIT_OK, check.stdout + check.stderr
        assert f"proxy: {proxy.url} (HTTPS_PROXY in the environment: ignored;" in check.stdout
        assert proxy.seen
        assert all(line.startswith("CONNECT ") for line in proxy.seen)
        assert proxy.authorized == len(proxy.seen)
        through_check = len(proxy.seen)

        daemon = fleet.start()
        (started,) = daemon.wait_for("daemon.started")
        daemon.wait_for("refresh.succeeded", timeout=20)

        assert started["proxy"] == proxy.url
        assert len(proxy.seen) > through_check
        assert_never_shown(PROXY_PASSWORD, check.stdout, check.stderr)
        daemon.stop()
        assert_never_shown(PROXY_PASSWORD, daemon.stdout, daemon.stderr)
        fleet.audit(daemon)
        report(
            "proxy",
            connections_by_check=through_check,
            connections_by_daemon=len(proxy.seen) - through_check,
            with_proxy_authorization=proxy.authorized,
        )


# -- 10. secrets in the wrong place ---------------------------------------------------------------


def _server(api_url: str, **extra: object) -> dict[str, object]:
    return {
        "name": "s0",
        "api_url": api_url,
        "credentials": "main",
        "windows": ["01:00-02:00"],
        **extra,
    }


@pytest.mark.parametrize(
    ("table", "place"),
    [
        ({"user": USER, "password_env": PASSWORD}, "credentials.main.password_env"),
        ({"user": USER, "password_file": PASSWORD}, "credentials.main.password_file"),
        ({"user": f"{USER}:{PASSWORD}", "password_env": "P"}, "credentials.main.user"),
    ],
)
def test_a_password_in_the_wrong_key_is_named_by_its_place_and_never_printed(
    tmp_path: Path, run_cli: RunRefreshd, table: dict[str, str], place: str
) -> None:
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[_server("https://dialer.example.com/vicidial/non_agent_api.php")],
        credentials={"main": table},
        daemon={"state_path": str(tmp_path / "state.db")},
    )
    env = {"P": "0ther-Pa55_word"}

    code, out, err = run_cli(["check", "-c", config], env=env)
    daemon = DaemonProcess(config, env=env).start()
    run_code = daemon.wait(timeout=30)

    assert (code, run_code) == (EXIT_CONFIG, EXIT_CONFIG)
    assert err.count(f"{place}: ") == 1, err
    assert any(place in line for line in daemon.stdout.splitlines()), daemon.stdout
    assert_never_shown(PASSWORD, out, err, daemon.stdout, daemon.stderr)


def test_check_warns_about_a_short_password_and_never_shows_it(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    short = "Zq-7x"
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[_server("https://dialer.example.com/vicidial/non_agent_api.php")],
        credentials={"main": {"user": USER, "password_env": "P"}},
    )

    code, out, err = run_cli(["check", "-c", config], env={"P": short})

    assert code == EXIT_OK
    assert "credentials.main: the password has fewer than 8 characters" in err
    assert_never_shown(short, out, err)


class EchoingVicidial:
    """A web server refusing every login and echoing the password as a careless page
    would: upper-cased, HTML-escaped and URL-encoded (not in VICIdial's |user|pass|BAD| shape,
    which is masked whatever the password)."""

    def __init__(self, password: str) -> None:
        escaped = "".join(f"&#{ord(char)};" for char in password)
        body = (
            f"ERROR: Login incorrect, please try again: {password.upper()} / {escaped} / "
            f"{html.escape(password.lower())} / %{ord(password[0]):02X}{password[1:]}"
        ).encode()
        self.requests = 0
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                echo.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.api_url = f"http://127.0.0.1:{self._server.server_address[1]}{API_PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def echoing() -> Iterator[EchoingVicidial]:
    server = EchoingVicidial(PASSWORD)
    try:
        yield server
    finally:
        server.close()


def test_a_password_echoed_in_another_case_or_escaped_is_masked_in_logs_and_history(
    tmp_path: Path, echoing: EchoingVicidial
) -> None:
    with open_fleet(tmp_path) as fleet:
        server = {**fleet.server(0, window_from_now(-2, 120)), "api_url": echoing.api_url}
        fleet.write([server])
        daemon = fleet.start()

        (failed,) = daemon.wait_for("refresh.failed", timeout=20)
        daemon.wait_for("credentials.suspended")
        history = fleet.cli("history")

        assert failed["outcome"] == "auth_failed"
        assert failed["detail"].count("***") == 4, failed["detail"]
        assert "***" in history.stdout
        assert_never_shown(PASSWORD, history.stdout, history.stderr, daemon.stdout)
        eventually(lambda: echoing.requests == 1, what="one login, refused")
        places = fleet.audit(daemon)
        report(
            "password echoed in other forms",
            forms_masked=failed["detail"].count("***"),
            forms_searched=len(secret_forms(PASSWORD)),
            places_searched=places,
        )


def test_an_answer_echoing_every_secret_is_masked_in_check_history_and_the_state_file(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    """A page (VICIdial's, or a proxy's error page) may echo any secret the config holds,
    in any case: every call's answer is masked with all of them before it is shown or kept."""
    echo = f"ERROR: Login incorrect: |{USER}|{PASSWORD.upper()}|BAD| proxy {PROXY_PASSWORD}"
    scripted = ScriptedVicidial({API_PATH: echo})
    try:
        with running_proxy() as proxy:
            state = tmp_path / "state.db"
            config = write_daemon_config(
                tmp_path / "refreshd.toml",
                daemon={"state_path": str(state), "metrics_listen": ""},
                credentials={"main": {"user": USER, "password_env": "REL_MAIN_PASSWORD"}},
                client={"proxy": proxy.url.replace("http://", f"http://u:{PROXY_PASSWORD}@")},
                servers=[_server(scripted.url + API_PATH)],
            )
            check = run_refreshd(["check", "--online", "--force", "-c", config], env=PASSWORD_ENV)
            refresh = run_refreshd(["refresh", "--force", "s0", "-c", config], env=PASSWORD_ENV)
            history = run_refreshd(["history", "--json", "-c", config])
    finally:
        scripted.close()

    assert check[0] == 1
    assert "***" in check[1]
    assert refresh[0] == 1
    kept = history[1] + state.read_bytes().decode("latin-1")
    for secret in (PASSWORD, PROXY_PASSWORD):
        assert_never_shown(secret, *check[1:], *refresh[1:], *history[1:], kept)
