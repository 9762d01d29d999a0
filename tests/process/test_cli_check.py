"""`refreshd check [--online]` as an operator runs it. Most tests run the command in-process
(`run_cli`, tests/support/cli.py); the real command in a subprocess stays for its exit codes
through the interpreter: 78 (a missing file), 0 and 1 (`--online` with the HTTP stack)."""

from __future__ import annotations

import re
from pathlib import Path

from refreshd.simulator import API_PATH, Simulator
from tests.support.config import (
    GOOD_PASSWORD,
    WriteConfig,
    one_server_config,
)
from tests.support.daemon import EXIT_CONFIG, RunRefreshd
from tests.support.repo import EXAMPLE_CONFIG
from tests.support.simulator import ScriptedVicidial

WRONG_PASSWORD = "Wr0ng-Secret_7qX"

INVALID = """\
[daemon]
state_path = "state.db"
timezon = "UTC"

[credentials.east]
user = "refreshd"
password = "demo-pass-123"

[[servers]]
name = "east-1"
api_url = "https://dialer.example.com/vicidial/non_agent_api.php"
credentials = "east"
timezone = "Mars/Olympus_Mons"
windows = ["02:00-04:00"]

[[servers]]
name = "east-1"
api_url = "https://dialer2.example.com/vicidial/non_agent_api.php"
credentials = "east"
windows = ["02:00-04:00"]
"""


def flags(sim: Simulator) -> set[str]:
    return {server["rebuild_conf_files"] for server in sim.stats()["servers"]}


# -- offline ----------------------------------------------------------------------------------
NEVER_RUNS = """\
[daemon]
state_path = "state.db"

[credentials.east]
user = "refreshd"
password_env = "EAST_PASSWORD"

[[servers]]
name = "east-1"
api_url = "https://dialer.example.com/vicidial/non_agent_api.php"
credentials = "east"
windows = ["mon-fri 02:00-04:00"]

[[servers]]
name = "east-2"
api_url = "https://dialer.example.com/vicidial/non_agent_api.php"
credentials = "east"
windows = ["sat,sun 01:00-06:00"]

[[servers]]
name = "east-3"
api_url = "https://dialer.example.com/vicidial/non_agent_api.php"
credentials = "east"
windows = ["02:00-04:00"]

[[blackouts]]
name = "weekdays"
servers = ["east-1"]
windows = ["mon-fri 00:00-12:00"]

[[blackouts]]
name = "forever"
servers = ["east-3"]
windows = ["2000-01-01T00:00/2999-01-01T00:00"]
"""


