"""Same cluster twice, in the daemon's loop on a fake clock: entries known to be one cluster
make one call per slot, whose answer counts for each; never across two logins."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from refreshd.binding import schedule_of
from refreshd.clock import system_clock
from refreshd.config import Config
from refreshd.core.clusters import CallGroups, SameCluster
from refreshd.core.ledger import login_key
from refreshd.simulator.rules import SimUser, Vicidial
from refreshd.verify.clusters import ClusterWatch
from tests.support.loop import (
    API_URL,
    PASSWORD,
    USER,
    Loop,
    at,
    fleet,
    numbered,
    running,
    timeout_answer,
    users,
)
from tests.support.waiting import eventually

START = at("2026-11-30T08:00:00")
WRONG_LOGIN = {"main": {"user": USER, "password": "wrong-pass-789"}}


@contextmanager
def refused_once_for_the_cluster(config: Config, tmp_path: Path) -> Iterator[Loop]:
    """s0 and s1 in one cluster, their password wrong: a minute from START makes one call,
    refused, which VICIdial counts as one failed login. The loop, still running, for more
    checks."""
    vicidial = Vicidial(users())
    with running(config, tmp_path, start=START, vicidial=vicidial) as loop:
        loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
        loop.run_for(timedelta(minutes=1))

        assert [c.kind for c in loop.calls] == ["login_incorrect"]
        assert vicidial.failed_login_count(USER) == 1
        yield loop


def test_entries_of_one_cluster_make_one_call_per_slot_and_each_records_it(
    tmp_path: Path,
) -> None:
    # Two entries with different server_ip: two requests, unless known to be one cluster.
    config = fleet(numbered(2), daemon={"spread": "0s"})
    servers = [{**s, "every": "1h"} for s in numbered(2)]
    config = fleet(servers)
    with running(config, tmp_path, start=START) as loop:
        loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
        loop.run_for(timedelta(hours=3, minutes=30))

        calls = loop.refreshes()
        assert [c.at for c in calls] == [START + timedelta(hours=h) for h in range(4)]
        for name in ("s0", "s1"):
            assert len(loop.log.matching("refresh.succeeded", server=name)) == 4
            assert loop.runner.ledger.server(name).last_done == START + timedelta(hours=3)
            assert loop.sample("refreshd_refresh_total", server=name, outcome="ok") == 4


def _woken_while_the_second_settles(
    loop: Loop, then: datetime | None = None
) -> tuple[list[str], list[str | None]]:
    """Runs the loop for 90 minutes from START, where the engine wakes at START + 1 h as the
    second entry's answer is being settled (the first entry settled and due again); `then`:
    the clock has moved on to it when that settling ends. The entries in settling order,
    and why each one's run would be told missed as its answer was recorded."""
    settle = loop.runner.settle
    settled: list[str] = []
    waiting: list[str | None] = []

    def settled_after_a_wake(call: Any, attempt: Any, ticket: Any = None) -> Any:
        settled.append(call.server)
        waiting.append(loop.scheduler._servers[call.server].unserved)
        if len(settled) == 2:
            loop.clock.set(START + timedelta(hours=1))
            loop.scheduler.run_due()
            loop.clock.set(then or loop.clock.now())
        return settle(call, attempt, ticket)

    loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
    loop.runner.settle = settled_after_a_wake  # type: ignore[method-assign]
    loop.run_for(timedelta(minutes=90))
    assert sorted(settled[:2]) == ["s0", "s1"], settled  # the wake came mid-group
    return settled, waiting


def test_a_mate_due_again_while_the_group_s_answer_is_settled_waits_for_the_others(
    tmp_path: Path,
) -> None:
    """The group's answer is settled entry by entry. When the first entry settled is already
    due again (a catch-up, a loaded machine) and the engine wakes before the others are
    settled, it waits for them (firing alone, its mate would then fire alone too): the
    group's next run is still one call."""
    config = fleet([{**s, "every": "1h"} for s in numbered(2)])
    with running(config, tmp_path, start=START) as loop:
        _, waiting = _woken_while_the_second_settles(loop)

        calls = loop.refreshes()
        assert [c.at for c in calls] == [START, START + timedelta(hours=1)], calls
        for name in ("s0", "s1"):
            assert len(loop.log.matching("refresh.succeeded", server=name)) == 2
        # Fired, the held entry no longer waits: a miss of that run (a refused claim, say)
        # would not be told as waiting for its mates.
        assert waiting == [None] * 4, waiting


def test_a_run_whose_window_closes_while_it_waits_for_its_mates_is_told_missed(
    tmp_path: Path,
) -> None:
    # A slot at 08:00, refreshed, and one at 09:00 that closes while an entry waits.
    config = fleet([{**s, "windows": ["08:00-08:30", "09:00-09:05"]} for s in numbered(2)])
    with running(config, tmp_path, start=START) as loop:
        (first, _), _ = _woken_while_the_second_settles(loop, then=START + timedelta(minutes=66))

        assert [c.at for c in loop.refreshes()] == [START]
        (missed,) = loop.log.matching("slot.missed")
        assert missed["server"] == first
        assert "waiting for its cluster mates" in str(missed), missed


