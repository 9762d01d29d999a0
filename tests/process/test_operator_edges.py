"""What an operator review found at the edges, on the real `refreshd` processes: a proxy
refusing the tunnel, warnings that know where a secret was set, output under any stdout
encoding, and places (the state path, a proxy variable, the metrics address) named as they
are."""

from __future__ import annotations

from pathlib import Path

from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    one_server_config,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, RunRefreshd
from tests.support.fleet import PASSWORD, USER, Fleet, report, secret_forms
from tests.support.proxy import running_proxy
from tests.support.simulator import ScriptedVicidial, api_path, total_requests
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
        by_check = len(proxy.seen)

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
        report(
            "proxy refusing CONNECT with 407",
            tunnels_asked_by_check=by_check,
            tunnels_asked_by_daemon=tunnels - by_check,
            more_in_the_3_s_after_the_suspension=len(proxy.seen) - tunnels,
            check_exit=check.returncode,
        )
        assert total_requests(fleet.sim) == 0
        assert_never_shown(PROXY_PASSWORD, check.stdout, check.stderr, daemon.stdout)
        assert_never_shown(PROXY_PASSWORD, daemon.stderr)


# -- B2. secrets set in the environment are not blamed on the file -------------------------------

BLAMES_THE_FILE = ("holds the proxy's password", "written in the config file")


def test_secrets_set_in_the_environment_draw_no_warning_about_the_config_file(
    fleet: Fleet,
) -> None:
    with running_proxy() as proxy:
        # As the README advises: the file names the user only, the environment the secrets.
        fleet.write(
            [fleet.server(0, window_from_now(3600, 60))], credentials={"main": {"user": USER}}
        )
        fleet.env["REFRESHD_CREDENTIALS__MAIN__PASSWORD"] = PASSWORD
        fleet.env["REFRESHD_CLIENT__PROXY"] = proxy.url.replace(
            "http://", f"http://refreshd:{PROXY_PASSWORD}@"
        )

        check = fleet.cli("check")
        refresh = fleet.cli("refresh", "--all", "--dry-run")
        daemon = fleet.start()
        daemon.wait_for("daemon.started")
        daemon.stop()

    assert check.returncode == refresh.returncode == EXIT_OK, check.stderr + refresh.stderr
    for output in (check.stderr, refresh.stderr, daemon.stdout):
        assert [blame for blame in BLAMES_THE_FILE if blame in output] == []
    assert_never_shown(PROXY_PASSWORD, check.stderr, refresh.stdout, daemon.stdout)


def test_the_same_secrets_written_in_the_file_are_warned_about(fleet: Fleet) -> None:
    proxy = f"http://refreshd:{PROXY_PASSWORD}@127.0.0.1:3128"
    credentials = {"main": {"user": USER, "password": PASSWORD}}
    fleet.write([fleet.server(0, "02:00-04:00")], credentials=credentials, client={"proxy": proxy})

    check = fleet.cli("check")

    assert check.returncode == EXIT_OK, check.stderr
    assert [blame for blame in BLAMES_THE_FILE if blame in check.stderr] == list(BLAMES_THE_FILE)


# -- B3. any stdout encoding; answers read in their charset ----------------------------------------

NAMED = "ERROR: server_refresh USER DOES NOT HAVE PERMISSION - refreshd|Peña Müller|"


def test_every_command_prints_a_non_ascii_answer_under_an_ascii_stdout(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    scripted = ScriptedVicidial({"/named/non_agent_api.php": NAMED})
    try:
        config = one_server_config(tmp_path, scripted.url + "/named/non_agent_api.php")
        ascii_only = {"PYTHONIOENCODING": "ascii:strict", "LANG": "C"}
        online = run_refreshd(["check", "--online", "-c", config], env=ascii_only)
        refreshed = run_refreshd(["refresh", "-c", config, "--all"], env=ascii_only)
    finally:
        scripted.close()
    shown = [
        run_refreshd([*command, "-c", config], env=ascii_only)
        for command in (["history"], ["history", "--json"], ["status"], ["plan"])
    ]

    assert (online[0], refreshed[0]) == (EXIT_FAILED, EXIT_FAILED), online[2] + refreshed[2]
    assert [code for code, _, _ in shown] == [EXIT_OK] * 4, [err for _, _, err in shown]
    for _, out, err in [online, refreshed, *shown]:
        assert "Traceback" not in err
        assert out.isascii()
        assert err.isascii()
    assert "Pe\\xf1a M\\xfcller" in online[1]  # escaped, never a UnicodeEncodeError
    assert "Pe\\xf1a M\\xfcller" in shown[0][1]
    assert "Pe\\u00f1a M\\u00fcller" in shown[1][1]  # JSON's own escape: still valid JSON


# -- B4. places named as they are ----------------------------------------------------------------


def _offline_config(tmp_path: Path, **daemon: str) -> Path:
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": "", **daemon},
        credentials={"main": {"user": GOOD_USER, "password_env": "PW"}},
        servers=[
            {
                "name": "east-1",
                "api_url": "https://dialer.example.com/vicidial/non_agent_api.php",
                "credentials": "main",
                "windows": ["02:00-04:00"],
            }
        ],
    )


def test_a_state_path_that_is_a_directory_is_called_a_directory(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    (tmp_path / "state").mkdir()
    config = _offline_config(tmp_path, state_path=str(tmp_path / "state"))

    for command in ("status", "history"):
        code, _, err = run_cli([command, "-c", config])
        assert code == EXIT_FAILED, err
        assert f"{tmp_path / 'state'}: cannot open: it is a directory, not a file" in err
        assert "disk" not in err


def test_check_names_a_lower_case_proxy_variable_as_it_is_set(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = _offline_config(tmp_path)
    env = {"PW": GOOD_PASSWORD, "https_proxy": "http://127.0.0.1:3128"}

    code, out, err = run_cli(["check", "-c", config], env=env)

    assert code == EXIT_OK, err
    assert "proxy: none (https_proxy in the environment: ignored;" in out


def test_an_impossible_metrics_address_is_a_config_error_for_check_and_run(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    config = _offline_config(tmp_path, metrics_listen="999.1.1.1:9464")

    for command in ("check", "run"):
        code, out, err = run_refreshd([command, "-c", config], env={"PW": GOOD_PASSWORD})
        said = out + err  # run logs config.rejected as a JSON line on stdout
        assert code == EXIT_CONFIG, said
        assert "daemon.metrics_listen: '999.1.1.1:9464': 999.1.1.1 is not an IPv4 address" in said
        assert "Traceback" not in said
