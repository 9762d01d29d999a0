"""The state gauges /metrics shows, on the daemon's loop on a fake clock: read from the ledger
and the plan at each scrape, so a restart, a manual command or the mere passing of time
shows in them without an event to set them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from refreshd.simulator.rules import SimUser, Vicidial
from tests.support.loop import USER, at, fleet, http_error, running, users

MONDAY = at("2027-01-04T00:00:00")
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
WRONG = "wrong-password"


def test_a_credentials_wait_restored_from_the_state_file_is_exported_before_any_call(
    tmp_path: Path,
) -> None:
    config = fleet(
        [{"name": "east", "windows": ["00:00-24:00"]}],
        credentials={"main": {"user": USER, "password": WRONG}},
        backoff={"auth_retry": "6h"},
    )
    with running(config, tmp_path, start=MONDAY) as first:
        first.run_for(MINUTE)
        assert first.log.matching("credentials.suspended")
    with running(config, tmp_path, start=MONDAY + HOUR, vicidial=first.vicidial) as second:
        waiting = second.sample(
            "refreshd_credentials_waiting", credentials="main", reason="refused_login"
        )
        calls = list(second.calls)

    assert calls == []
    assert waiting == 1


def test_a_credentials_wait_learnt_from_a_manual_refresh_is_exported(tmp_path: Path) -> None:
    vicidial = Vicidial(users())
    config = fleet([{"name": "east", "windows": ["05:00-06:00"]}], backoff={"auth_retry": "1h"})
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        before = loop.sample(
            "refreshd_credentials_waiting", credentials="main", reason="refused_login"
        )
        vicidial.update_user(USER, password="changed-on-the-dialer")
        loop.manual_refresh("east")  # refused: the manual process journals a wait
        loop.sync()  # the daemon's heartbeat
        after = loop.sample(
            "refreshd_credentials_waiting", credentials="main", reason="refused_login"
        )
        loop.clock.set(MONDAY + 2 * HOUR)  # the wait has run out, with no event to say so
        ended = loop.sample(
            "refreshd_credentials_waiting", credentials="main", reason="refused_login"
        )

    assert (before, after, ended) == (0, 1, 0)


def test_a_suspension_that_ran_out_outside_the_window_is_no_longer_shown(tmp_path: Path) -> None:
    vicidial = Vicidial(users(SimUser("noperm", "noperm-123", api_functions=("version",))))
    config = fleet(
        [{"name": "east", "windows": ["00:00-01:00"]}],
        credentials={"main": {"user": "noperm", "password": "noperm-123"}},
        backoff={"suspend_initial": "6h"},
    )
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        loop.run_for(HOUR)
        suspended = loop.sample("refreshd_server_suspended", server="east")
        loop.run_until(MONDAY + 7 * HOUR)  # the suspension ended at 06:00; next slot 24:00
        ran_out = loop.sample("refreshd_server_suspended", server="east")

    assert len(loop.calls) == 1
    assert (suspended, ran_out) == (1, 0)


def test_a_server_that_never_succeeded_keeps_its_first_seen_time_across_a_restart(
    tmp_path: Path,
) -> None:
    config = fleet([{"name": "east", "windows": ["05:00-06:00"]}])
    with running(config, tmp_path, start=MONDAY) as first:
        seen = first.sample("refreshd_server_first_seen_timestamp_seconds", server="east")
        missed = first.sample("refreshd_slots_missed_total", server="east")
    with running(config, tmp_path, start=MONDAY + HOUR, vicidial=first.vicidial) as second:
        seen_again = second.sample("refreshd_server_first_seen_timestamp_seconds", server="east")
        success = second.sample("refreshd_last_success_timestamp_seconds", server="east")

    assert seen == seen_again == MONDAY.timestamp()
    assert success is None
    assert missed == 0  # present before the first miss: an alert on its increase sees it


def test_a_server_with_nothing_planned_is_exported_as_unplanned_without_a_next_slot(
    tmp_path: Path,
) -> None:
    config = fleet(
        [
            {"name": "frozen", "windows": ["02:00-03:00"]},
            {"name": "east", "windows": ["02:00-03:00"]},
        ],
        blackouts=[
            {
                "name": "freeze",
                "servers": ["frozen"],
                "windows": ["2027-01-01T00:00/2029-01-01T00:00"],
            }
        ],
    )
    with running(config, tmp_path, start=MONDAY) as loop:
        samples = {
            (name, server): loop.sample(name, server=server)
            for name in ("refreshd_server_unplanned", "refreshd_next_slot_timestamp_seconds")
            for server in ("frozen", "east")
        }

    assert samples == {
        ("refreshd_server_unplanned", "frozen"): 1,
        ("refreshd_server_unplanned", "east"): 0,
        ("refreshd_next_slot_timestamp_seconds", "frozen"): None,
        ("refreshd_next_slot_timestamp_seconds", "east"): (MONDAY + 2 * HOUR).timestamp(),
    }


def test_a_spent_failed_login_budget_is_exported_as_its_own_reason(tmp_path: Path) -> None:
    # A web server answering 500 (a reached call without a readable answer) to a login not
    # yet proven: after 3 such calls the logins pause; that is no refused password.
    config = fleet(
        [{"name": "east", "windows": ["00:00-24:00"]}],
        backoff={"retry_initial": "1s", "retry_max": "2s"},
    )
    with running(config, tmp_path, start=MONDAY) as loop:
        loop.fault = lambda n: http_error(500)
        loop.run_for(MINUTE)
        shown = {
            reason: loop.sample("refreshd_credentials_waiting", credentials="main", reason=reason)
            for reason in ("refused_login", "locked_out", "failed_login_budget")
        }
        paused = loop.log.matching("credentials.suspended")

    assert len(loop.calls) == 3
    assert shown == {"refused_login": 0, "locked_out": 0, "failed_login_budget": 1}
    assert [event["wait"] for event in paused] == ["failed_login_budget"]


def test_each_server_exports_its_success_gap_from_its_own_schedule(tmp_path: Path) -> None:
    config = fleet(
        [
            {"name": "nightly", "windows": ["02:00-04:00"]},
            {"name": "weekly", "windows": ["sun 03:00-05:00"]},
            {"name": "weekdays", "windows": ["mon-fri 02:00-04:00"]},
        ]
    )
    with running(config, tmp_path, start=MONDAY) as loop:
        gaps = {
            name: loop.sample("refreshd_server_success_gap_seconds", server=name)
            for name in ("nightly", "weekly", "weekdays")
        }

    assert gaps == {
        "nightly": (24 + 2) * 3600,
        "weekly": (7 * 24 + 2) * 3600,
        "weekdays": (3 * 24 + 2) * 3600,
    }