def test_a_mate_due_while_the_group_s_call_is_out_rides_it(tmp_path: Path) -> None:
    """Waiting is only for mates settling an answer already back: an entry due while its
    cluster's call is still out joins that call (and its answer), as before."""
    servers = [
        {"name": "s0", "server_ip": "10.0.0.0", "windows": ["00:00-24:00"], "every": "1h"},
        {"name": "s1", "server_ip": "10.0.0.1", "windows": ["08:10-08:20"]},
    ]
    with running(fleet(servers), tmp_path, start=START) as loop:
        loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
        out, answer = threading.Event(), threading.Event()

        def slow_first_call() -> None:
            if not out.is_set():
                out.set()
                assert answer.wait(10)

        loop.hold = slow_first_call
        loop.scheduler.run_due()  # s0's 08:00 call goes out and waits
        assert out.wait(10)
        loop.clock.set(START + timedelta(minutes=10))
        loop.scheduler.run_due()  # s1 is due while that call is out
        loop.clock.set(START + timedelta(minutes=25))  # its window has closed meanwhile
        answer.set()
        assert loop.scheduler.dispatcher.wait_idle(10)

        assert [c.at for c in loop.calls] == [START + timedelta(minutes=25)]
        assert len(loop.log.matching("refresh.succeeded", server="s1")) == 1
        assert loop.log.matching("slot.missed") == []


def test_without_a_known_cluster_each_entry_calls(tmp_path: Path) -> None:
    config = fleet([{**s, "every": "1h"} for s in numbered(2)])
    with running(config, tmp_path, start=START) as loop:
        loop.run_for(timedelta(minutes=90))

        assert len(loop.refreshes()) == 4  # the status quo the grouping removes


def test_one_cluster_reached_with_two_logins_calls_once_per_login(tmp_path: Path) -> None:
    other = SimUser("refreshd2", "other-pass-456")
    config = fleet(
        [
            {"name": "s0", "server_ip": "10.0.0.1", "windows": ["00:00-24:00"], "every": "1h"},
            {
                "name": "s1",
                "server_ip": "10.0.0.2",
                "windows": ["00:00-24:00"],
                "every": "1h",
                "credentials": "second",
            },
        ],
        credentials={
            "main": {"user": USER, "password": PASSWORD},
            "second": {"user": other.user, "password": other.password},
        },
    )
    with running(config, tmp_path, start=START, vicidial=Vicidial(users(other))) as loop:
        loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
        loop.run_for(timedelta(minutes=90))

        assert sorted(c.user for c in loop.refreshes()) == sorted([USER, other.user] * 2)


def test_a_refused_login_of_the_group_is_one_failed_login_for_the_user(tmp_path: Path) -> None:
    # The password in the config is wrong: one call for both entries, so VICIdial counts
    # one failed login; refreshd's budget never counts fewer than VICIdial does (each entry
    # records the shared answer, as identical requests always have: it may count more).
    config = fleet([{**s, "every": "1h"} for s in numbered(2)], credentials=WRONG_LOGIN)
    with refused_once_for_the_cluster(config, tmp_path) as loop:
        assert len(loop.runner.ledger.login(login_key(USER)).failed_logins) >= 1
        for name in ("s0", "s1"):
            assert len(loop.log.matching("refresh.failed", server=name)) == 1


def test_with_a_spread_entries_of_one_database_table_are_still_due_together() -> None:
    database = {"url": "mysql://ro@vicidb-east/asterisk", "password": "ro-pass-4567"}
    servers = [{**s, "database": "east"} for s in numbered(2)] + [
        {"name": "alone", "windows": ["00:00-24:00"]}
    ]
    config = fleet(servers, daemon={"spread": "50m"}, databases={"east": database})

    s0, s1, alone = (schedule_of(config, config.server(n)).offset for n in ("s0", "s1", "alone"))

    assert s0 == s1
    assert alone != s0  # the spread still spreads everything else


# -- the daemon's learning (verify/clusters.ClusterWatch), with its reading stubbed ----------

EAST = {"url": "mysql://ro@vicidb-east/asterisk", "password": "ro-pass-4567"}


def _group(why: str = "the same database") -> SameCluster:
    return SameCluster("f00d", "east", ("s0", "s1"), why)


class Learnt:
    """A stand-in for reading the databases: answers `groups`, counting the reads."""

    def __init__(self) -> None:
        self.groups = [_group()]
        self.reads = 0
        self.told: list[list[SameCluster]] = []

    def learn(self, config: Config) -> tuple[list[SameCluster], dict[str, str]]:
        self.reads += 1
        return list(self.groups), {}

    def tell(self, groups: Sequence[SameCluster]) -> None:
        self.told.append(list(groups))


