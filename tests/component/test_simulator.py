"""The VICIdial simulator answers like non_agent_api.php, over real HTTP on loopback."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from refreshd.clock import FakeClock
from refreshd.simulator import (
    API_PATH,
    FAULT_MODES,
    SimServer,
    Simulator,
    SimUser,
    faults,
    load_simulator_config,
    serve,
)
from refreshd.simulator.faults import accepts_gzip
from refreshd.simulator.rules import LOCK_SECONDS
from tests.support.repo import SIMULATOR_CONFIG

T0 = 1_700_000_000.0
GOOD = {"user": "refreshd", "pass": "demo-pass-123", "source": "test"}
REFRESH = {"function": "server_refresh", "stage": "REFRESH", **GOOD}
SUCCESS = b"SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - refreshd|2\n"
TIMEOUT = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.fromtimestamp(T0, UTC))


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    users, servers = load_simulator_config(SIMULATOR_CONFIG)
    with Simulator(users=users, servers=servers, clock=clock) as running:
        yield running


def call(sim: Simulator, path: str = API_PATH, **params: str) -> requests.Response:
    return requests.get(sim.url + path, params=params, timeout=TIMEOUT)


def refresh(sim: Simulator, path: str = API_PATH, **params: str) -> str:
    fields = {"function": "server_refresh", "stage": "REFRESH", **GOOD, **params}
    return call(sim, path, **fields).text


def login_as(user: str, password: str) -> dict[str, str]:
    return {"user": user, "pass": password}


def flags(sim: Simulator) -> dict[str, str]:
    return {s["server_ip"]: s["rebuild_conf_files"] for s in sim.stats()["servers"]}


# -- answers ---------------------------------------------------------------------------


def test_version_needs_no_login(sim: Simulator) -> None:
    answer = call(sim, function="version")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.text == (
        "VERSION: 2.14-917a|BUILD: 240101-1200|DATE: 2023-11-14 22:13:20|"
        f"EPOCH: {int(T0)}|DST: 0|TZ: 0|TZNOW: 0|\n"
    )


def test_refresh_succeeds_with_the_number_of_flags_set(sim: Simulator) -> None:
    assert (
        refresh(sim) == "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - refreshd|2\n"
    )
    assert flags(sim) == {"10.0.0.11": "Y", "10.0.0.12": "Y", "10.0.0.13": "N"}


def test_flags_count_only_changes_until_keepalive_clears_them(sim: Simulator) -> None:
    answers = [refresh(sim), refresh(sim)]
    sim.keepalive()
    answers.append(refresh(sim))
    assert [a.rsplit("|", 1)[1] for a in answers] == ["2\n", "0\n", "2\n"]
    assert sim.stats()["refreshes"] == 3


def test_keepalive_interval_clears_flags_in_the_background(clock: FakeClock) -> None:
    with Simulator(clock=clock, keepalive_interval=0.05) as sim:
        refresh(sim, user="admin", **{"pass": "admin1234"})
        deadline = time.monotonic() + 2
        while "Y" in flags(sim).values() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert set(flags(sim).values()) == {"N"}


def test_wrong_password_is_echoed_after_filtering(sim: Simulator) -> None:
    answer = refresh(sim, **{"pass": "wrong pass!"})
    assert answer == "ERROR: Login incorrect, please try again: |refreshd|wrongpass|BAD|\n"


def test_unknown_user_answers_login_incorrect(sim: Simulator) -> None:
    assert refresh(sim, user="ghost").startswith(
        "ERROR: Login incorrect, please try again: |ghost|"
    )


@pytest.mark.parametrize("user", ["agent", "disabled"])
def test_level_below_7_or_inactive_is_a_failed_login(sim: Simulator, user: str) -> None:
    answer = refresh(sim, **login_as(user, f"{user}-pass"))
    assert answer == f"ERROR: Login incorrect, please try again: |{user}|{user}-pass|BAD|\n"
    assert sim.stats()["users"][user]["failed_login_count"] == 1


def test_user_and_pass_keep_only_letters_digits_dash_underscore(sim: Simulator) -> None:
    assert refresh(sim, user="ref'resh;d", **{"pass": "demo-pass-123 "}).startswith("SUCCESS")


@pytest.mark.parametrize("user", ["nolevel", "noapi", "noast"])
def test_level_api_access_and_ast_admin_access_are_needed_to_refresh(
    sim: Simulator, user: str
) -> None:
    answer = refresh(sim, **login_as(user, f"{user}-pass"))
    assert answer == (
        f"ERROR: server_refresh USER DOES NOT HAVE PERMISSION TO REFRESH SERVERS: |{user}|0\n"
    )
    assert set(flags(sim).values()) == {"N"}


def test_function_missing_from_allowed_functions_is_refused(sim: Simulator) -> None:
    answer = refresh(sim, **login_as("nofunc", "nofunc-pass"))
    assert answer == (
        "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |nofunc|server_refresh|\n"
    )


def test_caller_ip_missing_from_the_users_list_is_blocked(sim: Simulator) -> None:
    answer = refresh(sim, **login_as("ipblocked", "ipblocked-pass"))
    assert answer == "ERROR: Your IP Address is not allowed: 127.0.0.1: ||IPBLOCK|\n"
    assert sim.stats()["logins"]["ipblock"] == 1


def test_class_c_wildcard_in_ip_list_admits_the_caller(clock: FakeClock) -> None:
    user = SimUser("api", "api-pass", allowed_ips=("127.0.0.x",))
    with Simulator(users=[user], clock=clock) as sim:
        assert refresh(sim, **login_as("api", "api-pass")).startswith("SUCCESS")


def test_missing_function_answers_no_function_specified_after_login(sim: Simulator) -> None:
    assert call(sim, **GOOD).text == "ERROR: NO FUNCTION SPECIFIED\n"


def test_unknown_function_without_login_answers_login_incorrect(sim: Simulator) -> None:
    answer = call(sim, function="add_lead").text
    assert answer == "ERROR: Login incorrect, please try again: |||BAD|\n"


def test_short_source_after_filtering_is_invalid(sim: Simulator) -> None:
    assert refresh(sim, source="x-") == "ERROR: Invalid Source - x\nERROR: Invalid Source: |x|\n"
    assert set(flags(sim).values()) == {"N"}


def test_source_is_measured_after_filtering(sim: Simulator) -> None:
    assert refresh(sim, source="a-b").startswith("SUCCESS")


def test_request_without_stage_is_a_side_effect_free_probe(sim: Simulator) -> None:
    answer = call(sim, function="server_refresh", **GOOD).text
    assert answer == "ERROR: server_refresh YOU MUST USE ALL REQUIRED FIELDS: |refreshd||\n"
    assert set(flags(sim).values()) == {"N"}
    assert sim.stats()["refreshes"] == 0


def test_stage_must_contain_REFRESH_case_sensitively(sim: Simulator) -> None:
    answer = refresh(sim, stage="refresh")
    assert answer == "ERROR: server_refresh YOU MUST USE ALL REQUIRED FIELDS: |refreshd|refresh|\n"
    assert refresh(sim, stage="DO_REFRESH_NOW").startswith("SUCCESS")


def test_server_ip_is_ignored_like_the_2024_php(sim: Simulator) -> None:
    assert refresh(sim, server_ip="10.9.9.9").startswith("SUCCESS")


def test_tutorial_mode_rejects_an_unknown_server_ip(clock: FakeClock) -> None:
    with Simulator(clock=clock, check_server_ip=True) as sim:
        admin = login_as("admin", "admin1234")
        assert refresh(sim, server_ip="10.9.9.9", **admin) == "ERROR: SERVER IP NOT FOUND\n"
        assert refresh(sim, server_ip="10.0.0.11", **admin).startswith("SUCCESS")


def test_coffee_is_refused_with_418_before_login(sim: Simulator) -> None:
    answer = call(sim, function="brew_coffee")
    assert answer.status_code == 418
    assert answer.text == "Coffee: brew_coffee|Error 418 I'm a teapot"


def test_post_form_fields_work_like_get(sim: Simulator) -> None:
    fields = {"function": "server_refresh", "stage": "REFRESH", **GOOD}
    answer = requests.post(sim.api_url, data=fields, timeout=TIMEOUT)
    assert answer.text.startswith("SUCCESS")


def test_get_wins_over_post_for_the_same_field(sim: Simulator) -> None:
    fields = {"function": "server_refresh", "stage": "REFRESH", **GOOD}
    answer = requests.post(sim.api_url, params={"stage": "nope"}, data=fields, timeout=TIMEOUT)
    assert "REQUIRED FIELDS" in answer.text


def test_api_answers_on_any_path_ending_in_non_agent_api_php(sim: Simulator) -> None:
    assert refresh(sim, "/cluster-b/vicidial/non_agent_api.php").startswith("SUCCESS")
    assert call(sim, "/vicidial/admin.php").status_code == 404


# -- lock-out ----------------------------------------------------------------------------


def fail_logins(sim: Simulator, times: int) -> list[str]:
    return [refresh(sim, **{"pass": "wrong"}) for _ in range(times)]


def test_ten_failures_within_15_minutes_lock_even_the_right_password(
    sim: Simulator, clock: FakeClock
) -> None:
    assert refresh(sim).startswith("SUCCESS")  # stamps the login time
    clock.advance(timedelta(seconds=60))
    assert all("Login incorrect" in a for a in fail_logins(sim, 10))
    assert refresh(sim) == (
        "ERROR: Too many login attempts, try again in 15 minutes: |refreshd|LOCK|\n"
    )
    assert sim.stats()["users"]["refreshd"] == {"failed_login_count": 10, "locked": True}


def test_locked_attempts_do_not_count_as_failures(sim: Simulator, clock: FakeClock) -> None:
    refresh(sim)
    fail_logins(sim, 10)
    for _ in range(5):
        assert "LOCK" in refresh(sim, **{"pass": "wrong"})
    stats = sim.stats()
    assert stats["users"]["refreshd"]["failed_login_count"] == 10
    assert stats["logins"] == {"ok": 1, "failed": 10, "locked": 5, "ipblock": 0}


def test_lock_lifts_15_minutes_after_the_last_login_stamp(sim: Simulator, clock: FakeClock) -> None:
    refresh(sim)
    fail_logins(sim, 10)
    clock.advance(timedelta(seconds=899))
    assert "LOCK" in refresh(sim)
    clock.advance(timedelta(seconds=2))
    assert refresh(sim).startswith("SUCCESS")
    assert sim.stats()["users"]["refreshd"] == {"failed_login_count": 0, "locked": False}


def test_failure_after_an_old_stamp_restarts_the_count(sim: Simulator) -> None:
    # From a quiet account (stamp long ago): 10 failures count up, the 11th restarts
    # the count at 1 and stamps, so the lock comes at the 21st.
    answers = fail_logins(sim, 21)
    assert all("Login incorrect" in a for a in answers[:20])
    assert sim.stats()["users"]["refreshd"]["failed_login_count"] == 10
    assert "LOCK" in answers[20]


def test_stats_list_every_lockout_even_once_lifted(sim: Simulator, clock: FakeClock) -> None:
    assert sim.stats()["lockouts"] == []
    fail_logins(sim, 20)
    clock.advance(timedelta(seconds=LOCK_SECONDS + 1))
    assert refresh(sim).startswith("SUCCESS")
    served = requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT).json()
    assert served["lockouts"] == [{"user": "refreshd", "at": T0, "until": T0 + LOCK_SECONDS}]
    assert served["users"]["refreshd"]["locked"] is False


def test_success_zeroes_the_failure_count(sim: Simulator) -> None:
    fail_logins(sim, 9)
    assert refresh(sim).startswith("SUCCESS")
    assert sim.stats()["users"]["refreshd"]["failed_login_count"] == 0


# -- faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status"), [("http500", 500), ("http502", 502), ("http503", 503), ("http429", 429)]
)
def test_status_faults_answer_that_status_without_touching_flags(
    sim: Simulator, mode: str, status: int
) -> None:
    sim.set_fault(mode)
    answer = requests.get(sim.api_url, params={"function": "server_refresh"}, timeout=TIMEOUT)
    assert answer.status_code == status
    assert set(flags(sim).values()) == {"N"}


def test_html_fault_answers_an_error_page_with_status_200(sim: Simulator) -> None:
    sim.set_fault("html")
    answer = call(sim, function="version")
    assert answer.status_code == 200
    assert answer.text.startswith("<!DOCTYPE html>")


def test_php_warning_fault_prefixes_the_real_answer(sim: Simulator) -> None:
    sim.set_fault("php_warning")
    answer = refresh(sim)
    assert answer.startswith("<br />\n<b>Warning</b>:")
    assert answer.endswith(
        "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - refreshd|2\n"
    )


def test_empty_fault_answers_200_with_no_body(sim: Simulator) -> None:
    sim.set_fault("empty")
    answer = call(sim, function="version")
    assert (answer.status_code, answer.text) == (200, "")


def test_reset_fault_gives_the_client_a_connection_error(sim: Simulator) -> None:
    sim.set_fault("reset")
    with pytest.raises(requests.ConnectionError):
        call(sim, function="version")


def test_timeout_fault_outlasts_the_client_timeout(sim: Simulator) -> None:
    sim.set_fault("timeout")
    with pytest.raises(requests.Timeout):
        requests.get(sim.api_url, params={"function": "version"}, timeout=0.5)


def test_trickle_fault_sends_one_byte_per_half_second(sim: Simulator) -> None:
    sim.set_fault("trickle")
    started = time.monotonic()
    with requests.get(
        sim.api_url, params={"function": "version"}, stream=True, timeout=TIMEOUT
    ) as answer:
        first = b"".join(next(answer.iter_content(1)) for _ in range(3))
    assert first == b"VER"
    assert time.monotonic() - started >= 0.9


def test_trickle_headers_fault_sends_the_head_a_byte_per_interval_after_the_php_ran(
    sim: Simulator,
) -> None:
    sim.set_fault("trickle_headers", interval=0.2)
    with send_raw(sim, REFRESH) as conn:
        started = time.monotonic()
        head = b""
        while len(head) < 4:
            head += conn.recv(100)
        took = time.monotonic() - started
    assert head.startswith(b"HTTP")
    assert took >= 0.6 - 0.05  # three pauses between four bytes
    assert sim.stats()["refreshes"] == 1  # the PHP ran before the first byte


def test_trickle_headers_fault_ends_with_the_real_answer(sim: Simulator) -> None:
    sim.set_fault("trickle_headers", interval=0.001)
    answer = requests.get(sim.api_url, params=REFRESH, timeout=TIMEOUT)
    assert (answer.status_code, answer.content) == (200, SUCCESS)
    assert answer.headers["Server"] == "Apache"


def send_raw(sim: Simulator, fields: dict[str, str]) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT)
    conn.sendall(f"GET {API_PATH}?{urlencode(fields)} HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
    return conn


def read_for(conn: socket.socket, seconds: float) -> bytes:
    """What arrives in `seconds`, or until the server closes or resets the connection."""
    received = b""
    deadline = time.monotonic() + seconds
    conn.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_continue_forever_fault_sends_100_continue_and_nothing_else(sim: Simulator) -> None:
    sim.set_fault("continue_forever", interval=0.05)
    with send_raw(sim, REFRESH) as conn:
        received = read_for(conn, 2.0)
    assert received.count(CONTINUE) >= 3
    assert received == CONTINUE * received.count(CONTINUE)
    # The request never reached the PHP.
    assert sim.stats()["logins"]["ok"] == 0
    assert [c["answer_kind"] for c in sim.calls()] == ["fault_continue_forever"]


def wait_until_idle(sim: Simulator, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return sim.stats()["in_flight"] == 0


def test_continue_forever_fault_stops_when_the_client_hangs_up(sim: Simulator) -> None:
    sim.set_fault("continue_forever", interval=0.05)
    with send_raw(sim, REFRESH) as conn:
        assert read_for(conn, 2.0).startswith(CONTINUE)
    assert wait_until_idle(sim, 5.0)


def test_continue_forever_fault_gives_up_after_its_bound(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faults, "CONTINUE_FOREVER_SECONDS", 0.3)
    sim.set_fault("continue_forever", interval=0.05)
    started = time.monotonic()
    with send_raw(sim, REFRESH) as conn:
        received = read_for(conn, 15.0)  # returns early: the simulator resets the connection
    assert time.monotonic() - started < 8.0  # its 0.3 s bound, not the 15 s of reading
    assert received == CONTINUE * received.count(CONTINUE)
    assert wait_until_idle(sim, 2.0)


def test_slow_after_login_fault_counts_the_failed_login_before_the_client_gives_up(
    sim: Simulator,
) -> None:
    sim.set_fault("slow_after_login", delay=3.0)
    with pytest.raises(requests.Timeout):
        requests.get(sim.api_url, params={**REFRESH, "pass": "changed"}, timeout=0.3)
    assert sim.stats()["users"]["refreshd"]["failed_login_count"] == 1
    assert [c["answer_kind"] for c in sim.calls()] == ["login_incorrect"]


def test_slow_after_login_fault_sends_the_real_answer_after_the_delay(sim: Simulator) -> None:
    sim.set_fault("slow_after_login", delay=0.3)
    started = time.monotonic()
    answer = requests.get(sim.api_url, params=REFRESH, timeout=TIMEOUT)
    assert time.monotonic() - started >= 0.3
    assert answer.content == SUCCESS
    assert flags(sim)["10.0.0.11"] == "Y"


def test_slow_after_login_holds_the_answer_30_seconds_unless_told() -> None:
    assert faults.make_fault("slow_after_login").delay_seconds == 30.0


def test_trickle_interval_sets_the_pause_between_bytes(sim: Simulator) -> None:
    sim.set_fault("trickle", interval=0.001)
    started = time.monotonic()
    assert refresh(sim).startswith("SUCCESS")
    assert time.monotonic() - started < 10.0  # 72 bytes at the default 0.5 s: 36 s


def test_redirect_login_fault_leads_to_a_login_form(sim: Simulator) -> None:
    sim.set_fault("redirect_login")
    answer = call(sim, function="version")
    assert answer.history[0].status_code == 302
    assert answer.url.endswith("/login.php")
    assert '<input type="password"' in answer.text


def test_big_fault_answers_ten_megabytes(sim: Simulator) -> None:
    sim.set_fault("big")
    assert len(call(sim, function="version").content) == 10 * 1024 * 1024


def raw_get(
    sim: Simulator, fields: dict[str, str], headers: dict[str, str]
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """A GET with exactly these headers (requests and http.client add Accept-Encoding)."""
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", API_PATH + "?" + urlencode(fields), skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        conn.close()


def test_gzip_fault_compresses_the_real_answer_for_a_client_that_accepts_gzip(
    sim: Simulator,
) -> None:
    sim.set_fault("gzip")
    status, headers, body = raw_get(sim, REFRESH, {"Accept-Encoding": "deflate, gzip"})
    assert (status, headers["Content-Encoding"], headers["Vary"]) == (
        200,
        "gzip",
        "Accept-Encoding",
    )
    assert gzip.decompress(body) == SUCCESS
    assert int(headers["Content-Length"]) == len(body)
    assert flags(sim)["10.0.0.11"] == "Y"


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0", "br"])
def test_gzip_fault_sends_plain_text_to_a_client_that_does_not_accept_gzip(
    sim: Simulator, accept: str | None
) -> None:
    sim.set_fault("gzip")
    status, headers, body = raw_get(
        sim, REFRESH, {} if accept is None else {"Accept-Encoding": accept}
    )
    assert (status, body) == (200, SUCCESS)
    assert "Content-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"


def test_gzip_always_fault_compresses_even_for_a_client_that_refuses_it(sim: Simulator) -> None:
    sim.set_fault("gzip_always")
    wrong = {**REFRESH, "pass": "wrong"}
    status, headers, body = raw_get(sim, wrong, {"Accept-Encoding": "identity"})
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert gzip.decompress(body).startswith(b"ERROR: Login incorrect")
    assert sim.stats()["users"]["refreshd"]["failed_login_count"] == 1


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("br, *;q=0.1", True),
        ("*", True),
        ("", False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding_is_read_as_apache_reads_it(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def test_latency_delays_the_normal_answer(sim: Simulator) -> None:
    sim.set_fault("latency", latency=0.3)
    started = time.monotonic()
    assert call(sim, function="version").text.startswith("VERSION:")
    assert time.monotonic() - started >= 0.3


def test_latency_combines_with_another_mode(sim: Simulator) -> None:
    sim.set_fault("http503", latency=0.2)
    started = time.monotonic()
    assert call(sim, function="version").status_code == 503
    assert time.monotonic() - started >= 0.2


def test_every_fault_mode_is_accepted_and_unknown_ones_are_not(sim: Simulator) -> None:
    for mode in FAULT_MODES:
        sim.set_fault(mode)
    with pytest.raises(ValueError, match="unknown fault mode"):
        sim.set_fault("meteor")


def test_count_limited_fault_reverts_to_normal(sim: Simulator) -> None:
    sim.set_fault("http500", count=2)
    statuses = [call(sim, function="version").status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert sim.stats()["faults"] == []


def test_path_scoped_fault_affects_only_that_path(sim: Simulator) -> None:
    sim.set_fault("http502", path="/b/non_agent_api.php")
    assert call(sim, "/b/non_agent_api.php", function="version").status_code == 502
    assert call(sim, "/a/non_agent_api.php", function="version").status_code == 200


def test_clear_faults_restores_normal_answers(sim: Simulator) -> None:
    sim.set_fault("http500")
    sim.clear_faults()
    assert call(sim, function="version").status_code == 200


def test_faults_never_touch_the_admin_endpoints(sim: Simulator) -> None:
    sim.set_fault("timeout")
    assert requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT).status_code == 200


# -- observation and control ---------------------------------------------------------------


def test_requests_are_counted_per_path(sim: Simulator) -> None:
    for _ in range(3):
        call(sim, "/a/non_agent_api.php", function="version")
    call(sim, "/b/non_agent_api.php", function="version")
    stats = sim.stats()
    assert stats["requests"] == {"/a/non_agent_api.php": 3, "/b/non_agent_api.php": 1}
    assert stats["functions"] == {"version": 4}


def test_peak_in_flight_counts_concurrent_slow_requests(sim: Simulator) -> None:
    sim.set_fault("latency", latency=0.4)
    threads = [
        threading.Thread(target=call, args=(sim,), kwargs={"function": "version"}) for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.stats()["peak_in_flight"] == 5
    # The server thread counts a request out just after the client has its answer.
    deadline = time.monotonic() + 2
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.stats()["in_flight"] == 0


def test_call_log_never_holds_the_password(sim: Simulator) -> None:
    refresh(sim)
    refresh(sim, **{"pass": "wrong-secret"})
    sim.set_fault("http500")
    refresh(sim)
    body = requests.get(sim.url + "/_sim/calls", timeout=TIMEOUT).text
    assert "demo-pass-123" not in body
    assert "wrong-secret" not in body
    calls = json.loads(body)
    assert [c["answer_kind"] for c in calls] == ["success", "login_incorrect", "fault_http500"]
    assert set(calls[0]) == {
        "t",
        "received",
        "path",
        "function",
        "user",
        "stage",
        "server_ip",
        "answer_kind",
    }
    assert calls[0]["received"] <= calls[0]["t"]


def test_stats_endpoint_serves_the_stats_document(sim: Simulator) -> None:
    refresh(sim)
    served = requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT).json()
    assert served["refreshes"] == 1
    assert served["logins"]["ok"] == 1
    assert served["servers"][0] == {
        "server_ip": "10.0.0.11",
        "active": True,
        "rebuild_conf_files": "Y",
    }


def test_faults_can_be_set_and_cleared_over_http(sim: Simulator) -> None:
    fault = {"mode": "http503", "path": "/x/non_agent_api.php", "count": 1}
    assert requests.post(sim.url + "/_sim/faults", json=fault, timeout=TIMEOUT).status_code == 200
    assert call(sim, "/x/non_agent_api.php", function="version").status_code == 503
    requests.post(sim.url + "/_sim/faults", json={"mode": "http500"}, timeout=TIMEOUT)
    requests.delete(sim.url + "/_sim/faults", timeout=TIMEOUT)
    assert call(sim, function="version").status_code == 200


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"mode": "meteor"}, "unknown fault mode"),
        ({"mode": "http500", "count": "2"}, "count must be a positive integer"),
        ({"mode": "http500", "count": 0}, "count must be a positive integer"),
        ({"mode": "latency", "latency": -1}, "latency must be zero or more"),
        ({"mode": "http500", "path": 7}, "path must be a string"),
        ({"mode": "http500", "colour": "red"}, "unknown keys: colour"),
        ({"mode": "http500", "interval": 1}, "interval applies only to modes trickle"),
        ({"mode": "trickle", "interval": 0}, "interval must be more than zero"),
        ({"mode": "latency", "delay": 1}, "delay applies only to modes slow_after_login"),
        ({"mode": "slow_after_login", "delay": -1}, "delay must be more than zero"),
        ({"mode": "slow_after_login", "delay": True}, "delay must be more than zero"),
    ],
)
def test_bad_fault_request_is_refused_with_the_reason(
    sim: Simulator, fault: dict[str, Any], reason: str
) -> None:
    answer = requests.post(sim.url + "/_sim/faults", json=fault, timeout=TIMEOUT)
    assert answer.status_code == 400
    assert reason in answer.json()["error"]
    assert sim.stats()["faults"] == []


def test_reset_and_keepalive_endpoints(sim: Simulator) -> None:
    refresh(sim)
    fail_logins(sim, 3)
    requests.post(sim.url + "/_sim/keepalive", timeout=TIMEOUT)
    assert set(flags(sim).values()) == {"N"}
    requests.post(sim.url + "/_sim/reset", timeout=TIMEOUT)
    stats = sim.stats()
    assert stats["requests"] == {}
    assert stats["refreshes"] == 0
    assert stats["users"]["refreshd"]["failed_login_count"] == 0


@pytest.mark.parametrize(
    "mode", ["timeout", "trickle_headers", "continue_forever", "slow_after_login"]
)
def test_stop_is_quick_with_a_request_stuck_in_a_slow_fault(clock: FakeClock, mode: str) -> None:
    sim = Simulator(clock=clock).start()
    sim.set_fault(mode)
    outcome: list[str] = []

    def wait_for_answer() -> None:
        try:
            # A client that would wait a minute: cut off, it was by the stop.
            requests.get(sim.url + API_PATH, params={"function": "version"}, timeout=60)
            outcome.append("answered")
        except requests.RequestException:
            outcome.append("cut off")

    stuck = threading.Thread(target=wait_for_answer)
    stuck.start()
    while sim.stats()["in_flight"] == 0:
        time.sleep(0.01)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 10.0  # not the fault's wait, nor the client's
    stuck.join(timeout=20)
    assert outcome == ["cut off"]


def test_keep_alive_session_serves_a_thousand_requests_on_one_connection(sim: Simulator) -> None:
    """One connection, kept open by the simulator for every answer, as refreshd's pooled
    session expects (how fast it answers is `make bench`'s, not a test's)."""
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=TIMEOUT)
    conn.connect()
    sock = conn.sock
    for _ in range(1000):
        conn.request("GET", API_PATH + "?function=version")
        response = conn.getresponse()
        assert response.status == 200
        assert not response.will_close
        response.read()
        assert conn.sock is sock  # http.client would have connected again
    conn.close()


# -- config and the command --------------------------------------------------------------------


def test_example_config_has_each_permission_variant() -> None:
    users, servers = load_simulator_config(SIMULATOR_CONFIG)
    by_name = {u.user: u for u in users}
    assert by_name["refreshd"] == SimUser(
        "refreshd", "demo-pass-123", user_level=8, api_functions=("server_refresh",)
    )
    assert by_name["nofunc"].api_functions == ("version",)
    assert by_name["ipblocked"].allowed_ips == ("10.9.9.9",)
    assert SimServer("10.0.0.13", active=False) in servers


def test_config_without_tables_gets_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text("")
    users, servers = load_simulator_config(path)
    assert [u.user for u in users] == ["admin"]
    assert [s.server_ip for s in servers] == ["10.0.0.11", "10.0.0.12"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[users]]\nuser = "a"\npassword = "p"\nlevel = 9\n',
            r"users\[0\]: unknown key\(s\) level",
        ),
        ('[[users]]\nuser = "a"\npassword = "p@ss"\n', r"users\[0\]\.password: has characters"),
        ('[[users]]\nuser = "a"\npassword = "p"\nuser_level = true\n', r"user_level: expected int"),
        ('[[users]]\nuser = "a"\n', r"users\[0\]: missing required key 'password'"),
        ('[[servers]]\nserver_ip = "nope"\n', r"servers\[0\]\.server_ip: 'nope' is not an IP"),
        ('[[servers]]\nserver_ip = "10.0.0.1"\n[[servers]]\nserver_ip = "10.0.0.1"\n', "twice"),
        ("[users\n", "not valid TOML"),
        ('colour = "red"\n', "unknown top-level key"),
    ],
)
def test_bad_config_is_refused_with_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_simulator_config(path)
    assert str(path) in str(error.value)


def test_serve_refuses_a_non_loopback_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve("0.0.0.0:0", None) == 2
    assert "loopback" in capsys.readouterr().err


def test_serve_prints_one_started_line_and_stops_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(serve("127.0.0.1:0", None, stop=stop)))
    runner.start()
    deadline = time.monotonic() + 5
    while not out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    event: dict[str, Any] = json.loads(out.getvalue())
    assert event["event"] == "simulator.started"
    assert requests.get(event["api_url"], params={"function": "version"}, timeout=TIMEOUT).ok
    stop.set()
    runner.join(timeout=5)
    assert result == [0]
    assert out.getvalue().count("\n") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_process_exits_0_on_sigterm_or_ctrl_c(signum: int) -> None:
    code = "import sys; from refreshd.simulator import serve; sys.exit(serve('127.0.0.1:0', None))"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            started = json.loads(process.stdout.readline())
            assert requests.get(started["url"] + "/_sim/stats", timeout=TIMEOUT).ok
            process.send_signal(signum)
            assert process.wait(timeout=5) == 0
            assert process.stdout.read() == ""
        finally:
            process.kill()  # a no-op after a clean exit; else the context would wait forever
