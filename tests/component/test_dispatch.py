"""The dispatcher: bounded concurrency, start order, identical requests once, login gate."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from refreshd.attempt import Target
from refreshd.client import Client
from refreshd.clock import FakeClock
from refreshd.config import validate_config
from refreshd.core.ledger import Call
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.dispatch import Dispatcher, Job
from refreshd.runner import Runner
from tests.support.waiting import eventually

NOW = datetime(2027, 1, 5, 2, 0, tzinfo=UTC)
# The runner is the dispatcher's login gate; its config only lends it the back-off.
CONFIG = validate_config(
    {
        "daemon": {"state_path": "/nonexistent/state.db", "metrics_listen": ""},
        "credentials": {"c": {"user": "u", "password": "pw-123"}},
        "servers": [
            {
                "name": "s",
                "api_url": "http://127.0.0.1:1/api.php",
                "credentials": "c",
                "windows": ["02:00-04:00"],
            }
        ],
    },
    environ={},
)


def _gate() -> Runner:
    return Runner(CONFIG, store=None, clock=FakeClock(NOW), log=structlog.get_logger())


class FakeSend:
    """Stands in for the network: records order and concurrency, answers as told."""

    def __init__(self, outcome: Outcome = Outcome.OK, delay: float = 0.0) -> None:
        self.outcome = outcome
        self.delay = delay
        self.lock = threading.Lock()
        self.sent: list[str] = []
        self.current = 0
        self.peak = 0

    def __call__(self, client: Client, target: Target) -> Attempt:
        with self.lock:
            self.sent.append(target.server_ip or "")
            self.current += 1
            self.peak = max(self.peak, self.current)
        time.sleep(self.delay)
        with self.lock:
            self.current -= 1
        return Attempt(Answer(self.outcome, "x"), NOW, 1)


def _target(ip: str, user: str = "u") -> Target:
    return Target("http://127.0.0.1:1/api.php", user, "pw", "refreshd", ip)


class Collector:
    def __init__(self, expected: int) -> None:
        self.done: list[tuple[str, Outcome]] = []
        self.skipped: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.remaining = threading.Semaphore(0)
        self.expected = expected

    def job(self, name: str, target: Target, credentials: str = "c") -> Job:
        def done(attempt: Attempt) -> None:
            with self.lock:
                self.done.append((name, attempt.answer.outcome))
            self.remaining.release()

        def skipped(reason: str) -> None:
            with self.lock:
                self.skipped.append((name, reason))
            self.remaining.release()

        return Job(name, credentials, "pw", target, done, skipped)

    def wait(self) -> None:
        for _ in range(self.expected):
            assert self.remaining.acquire(timeout=10)


def _dispatcher(send: FakeSend, gate: Runner, n: int) -> Dispatcher:
    client = Client(timeout=1)
    return Dispatcher(client, max_concurrency=n, gate=gate, clock=gate.clock, send=send)


def _proven_gate(*names: str) -> Runner:
    gate = _gate()
    for name in names:
        gate.prove(name, "pw")
    return gate


def _send_each(send: FakeSend, gate: Runner, workers: int, jobs: int) -> Collector:
    """Submit `jobs` refreshes of different servers with the same login, one by one, and
    wait for all of them."""
    dispatcher = _dispatcher(send, gate, workers)
    collector = Collector(jobs)
    for i in range(jobs):
        dispatcher.submit(collector.job(f"s{i}", _target(f"10.0.0.{i}")))
    collector.wait()
    dispatcher.stop(1)
    return collector


def test_never_more_than_max_concurrency_in_flight() -> None:
    send = FakeSend(delay=0.02)
    gate = _gate()
    dispatcher = _dispatcher(send, gate, 3)
    collector = Collector(30)
    for i in range(30):
        # 30 different credentials, so the login gate never limits.
        dispatcher.submit(collector.job(f"s{i}", _target(f"10.0.0.{i}", f"u{i}"), f"c{i}"))
    collector.wait()
    dispatcher.stop(1)
    assert send.peak == 3
    assert len(collector.done) == 30


def test_calls_start_in_submission_order() -> None:
    send = FakeSend()
    dispatcher = _dispatcher(send, _proven_gate("c"), 1)
    collector = Collector(10)
    for i in range(10):
        dispatcher.submit(collector.job(f"s{i}", _target(f"10.0.0.{i}")))
    collector.wait()
    dispatcher.stop(1)
    assert send.sent == [f"10.0.0.{i}" for i in range(10)]


def test_identical_requests_pending_together_are_sent_once() -> None:
    send = FakeSend(delay=0.05)
    dispatcher = _dispatcher(send, _proven_gate("c"), 1)
    collector = Collector(4)
    dispatcher.submit(collector.job("first", _target("10.0.0.1")))
    for name in ("a", "b", "c"):
        dispatcher.submit(collector.job(name, _target("10.0.0.2")))
    collector.wait()
    dispatcher.stop(1)
    assert send.sent == ["10.0.0.1", "10.0.0.2"]
    assert sorted(name for name, _ in collector.done) == ["a", "b", "c", "first"]


def test_unproven_credentials_log_in_one_call_at_a_time() -> None:
    send = FakeSend(outcome=Outcome.TRANSIENT, delay=0.02)
    _send_each(send, _gate(), workers=8, jobs=6)
    assert send.peak == 1


def test_proven_credentials_allow_a_few_calls_at_once() -> None:
    send = FakeSend(delay=0.3)  # long enough for four workers to overlap on a loaded machine
    _send_each(send, _gate(), workers=8, jobs=9)
    # The first call proves the login; then up to MAX_LOGINS_IN_FLIGHT (4) at once.
    assert send.peak == 4


def test_once_the_first_login_is_proven_the_next_calls_start_together() -> None:
    # Every call after the first waits at a barrier for 3 others: it only passes if the
    # proving answer let 4 calls start at once, not one per answer.
    barrier = threading.Barrier(4, timeout=5)
    first = threading.Event()

    class Send(FakeSend):
        def __call__(self, client: Client, target: Target) -> Attempt:
            if first.is_set():
                barrier.wait()
            first.set()
            return super().__call__(client, target)

    collector = _send_each(Send(), _gate(), workers=8, jobs=5)
    assert not barrier.broken
    assert sorted(name for name, _ in collector.done) == [f"s{i}" for i in range(5)]


def test_identical_requests_submitted_together_are_sent_once_however_fast_the_answer() -> None:
    send = FakeSend()  # answers at once: only submitting them in one step keeps them together
    dispatcher = _dispatcher(send, _proven_gate("c"), 4)
    collector = Collector(5)
    jobs = [collector.job(f"twin{i}", _target("10.0.0.2")) for i in range(5)]
    assert dispatcher.submit_all(jobs)
    collector.wait()
    dispatcher.stop(1)
    assert send.sent == ["10.0.0.2"]
    assert sorted(name for name, _ in collector.done) == [f"twin{i}" for i in range(5)]


def test_a_refused_login_skips_the_queued_calls_of_those_credentials() -> None:
    send = FakeSend(outcome=Outcome.AUTH_FAILED)
    gate = _gate()
    dispatcher = _dispatcher(send, gate, 4)
    collector = Collector(5)

    def done_then_wait(name: str, target: Target) -> Job:
        job = collector.job(name, target)
        inner = job.on_done

        def on_done(attempt: Attempt) -> None:
            gate.settle(Call(server=name, login="c", credentials="c"), attempt)
            inner(attempt)

        job.on_done = on_done
        return job

    for i in range(5):
        dispatcher.submit(done_then_wait(f"s{i}", _target(f"10.0.0.{i}")))
    collector.wait()
    dispatcher.stop(1)
    assert send.sent == ["10.0.0.0"]
    assert len(collector.skipped) == 4
    assert all("login refused" in reason for _, reason in collector.skipped)


@dataclass
class BehindASlowCall:
    """A dispatcher (4 workers, an unproven login: one call at a time) whose first call, to
    10.0.0.0, is out until `answered` is set: what is submitted next waits behind it."""

    clock: FakeClock
    answered: threading.Event
    send: FakeSend
    dispatcher: Dispatcher
    collector: Collector

    def answer_after(self, span: timedelta) -> None:
        """`span` passes on the clock, then the slow call is answered; every job ends."""
        self.clock.advance(span)
        self.answered.set()
        self.collector.wait()
        self.dispatcher.stop(1)


def behind_a_slow_call(jobs: int) -> BehindASlowCall:
    gate = _gate()
    clock = gate.clock
    assert isinstance(clock, FakeClock)
    answered = threading.Event()

    class Slow(FakeSend):
        def __call__(self, client: Client, target: Target) -> Attempt:
            if target.server_ip == "10.0.0.0":
                assert answered.wait(5)
            return super().__call__(client, target)

    send = Slow(outcome=Outcome.TRANSIENT)
    dispatcher = _dispatcher(send, gate, 4)
    collector = Collector(jobs)
    dispatcher.submit(collector.job("s0", _target("10.0.0.0")))
    return BehindASlowCall(clock, answered, send, dispatcher, collector)


def test_a_call_held_back_past_the_instant_its_run_may_start_is_skipped_not_sent() -> None:
    # An unproven login goes one call at a time: s1's call waits behind s0's slow one (a
    # 25 s answer in the process test that found it), until after its slot has ended. It
    # must not go out then (SPEC: never a refresh outside a window); s2, whose run may still
    # start, goes.
    queue = behind_a_slow_call(3)
    for name, ip, seconds in (("s1", "10.0.0.1", 5), ("s2", "10.0.0.2", 60)):
        job = queue.collector.job(name, _target(ip))
        job.not_after = NOW + timedelta(seconds=seconds)
        queue.dispatcher.submit(job)
    queue.answer_after(timedelta(seconds=10))

    assert queue.send.sent == ["10.0.0.0", "10.0.0.2"]
    (skipped,) = queue.collector.skipped
    assert skipped == (
        "s1",
        "held back past 2027-01-05T02:00:05Z, when its window closed",
    )


def test_a_rider_whose_window_is_still_open_goes_when_its_leaders_has_closed() -> None:
    # Two servers of one cluster (one request) queued behind a slow unproven call: the
    # first's window closes while they wait, the second's does not. The second is not
    # skipped for the first's window ("held back past ..."): it takes the first's place.
    queue = behind_a_slow_call(3)
    jobs = []
    for name, seconds in (("a", 5), ("b", 60)):
        jobs.append(queue.collector.job(name, _target("10.0.0.1")))
        jobs[-1].not_after = NOW + timedelta(seconds=seconds)
    queue.dispatcher.submit_all(jobs)
    queue.answer_after(timedelta(seconds=10))

    assert queue.send.sent == ["10.0.0.0", "10.0.0.1"]
    assert queue.collector.skipped == [
        ("a", "held back past 2027-01-05T02:00:05Z, when its window closed")
    ]
    assert sorted(name for name, _ in queue.collector.done) == ["b", "s0"]


def test_stop_drops_pending_jobs_and_lets_calls_in_flight_finish() -> None:
    send = FakeSend(delay=2.0)  # still out when stop() comes, however slow the machine
    gate = _proven_gate(*(f"c{i}" for i in range(3)))
    dispatcher = _dispatcher(send, gate, 1)
    collector = Collector(3)
    for i in range(3):
        dispatcher.submit(collector.job(f"s{i}", _target(f"10.0.0.{i}", f"u{i}"), f"c{i}"))
    eventually(lambda: send.current == 1, what="s0's call out")
    assert dispatcher.stop(grace=10)
    collector.wait()
    assert [name for name, _ in collector.done] == ["s0"]
    assert sorted(name for name, _ in collector.skipped) == ["s1", "s2"]
    assert not dispatcher.submit(collector.job("late", _target("10.0.0.9")))


def test_a_crashing_callback_does_not_kill_the_worker() -> None:
    send = FakeSend()
    dispatcher = _dispatcher(send, _proven_gate("c"), 1)
    collector = Collector(1)
    bad = collector.job("bad", _target("10.0.0.1"))

    def explode(attempt: Attempt) -> None:
        raise RuntimeError("bug")

    bad.on_done = explode
    dispatcher.submit(bad)
    dispatcher.submit(collector.job("good", _target("10.0.0.2")))
    collector.wait()
    dispatcher.stop(1)
    assert collector.done == [("good", Outcome.OK)]