def test_the_scheduler_is_told_only_when_the_grouping_changes() -> None:
    learnt = Learnt()
    watch = ClusterWatch(system_clock, learnt.tell, interval=3600, learn=learnt.learn)
    config = fleet([{**s, "database": "east"} for s in numbered(2)], databases={"east": EAST})
    try:
        watch.configure(config)  # learnt at once, before any slot
        learnt.groups = [_group("another last reload")]  # only the reason moved
        watch.relearn()
        learnt.groups = []  # the database now says otherwise
        watch.relearn()
    finally:
        watch.stop()

    assert learnt.told == [[_group()], []]


def test_the_grouping_is_learnt_again_at_its_interval() -> None:
    learnt = Learnt()
    watch = ClusterWatch(system_clock, learnt.tell, interval=0.05, learn=learnt.learn)
    config = fleet([{**s, "database": "east"} for s in numbered(2)], databases={"east": EAST})
    try:
        watch.configure(config)
        eventually(lambda: learnt.reads >= 3, timeout=5, what="two more readings")
    finally:
        watch.stop()


def test_without_a_database_nothing_is_read_and_no_thread_runs() -> None:
    def watchers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "refreshd-clusters"}

    before = watchers()  # another test's, in this process, would not be ours
    watch = ClusterWatch(system_clock, lambda groups: None, interval=0.05)

    watch.configure(fleet(numbered(2)))  # the real reading: it must not connect anywhere

    assert watchers() == before
    watch.stop()


def test_a_mate_through_another_web_server_calls_alone_when_the_first_one_is_down(
    tmp_path: Path,
) -> None:
    # Two web servers of one cluster; the first entry's does not answer. Its time-out says
    # nothing of the second web server: that entry makes its own call, in the same slot.
    second = API_URL.replace("vicidial.test", "vicidial2.test")
    servers = [{**s, "every": "1h"} for s in numbered(2)]
    servers[1]["api_url"] = second
    with running(fleet(servers), tmp_path, start=START) as loop:
        loop.fault = lambda number: timeout_answer() if number == 0 else None
        loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
        loop.run_for(timedelta(minutes=1))

        first, second = loop.calls[:2]
        assert (first.kind, first.server_ip, first.at) == ("fault", "10.0.0.0", START)
        # At once, not after a back-off: s1's own request, answered by its web server.
        assert (second.kind, second.server_ip, second.at) == ("success", "10.0.0.1", START)
        assert loop.log.matching("refresh.retrying", server="s1") == []
        assert len(loop.log.matching("refresh.retrying", server="s0")) == 1


def test_a_refused_login_counts_for_a_mate_through_another_web_server(tmp_path: Path) -> None:
    # A refused login is the cluster's answer about the login: the mate does not try it.
    servers = [{**s, "every": "1h"} for s in numbered(2)]
    servers[1]["api_url"] = API_URL.replace("vicidial.test", "vicidial2.test")
    config = fleet(servers, credentials=WRONG_LOGIN)
    with refused_once_for_the_cluster(config, tmp_path) as loop:
        # The helper saw one call in all: the mate took its answer without a call of its own.
        (mates,) = loop.log.matching("refresh.failed", server="s1")
        assert mates["outcome"] == "auth_failed"


def test_a_server_ip_the_cluster_does_not_know_never_suspends_a_mate_that_names_a_known_one(
    tmp_path: Path,
) -> None:
    # An old entry and a new one of one cluster: the old one still names a box since
    # removed, which VICIdial (the tutorial's PHP) answers with SERVER IP NOT FOUND. That
    # answer is about the old entry's server_ip, not the cluster: the new entry, which names
    # a box VICIdial knows, makes its own call in the same slot and is refreshed.
    servers = [
        {"name": "old", "server_ip": "10.0.0.99", "windows": ["00:00-24:00"], "every": "1h"},
        {"name": "new", "server_ip": "10.0.0.11", "windows": ["00:00-24:00"], "every": "1h"},
    ]
    vicidial = Vicidial(users(), check_server_ip=True)
    with running(fleet(servers), tmp_path, start=START, vicidial=vicidial) as loop:
        loop.scheduler.clusters = CallGroups({"old": "east", "new": "east"})
        loop.run_for(timedelta(minutes=1))

        assert [(c.server_ip, c.kind) for c in loop.calls] == [
            ("10.0.0.99", "server_ip_not_found"),
            ("10.0.0.11", "success"),
        ]
        assert loop.log.matching("server.suspended", server="new") == []
        assert len(loop.log.matching("refresh.succeeded", server="new")) == 1
        assert len(loop.log.matching("server.suspended", server="old")) == 1
