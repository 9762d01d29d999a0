"""Same cluster twice, and settling a lost answer: the pure rules over what the cluster's
database showed (core/clusters.py, core/verification.refresh_taken)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd.core.clusters import (
    CallGroups,
    ClusterFacts,
    cluster_of,
    counts_for_mate,
    fingerprint,
    same_clusters,
)
from refreshd.core.verification import Taken, lost_call_taken, refresh_taken
from refreshd.core.vicidial import Outcome

STAMP = datetime(2026, 11, 30, 1, 59, 12, tzinfo=UTC)
ROWS = (("dial1", "10.0.0.11"), ("dial2", "10.0.0.12"), ("db1", "10.0.0.20"))


def facts(
    host: str = "vicidb-east",
    database: str = "asterisk",
    rows: tuple[tuple[str, str], ...] = ROWS,
    version: str | None = "2.14-917a",
    stamp: datetime | None = STAMP,
) -> ClusterFacts:
    return ClusterFacts((host, 3306, database), rows, version, stamp)


def test_two_tables_on_one_database_are_one_cluster_whatever_they_show() -> None:
    # Two [databases] tables, one database (say, two read-only users): certainly one.
    found = same_clusters(
        {"east-a": "east", "east-b": "east-reports"},
        {"east": facts(), "east-reports": facts(rows=(), stamp=None)},
    )

    assert [(g.servers, g.database) for g in found] == [(("east-a", "east-b"), "east")]
    assert found[0].why == "the same database (vicidb-east:3306/asterisk)"


def test_entries_sharing_one_table_are_one_cluster() -> None:
    west = facts(host="w", stamp=STAMP + timedelta(seconds=30))
    found = same_clusters({"a": "east", "b": "east", "c": "west"}, {"east": facts(), "west": west})

    assert [g.servers for g in found] == [("a", "b")]


def test_an_entry_naming_a_box_its_database_does_not_list_stays_apart() -> None:
    # west-1 copied east-1's `database = "east"` by mistake: grouped, its refresh would be
    # east's call, west would never be refreshed, and verifying on east's database would
    # even say "applied". Its server_ip, no box of that database, gives the mistake away.
    entries = {"east-1": "east", "east-2": "east", "west-1": "east", "any": "east"}
    ips = {"east-1": "10.0.0.11", "east-2": "10.0.0.12", "west-1": "10.9.0.11", "any": None}

    found = same_clusters(entries, {"east": facts()}, server_ips=ips)

    assert [g.servers for g in found] == [("east-1", "east-2", "any")]


def test_another_host_with_the_same_rows_version_and_last_reload_is_the_same_cluster() -> None:
    reordered = facts(host="10.1.0.5", rows=tuple(reversed(ROWS)))

    (group,) = same_clusters(
        {"east": "east", "east-2": "replica"}, {"east": facts(), "replica": reordered}
    )

    assert group.servers == ("east", "east-2")
    assert "same 3 servers rows" in group.why
    assert "2026-11-30T01:59:12Z" in group.why
    assert group.cluster == fingerprint(facts()) == fingerprint(reordered)


@pytest.mark.parametrize(
    "other",
    [
        facts(host="w", stamp=STAMP + timedelta(seconds=1)),  # clones, refreshed apart
        facts(host="w", stamp=None),  # never refreshed: nothing to confirm with
        facts(host="w", version="2.14-900"),
        facts(host="w", rows=ROWS[:2]),
        facts(host="w", rows=(("dial1", "10.0.0.11"), ("dial2", "10.0.0.99"), ROWS[2])),
    ],
    ids=["other-last-reload", "never-reloaded", "other-version", "fewer-rows", "other-ip"],
)
def test_databases_elsewhere_that_differ_in_anything_stay_apart(other: ClusterFacts) -> None:
    assert same_clusters({"east": "east", "west": "west"}, {"east": facts(), "west": other}) == []


def test_empty_servers_tables_elsewhere_are_never_taken_for_one_cluster() -> None:
    empty = {"east": facts(rows=()), "west": facts(host="w", rows=())}

    assert same_clusters({"east": "east", "west": "west"}, empty) == []


def test_an_unreadable_database_keeps_its_entries_apart() -> None:
    assert same_clusters({"a": "east", "b": "west"}, {"east": facts()}) == []


def test_clones_sharing_a_fingerprint_are_grouped_by_their_own_table() -> None:
    # Two clusters from one template (same rows) refreshed at different seconds: two groups,
    # each with its own key, although their fingerprints agree.
    clone = facts(host="w", stamp=STAMP + timedelta(minutes=5))
    found = same_clusters(
        {"a1": "east", "a2": "east", "b1": "west", "b2": "west"}, {"east": facts(), "west": clone}
    )

    assert [g.servers for g in found] == [("a1", "a2"), ("b1", "b2")]
    assert found[0].cluster == found[1].cluster
    assert cluster_of(found) == {"a1": "east", "a2": "east", "b1": "west", "b2": "west"}


def test_one_call_per_cluster_and_login_never_across_logins() -> None:
    groups = CallGroups({"a": "east", "b": "east"})

    assert groups.group_of("a", "api", "h1") == groups.group_of("b", "api", "h1")
    assert groups.group_of("a", "api", "h1") != groups.group_of("b", "other", "h1")
    assert groups.group_of("a", "api", "h1") != groups.group_of("b", "api", "h2")
    assert groups.group_of("c", "api", "h1") is None


@pytest.mark.parametrize("outcome", list(Outcome))
def test_only_an_answer_about_the_web_server_leaves_a_mate_elsewhere_to_call(
    outcome: Outcome,
) -> None:
    about_the_path = {
        Outcome.NOT_FOUND,
        Outcome.TLS_REJECTED,
        Outcome.PROXY_REFUSED,
        Outcome.TRANSIENT,
        Outcome.UNEXPECTED,
    }
    assert counts_for_mate(outcome, same_web_server=True, same_server_ip=True)
    assert counts_for_mate(outcome, same_web_server=False, same_server_ip=True) is (
        outcome not in about_the_path
    )


@pytest.mark.parametrize("outcome", list(Outcome))
def test_only_server_ip_not_found_leaves_a_mate_naming_another_server_ip_to_call(
    outcome: Outcome,
) -> None:
    counts = counts_for_mate(outcome, same_web_server=True, same_server_ip=False)
    assert counts is (outcome is not Outcome.NOT_FOUND)


# -- refresh_taken: settling a call whose answer was lost ------------------------------------

START = datetime(2026, 11, 30, 2, 0, 0, 400_000, tzinfo=UTC)  # refreshd's clock


def taken(
    stamp: datetime | None,
    skew: timedelta = timedelta(0),
    uncertainty: timedelta = timedelta(milliseconds=20),
    read_at: datetime = START + timedelta(minutes=2),
) -> Taken:
    """`skew`: how far the database's clock is ahead of refreshd's."""
    return refresh_taken(
        START, stamp, read_at=read_at, database_now=read_at + skew, uncertainty=uncertainty
    )


def _db(moment: datetime, skew: timedelta = timedelta(0)) -> datetime:
    """What NOW() writes for an instant on refreshd's clock: the database's clock, truncated."""
    return (moment + skew).replace(microsecond=0)


@pytest.mark.parametrize("skew_s", [0, 3, -3, 3600 * 5, -7.5, 0.7])
def test_the_call_taken_a_moment_after_its_start_is_settled(skew_s: float) -> None:
    skew = timedelta(seconds=skew_s)
    # The PHP ran 0.8 s after the call left: the next second, whatever the skew.
    stamp = _db(START + timedelta(seconds=1, milliseconds=300), skew)

    assert taken(stamp, skew) is Taken.YES


@pytest.mark.parametrize("skew_s", [0, 3, -3, 3600 * 5, -7.5])
def test_a_refresh_before_the_call_is_not_taken_for_it(skew_s: float) -> None:
    skew = timedelta(seconds=skew_s)

    assert taken(_db(START - timedelta(seconds=2), skew), skew) is Taken.NO
    assert taken(_db(START - timedelta(hours=1), skew), skew) is Taken.NO


def test_never_refreshed_is_not_taken() -> None:
    assert taken(None) is Taken.NO


def test_within_the_clocks_uncertainty_it_is_unknown_and_the_caller_calls_again() -> None:
    # The start sits 0.4 s into its second; with the skew known only within a second, the
    # stamp of that very second may be before or after it.
    stamp = _db(START)

    assert taken(stamp, uncertainty=timedelta(seconds=1)) is Taken.UNKNOWN


def test_a_refresh_earlier_in_the_start_second_counts_as_taken() -> None:
    # NOW() cannot tell it from ours; it flags the boxes no earlier than ours would.
    assert taken(_db(START), uncertainty=timedelta(0)) is Taken.YES


def test_a_stamp_ahead_of_the_database_clock_proves_nothing() -> None:
    read_at = START + timedelta(minutes=2)

    assert taken(read_at + timedelta(hours=1), read_at=read_at) is Taken.UNKNOWN


def test_a_negative_uncertainty_is_a_bug_of_the_caller() -> None:
    with pytest.raises(ValueError, match="uncertainty"):
        taken(STAMP, uncertainty=timedelta(seconds=-1))


@given(
    skew_ms=st.integers(-86_400_000, 86_400_000),
    error_ms=st.integers(0, 2_000),
    true_error_ms=st.integers(-2_000, 2_000),
    delay_ms=st.integers(-600_000, 600_000),
)
def test_yes_and_no_are_never_wrong_whatever_the_skew_and_its_error(
    skew_ms: int, error_ms: int, true_error_ms: int, delay_ms: int
) -> None:
    """A refresh stamped `delay` after the call's start on the database's clock (negative:
    before it); refreshd knows the skew only within `error`, and the truth is anywhere in it.
    YES only when the stamp is at or after the start's second; NO only when before it."""
    true_error_ms = max(-error_ms, min(error_ms, true_error_ms))
    true_skew = timedelta(milliseconds=skew_ms)
    measured = true_skew + timedelta(milliseconds=true_error_ms)
    stamp = _db(START + timedelta(milliseconds=delay_ms), true_skew)
    read_at = START + timedelta(minutes=15)
    found = refresh_taken(
        START,
        stamp,
        read_at=read_at,
        database_now=read_at + measured,
        uncertainty=timedelta(milliseconds=error_ms),
    )
    start_second = _db(START, true_skew)
    if found is Taken.YES:
        assert stamp >= start_second
    if found is Taken.NO:
        assert stamp < start_second
    if error_ms == 0 and delay_ms >= 1000:
        assert found is Taken.YES