def test_the_example_config_passes_with_the_environment_it_documents(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    # Its header: CREDENTIALS_DIRECTORY holding east.password and west.password.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "east.password").write_text("east-pass-1")
    (credentials / "west.password").write_text("west-pass-1\n")

    code, out, err = run_cli(
        ["check", "-c", EXAMPLE_CONFIG], env={"CREDENTIALS_DIRECTORY": str(credentials)}
    )

    assert code == 0, err
    assert "valid" in out


def test_an_invalid_config_exits_78_naming_every_place(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(INVALID)

    code, out, err = run_cli(["check", "-c", config])

    assert code == EXIT_CONFIG
    assert "servers[1].name" in err  # the duplicate name
    assert "servers[0].timezone" in err  # the unknown time zone
    assert "daemon.timezon" in err  # the misspelt key
    assert "Traceback" not in out + err


def test_a_missing_config_file_exits_78_saying_so(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    missing = tmp_path / "nowhere.toml"

    code, out, err = run_refreshd(["check", "-c", missing])

    assert code == EXIT_CONFIG
    assert str(missing) in err
    assert "no such file" in err.lower()
    assert "Traceback" not in out + err


def test_a_refused_password_is_not_quoted_in_the_error(
    write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    # '!' is a character VICIdial strips, so check refuses the password: without echoing it.
    secret = "Sekr1t-with!bang"
    config = write_config({"name": "east-1", "password_env": "PW"})

    code, out, err = run_cli(["check", "-c", config], env={"PW": secret})

    assert code == EXIT_CONFIG
    assert "credentials.login1.password_env" in err
    for form in (secret, secret.replace("!", ""), secret.replace("!", "%21")):
        assert form not in out + err


# -- online -----------------------------------------------------------------------------------


def test_online_check_passes_with_a_good_password(
    write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})

    code, out, err = run_refreshd(["check", "--online", "-c", config], env={"PW": GOOD_PASSWORD})

    assert code == 0, out + err
    assert "FAIL" not in out


def test_online_check_with_a_wrong_password_makes_one_login_and_exits_1(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    # Two servers behind the same URL with the same credentials: still one probe.
    config = write_config(
        {"name": "east-1", "password_env": "PW"}, {"name": "east-2", "password_env": "PW"}
    )

    code, out, _ = run_refreshd(["check", "--online", "-c", config], env={"PW": WRONG_PASSWORD})

    assert simulator.stats()["logins"]["failed"] == 1
    assert code == 1
    assert "auth_failed" in out


def test_online_check_output_holds_no_password(
    write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})

    _, out, err = run_cli(["check", "--online", "-c", config], env={"PW": WRONG_PASSWORD})

    assert "|refreshd|***|BAD|" in out  # VICIdial's echo, masked
    assert WRONG_PASSWORD not in out + err


def test_online_check_reports_reachability_per_server(
    write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"}, {"name": "west-1", "path": "/west" + API_PATH})

    _, out, _ = run_cli(["check", "--online", "-c", config])

    lines = out.splitlines()
    for name in ("east-1", "west-1"):
        (line,) = [x for x in lines if f"server {name} " in x]
        assert line.startswith("ok")
        assert "VICIdial 2.14" in line


def test_online_check_reports_a_closed_port_as_refused(
    write_config: WriteConfig, run_cli: RunRefreshd, refused_port: int
) -> None:
    url = f"http://127.0.0.1:{refused_port}{API_PATH}"
    config = write_config({"name": "east-1", "api_url": url})

    code, out, _ = run_cli(["check", "--online", "-c", config])

    (line,) = [x for x in out.splitlines() if "server east-1 " in x]
    assert line.startswith("FAIL")
    assert "connection refused" in line
    assert code == 1


def test_the_probe_flags_no_server(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"}, {"name": "west-1", "path": "/west" + API_PATH})

    code, _, err = run_cli(["check", "--online", "-c", config])

    assert code == 0, err
    assert simulator.stats()["logins"]["ok"] >= 1  # the probe did log in
    assert flags(simulator) == {"N"}
    assert simulator.stats()["refreshes"] == 0


def test_online_check_makes_one_login_per_credentials_across_urls(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config(
        *(
            {"name": f"web-{i}", "path": f"/web{i}{API_PATH}", "password_env": "PW"}
            for i in range(3)
        )
    )

    code, _, _ = run_cli(["check", "--online", "-c", config], env={"PW": WRONG_PASSWORD})

    assert simulator.stats()["logins"]["failed"] == 1
    assert code == 1


def test_online_check_records_a_refused_login_and_then_waits_like_the_daemon(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})
    env = {"PW": WRONG_PASSWORD}

    first = run_cli(["check", "--online", "-c", config], env=env)
    second = run_cli(["check", "--online", "-c", config], env=env)
    manual = run_cli(["refresh", "-c", config, "east-1"], env=env)

    assert simulator.stats()["logins"]["failed"] == 1
    assert (first[0], second[0], manual[0]) == (1, 1, 1)
    assert "not tried: credentials wait until" in second[1]
    assert "credentials 'login1' wait until" in manual[2]
    for code_out_err in (first, second, manual):
        assert WRONG_PASSWORD not in code_out_err[1] + code_out_err[2]


def test_online_check_force_probes_during_a_wait(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})
    run_cli(["check", "--online", "-c", config], env={"PW": WRONG_PASSWORD})

    code, out, err = run_cli(
        ["check", "--online", "--force", "-c", config], env={"PW": GOOD_PASSWORD}
    )

    assert code == 0, out + err
    assert simulator.stats()["logins"]["failed"] == 1


def test_check_warns_naming_each_server_that_can_never_run_and_still_exits_0(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = tmp_path / "refreshd.toml"
    config.write_text(NEVER_RUNS)

    code, out, err = run_cli(["check", "-c", config], env={"EAST_PASSWORD": GOOD_PASSWORD})

    assert code == 0, err
    assert "valid: 3 server(s)" in out
    never = [line for line in err.splitlines() if "never run" in line]
    assert len(never) == 2, err
    assert never[0].startswith("refreshd: warning: servers[0] (east-1): will never run: ")
    assert never[1].startswith("refreshd: warning: servers[2] (east-3): will never run: ")
    assert all("blackout" in line for line in never)
    assert "east-2" not in err
    assert "Traceback" not in out + err


# -- terminal safety (issue 12, item 11) -----------------------------------------------------

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_check_online_shows_control_characters_from_an_answer_escaped(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    hostile = "<html>\x1b[2J\x1b]0;owned\x07\rProxy login\x9b</html>"
    scripted = ScriptedVicidial({API_PATH: hostile})
    try:
        config = one_server_config(tmp_path, scripted.url + API_PATH)
        code, out, err = run_cli(["check", "--online", "-c", config])
    finally:
        scripted.close()

    assert code == 1, err
    assert "FAIL" in out
    assert not CONTROL.search(out), repr(out)
    assert "\\x1b[2J\\x1b]0;owned\\x07" in out


def test_a_credentials_table_name_with_a_control_character_is_a_config_error(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = tmp_path / "refreshd.toml"
    config.write_text(
        '[credentials."ea\\u001b[31mst"]\nuser = "refreshd"\npassword = "demo-pass-123"\n\n'
        '[[servers]]\nname = "east-1"\n'
        'api_url = "https://dialer.example.com/vicidial/non_agent_api.php"\n'
        'credentials = "ea\\u001b[31mst"\nwindows = ["02:00-04:00"]\n',
        encoding="utf-8",
    )

    code, out, err = run_cli(["check", "-c", config])

    assert (code, out) == (EXIT_CONFIG, "")
    assert "credentials." in err
    assert "use only letters, digits, '.', '_' and '-'" in err
    assert not CONTROL.search(err.replace("\n", "")), repr(err)


UNREADABLE_URLS = """\
[daemon]
state_path = "state.db"

[credentials.east]
user = "refreshd"
password = "demo-pass-123"

[[notify]]
name = "ops"
url_file = "ops.url"

[[servers]]
name = "east-1"
api_url = "https://dialer.example.com/vicidial/non_agent_api.php"
credentials = "east"
windows = ["02:00-04:00"]
ping_url_env = "EAST_PING_URL"
"""


def test_a_webhook_or_ping_url_the_daemon_could_not_read_fails_check_without_quoting_it(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    # `check` before a start or a reload says what the daemon would refuse: a URL file
    # holding no URL, a ping_url_env variable that is not set.
    secret = "hooks.example.com/services/T0KEN-s3cr3t 42"
    (tmp_path / "ops.url").write_text(secret)
    config = tmp_path / "refreshd.toml"
    config.write_text(UNREADABLE_URLS)

    code, out, err = run_cli(["check", "-c", config])

    assert code == EXIT_CONFIG
    assert "notify[0].url_file" in err
    assert "servers[0].ping_url_env" in err
    assert "T0KEN" not in out + err

    (tmp_path / "ops.url").write_text("https://hooks.example.com/services/T0KEN-s3cr3t-42\n")
    code, out, err = run_cli(
        ["check", "-c", config], env={"EAST_PING_URL": "https://hc-ping.com/T0KEN-uuid"}
    )
    assert code == 0, err
    assert "T0KEN" not in out + err
