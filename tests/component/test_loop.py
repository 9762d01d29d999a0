"""The daemon's loop, component-tested on a fake clock: the real scheduler, runner, dispatcher
and store, VICIdial's pure rules in-process. Days of schedule run in milliseconds."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from refreshd.config import Config
from refreshd.core.policy import LOCKOUT_WAIT
from refreshd.simulator.rules import SimUser, Vicidial
from tests.support.loop import (
    PASSWORD,
    USER,
    at,
    fleet,
    http_error,
    numbered,
    running,
    timeout_answer,
    users,
)

MONDAY = at("2027-01-04T00:00:00")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)


def test_twenty_servers_are_each_refreshed_exactly_once_per_slot(tmp_path: Path) -> None:
    servers = [
        {"name": f"s{i}", "server_ip": f"10.0.0.{i}", "windows": ["02:00-03:00"]} for i in range(20)
    ]
    with running(fleet(servers, daemon={"spread": "30m"}), tmp_path, start=MONDAY) as loop:
        loop.run_for(3 * DAY)

    calls = loop.refreshes()
    assert len(calls) == 20 * 3
    for ip in {call.server_ip for call in calls}:
        days = sorted(call.at.date() for call in calls if call.server_ip == ip)
        assert len(set(days)) == 3
    assert all(timedelta(hours=2) <= call.at - call.at.replace(hour=0) < 3 * HOUR for call in calls)
    assert len(loop.calls) == len(calls)


def test_a_permission_denied_server_is_called_at_doubling_gaps_only(tmp_path: Path) -> None:
    vicidial = Vicidial(users(SimUser("noperm", "noperm-123", api_functions=("version",))))
    config = fleet(
        [{"name": "east", "windows": ["00:00-24:00"]}],
        credentials={"main": {"user": "noperm", "password": "noperm-123"}},
        backoff={"suspend_initial": "1h", "suspend_max": "8h"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(2 * DAY)

    gaps = [b.at - a.at for a, b in zip(loop.calls, loop.calls[1:], strict=False)]
    assert gaps[:4] == [HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR]
    assert set(gaps[4:]) == {8 * HOUR}
    suspended = loop.log.matching("server.suspended")
    assert [line["suspensions"] for line in suspended[:5]] == [1, 2, 3, 4, 5]


def test_servers_sharing_a_wrong_password_cost_one_failed_login_per_auth_retry(
    tmp_path: Path,
) -> None:
    vicidial = Vicidial(users())
    config = fleet(
        numbered(10),
        credentials={"main": {"user": USER, "password": "wrong-password"}},
        backoff={"auth_retry": "1h"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(DAY - MINUTE)

    assert len(loop.calls) == 24  # one failed login per hour, all servers together
    assert vicidial.tally.logins["failed"] == 24
    assert vicidial.lockouts == []
    (first, *_) = loop.log.matching("credentials.suspended")
    assert (first["credentials"], first["outcome"]) == ("main", "auth_failed")
    assert first["suspended_until"] == MONDAY + HOUR


def test_the_shortest_auth_retry_never_lets_vicidial_lock_the_user(tmp_path: Path) -> None:
    vicidial = Vicidial(users())
    config = fleet(
        numbered(10),
        credentials={"main": {"user": USER, "password": "wrong-password"}},
        backoff={"auth_retry": "5m"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(DAY - MINUTE)

    # One failed login every 5 minutes, the most a wrong password costs: 3 in any 15 minutes.
    assert vicidial.lockouts == []
    assert vicidial.tally.logins["failed"] == 24 * 12


def test_a_transient_failure_is_retried_with_backoff_until_it_succeeds(tmp_path: Path) -> None:
    config = fleet(
        [{"name": "east", "windows": ["02:00-03:00"]}],
        backoff={"retry_initial": "10s", "retry_max": "80s"},
    )
    with running(config, tmp_path, start=MONDAY) as loop:
        loop.fault = lambda n: http_error(500) if n < 3 else None
        loop.run_for(DAY)

    assert [call.kind for call in loop.calls] == ["fault"] * 3 + ["success"]
    retrying = loop.log.matching("refresh.retrying")
    assert [line["attempt"] for line in retrying] == [1, 2, 3]
    for number, line in enumerate(retrying):
        assert line["http_status"] == 500
        gap = line["retry_at"] - loop.calls[number].at
        assert timedelta(seconds=1) <= gap <= timedelta(seconds=10 * 2**number)
    (succeeded,) = loop.log.matching("refresh.succeeded")
    assert succeeded["attempt"] == 4


def test_a_slot_that_ends_without_success_is_missed_once(tmp_path: Path) -> None:
    config = fleet(
        [{"name": "east", "windows": ["02:00-02:10"]}],
        backoff={"retry_initial": "1m", "retry_max": "2m"},
    )
    with running(config, tmp_path, start=MONDAY) as loop:
        loop.fault = lambda n: http_error(503)
        loop.run_for(5 * HOUR)

    assert all(
        MONDAY + 2 * HOUR <= c.at < MONDAY + 2 * HOUR + 10 * timedelta(minutes=1)
        for c in loop.calls
    )
    (missed,) = loop.log.matching("slot.missed")
    assert (missed["server"], missed["slot"]) == ("east", MONDAY + 2 * HOUR)
    assert missed["attempts"] == len(loop.calls)


def test_every_repeats_the_refresh_once_per_period_inside_the_window(tmp_path: Path) -> None:
    config = fleet([{"name": "east", "windows": ["02:00-03:00"], "every": "10m"}])
    with running(config, tmp_path, start=MONDAY) as loop:
        loop.run_for(DAY)

    times = [call.at - MONDAY for call in loop.calls]
    assert times == [2 * HOUR + k * timedelta(minutes=10) for k in range(6)]


def test_no_call_is_made_in_a_blackout_covering_the_window(tmp_path: Path) -> None:
    config = fleet(
        [{"name": "east", "windows": ["02:00-03:00"]}],
        blackouts=[{"name": "freeze", "servers": ["*"], "windows": ["mon 00:00-12:00"]}],
    )
    with running(config, tmp_path, start=MONDAY) as loop:
        loop.run_for(2 * DAY)

    assert [call.at for call in loop.calls] == [MONDAY + DAY + 2 * HOUR]


def test_a_server_blacked_out_past_the_search_horizon_is_refreshed_when_the_blackout_ends(
    tmp_path: Path,
) -> None:
    # A freeze of 500 days: at start no run lies within the 400 days the planner searches.
    ends = MONDAY + 500 * DAY
    config = fleet(
        [{"name": "east", "windows": ["02:00-03:00"]}],
        blackouts=[
            {"name": "freeze", "servers": ["*"], "windows": ["2027-01-01T00:00/2028-05-18T00:00"]}
        ],
    )
    assert ends == at("2028-05-18T00:00:00")
    with running(config, tmp_path, start=MONDAY) as loop:
        loop.run_until(ends + 2 * DAY)

    assert [call.at for call in loop.calls] == [ends + 2 * HOUR, ends + DAY + 2 * HOUR]
    unplanned = loop.log.matching("server.unplanned", server="east")
    assert [line["planning_again_at"] for line in unplanned] == [MONDAY + 400 * DAY]


def test_a_restart_inside_the_same_window_does_not_refresh_again(tmp_path: Path) -> None:
    config = fleet([{"name": "east", "windows": ["02:00-04:00"]}])
    with running(config, tmp_path, start=MONDAY) as first:
        first.run_until(MONDAY + 3 * HOUR)
    with running(config, tmp_path, start=MONDAY + 3 * HOUR, vicidial=first.vicidial) as second:
        second.run_until(MONDAY + 5 * HOUR)

    assert len(first.calls) == 1
    assert second.calls == []


def test_a_server_removed_and_added_back_is_not_refreshed_again_in_its_done_slot(
    tmp_path: Path,
) -> None:
    both = fleet(
        [{"name": "east", "windows": ["02:00-04:00"]}, {"name": "west", "windows": ["05:00-06:00"]}]
    )
    west_only = fleet([{"name": "west", "windows": ["05:00-06:00"]}])
    with running(both, tmp_path, start=MONDAY) as loop:
        loop.run_until(MONDAY + 2 * HOUR + timedelta(minutes=5))
        loop.scheduler.reload(west_only)
        loop.run_for(timedelta(minutes=5))
        loop.scheduler.reload(both)
        loop.run_until(MONDAY + 4 * HOUR)

    assert [call.at for call in loop.calls] == [MONDAY + 2 * HOUR]


def test_a_manual_refresh_that_succeeds_ends_the_loops_suspension(tmp_path: Path) -> None:
    vicidial = Vicidial(users(SimUser("noperm", "noperm-123", api_functions=("version",))))
    config = fleet(
        [{"name": "east", "windows": ["00:00-24:00"]}],
        credentials={"main": {"user": "noperm", "password": "noperm-123"}},
        backoff={"suspend_initial": "6h"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(HOUR)
        assert len(loop.calls) == 1
        vicidial.update_user("noperm", api_functions=("ALL_FUNCTIONS",))
        loop.manual_refresh("east")  # what `refreshd refresh east` does beside it
        loop.sync()
        (resumed,) = loop.log.matching("server.resumed")
        loop.run_for(HOUR)

    assert resumed["reason"] == "a manual refresh succeeded"
    kinds = [call.kind for call in loop.calls]
    assert kinds == ["function_not_allowed", "success", "success"]  # loop, manual, loop again


def test_a_lock_out_answer_stops_every_call_for_at_least_seventeen_minutes(
    tmp_path: Path,
) -> None:
    vicidial = Vicidial(users())
    # Someone else logged in, then failed ten times: VICIdial locks the user.
    login = {"function": "server_refresh", "user": USER, "pass": PASSWORD}
    vicidial.answer(login, "10.9.9.9", MONDAY.timestamp())
    for _ in range(10):
        vicidial.answer({**login, "pass": "wrong"}, "10.9.9.9", MONDAY.timestamp())
    assert vicidial.is_locked(USER, MONDAY.timestamp())
    config = fleet(numbered(3), backoff={"auth_retry": "5m"})
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(HOUR)

    first, second, *_ = loop.calls
    assert first.kind == "locked"
    assert second.at - first.at >= LOCKOUT_WAIT
    assert len(loop.refreshes()) == 3  # each server once, after the wait


def test_a_manual_refresh_that_logs_in_ends_the_loops_credentials_wait(tmp_path: Path) -> None:
    config = fleet(
        [{"name": "east", "windows": ["00:00-24:00"]}],
        credentials={"main": {"user": USER, "password": "wrong-password"}},
        backoff={"auth_retry": "1h"},
    )
    vicidial = Vicidial([SimUser(USER, PASSWORD)])
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(MINUTE)
        vicidial.update_user(USER, password="wrong-password")  # the dialer now agrees
        loop.manual_refresh("east")
        loop.sync()
        (resumed,) = loop.log.matching("credentials.resumed")
        loop.run_for(MINUTE)

    assert (resumed["credentials"], resumed["reason"]) == ("main", "a manual refresh logged in")
    kinds = [call.kind for call in loop.calls]
    assert kinds == ["login_incorrect", "success", "success"]  # loop, manual, loop again
    assert vicidial.tally.logins["failed"] == 1


def test_a_manual_refresh_refused_a_login_makes_the_loop_wait_too(tmp_path: Path) -> None:
    vicidial = Vicidial(users())
    config = fleet([{"name": "east", "windows": ["05:00-06:00"]}], backoff={"auth_retry": "1h"})
    with running(
        config, tmp_path, start=MONDAY + 4 * HOUR + 30 * MINUTE, vicidial=vicidial
    ) as loop:
        vicidial.update_user(USER, password="changed-on-the-dialer")
        loop.manual_refresh("east")
        loop.sync()
        (adopted,) = loop.log.matching("credentials.suspended")
        loop.run_until(MONDAY + 6 * HOUR)

    assert adopted["credentials"] == "main"
    assert "manual refresh" in adopted["reason"]
    assert adopted["suspended_until"] == MONDAY + 5 * HOUR + 30 * MINUTE
    # The loop's slot opened at 05:00 inside the wait: its one call waits for the end.
    assert [(c.kind, c.at) for c in loop.calls] == [
        ("login_incorrect", MONDAY + 4 * HOUR + 30 * MINUTE),
        ("login_incorrect", MONDAY + 5 * HOUR + 30 * MINUTE),
    ]


def test_a_slot_that_ends_while_the_server_is_suspended_is_missed(tmp_path: Path) -> None:
    vicidial = Vicidial(users(SimUser("noperm", "noperm-123", api_functions=("version",))))
    config = fleet(
        [{"name": "east", "windows": ["02:00-02:30"]}],
        credentials={"main": {"user": "noperm", "password": "noperm-123"}},
        backoff={"suspend_initial": "1h", "suspend_max": "1h"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(4 * HOUR)

    (missed,) = loop.log.matching("slot.missed")
    assert (missed["slot"], missed["outcome"]) == (MONDAY + 2 * HOUR, "permission_denied")
    assert [call.at for call in loop.calls] == [MONDAY + 2 * HOUR]


def test_tables_and_urls_naming_one_user_share_one_failed_login_budget(tmp_path: Path) -> None:
    # Two tables for one VICIdial user (one with a stale password) on two web servers of
    # one cluster: VICIdial counts the user's failures together, and so does refreshd.
    vicidial = Vicidial(users())
    servers = [
        {**spec, "credentials": table, "api_url": f"http://web{n}.test/vicidial/non_agent_api.php"}
        for n, table in enumerate(("good", "stale"))
        for spec in numbered(5)
    ]
    for index, spec in enumerate(servers):
        spec["name"] = f"s{index}"
    config = fleet(
        servers,
        credentials={
            "good": {"user": USER, "password": PASSWORD},
            "stale": {"user": USER, "password": "stale-password"},
        },
        backoff={"auth_retry": "1h"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(DAY - MINUTE)

    assert vicidial.lockouts == []
    assert vicidial.tally.logins["failed"] <= 24  # at most one per auth_retry, both tables
    assert len(loop.log.matching("credentials.suspended")) == vicidial.tally.logins["failed"]


def test_a_vicidial_slower_than_the_timeout_with_a_changed_password_never_locks(
    tmp_path: Path,
) -> None:
    # The PHP counts each failed login, then the answer comes after the client gave up:
    # refreshd sees only time-outs, which the retry back-off alone would repeat every few
    # seconds. At most 3 such calls per user in any 15 minutes.
    vicidial = Vicidial(users())
    config = fleet(
        numbered(5),
        credentials={"main": {"user": USER, "password": "changed-on-the-dialer"}},
        backoff={"retry_initial": "1s", "retry_max": "2s"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.fault = lambda n: timeout_answer()
        loop.fault_after_login = True
        loop.run_for(DAY - MINUTE)

    assert vicidial.lockouts == []
    times = sorted(call.at for call in loop.calls)
    assert max_in_any(times, timedelta(minutes=15)) <= 3
    paused = loop.log.matching("credentials.suspended")
    assert paused
    assert paused[0]["wait"] == "failed_login_budget"
    assert "no readable answer" in paused[0]["reason"]


def max_in_any(times: list[datetime], window: timedelta) -> int:
    """The most instants inside any half-open span of `window`."""
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_reload_with_a_new_password_gives_the_calls_a_client_that_masks_it(
    tmp_path: Path,
) -> None:
    servers = [{"name": "east", "windows": ["02:00-04:00"]}]

    def with_other(password: str) -> Config:
        # A table no server uses: an answer may still echo its password (a shared page).
        other = {"user": "other", "password": password}
        return fleet(
            servers, credentials={"main": {"user": USER, "password": PASSWORD}, "other": other}
        )

    with running(with_other("the-old-one-123"), tmp_path, start=MONDAY) as loop:
        before = loop.scheduler._client
        loop.scheduler.reload(with_other("a-new-one-456"))
        after = loop.scheduler._client

    assert "the-old-one-123" in before.secrets
    assert after is not before
    assert "a-new-one-456" in after.secrets