# -- lost_call_taken: one reading, dated by its round trip ----------------------------------


def test_one_reading_is_dated_at_the_midpoint_of_its_round_trip() -> None:
    started = datetime(2026, 11, 30, 2, 0, 0, 900_000, tzinfo=UTC)
    asked = started + timedelta(seconds=30)
    # The database's clock equals ours at the midpoint: a stamp in the call's second is ours.
    taken = lost_call_taken(
        started,
        started.replace(microsecond=0),
        asked + timedelta(milliseconds=50),
        asked=asked,
        answered=asked + timedelta(milliseconds=100),
    )
    assert taken is Taken.YES


def test_a_slow_reading_widens_the_doubt_to_unknown() -> None:
    started = datetime(2026, 11, 30, 2, 0, 0, 900_000, tzinfo=UTC)
    asked = started + timedelta(seconds=30)
    # Two seconds of round trip: the call's start may fall a second later on the database's
    # clock than the stamp's second.
    taken = lost_call_taken(
        started,
        started.replace(microsecond=0),
        asked + timedelta(seconds=1),
        asked=asked,
        answered=asked + timedelta(seconds=2),
    )
    assert taken is Taken.UNKNOWN


@pytest.mark.parametrize(
    ("stamp_offset", "expected"),
    [(timedelta(seconds=-5), Taken.NO), (timedelta(seconds=3), Taken.YES), (None, Taken.NO)],
)
def test_a_reading_before_or_after_the_call_decides(
    stamp_offset: timedelta | None, expected: Taken
) -> None:
    started = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
    asked = started + timedelta(seconds=30)
    stamp = None if stamp_offset is None else started + stamp_offset
    taken = lost_call_taken(
        started, stamp, asked, asked=asked, answered=asked + timedelta(milliseconds=2)
    )
    assert taken is expected


def test_a_reading_without_the_databases_clock_is_unknown() -> None:
    started = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
    taken = lost_call_taken(
        started, started + timedelta(seconds=3), None, asked=started, answered=started
    )
    assert taken is Taken.UNKNOWN
