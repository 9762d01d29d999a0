"""The notifications' sender: a bounded queue and one worker, retries with back-off on a
fake clock, drops counted, one `notify.failed` per failed delivery with the URL cut to
scheme and host; and the real HTTP exchange against a loopback listener."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime

import pytest

from refreshd.clock import FakeClock, system_clock
from refreshd.metrics import Metrics
from refreshd.notify.sender import Delivery, Failed, Sender, shown_url
from tests.support.listener import listening
from tests.support.loop import Log
from tests.support.ports import refused_port
from tests.support.waiting import eventually

TOKEN = "T0KEN-s3cr3t-42"
URL = f"https://hooks.example.com/services/{TOKEN}"


def _delivery(event: str = "server.suspended", url: str = URL) -> Delivery:
    return Delivery("notification", "ops", event, url, b'{"event": "x"}')


def _sender(send: object, **options: object) -> tuple[Sender, Log, Metrics, FakeClock]:
    clock = FakeClock(datetime(2027, 1, 4, tzinfo=UTC))
    log, metrics = Log(), Metrics()
    sender = Sender(clock, log, metrics, send=send, **options)  # type: ignore[arg-type]
    return sender.start(), log, metrics, clock


def _value(metrics: Metrics, what: str, kind: str = "notification") -> float:
    return metrics.registry.get_sample_value(f"refreshd_notify_{what}_total", {"kind": kind}) or 0


def test_a_delivery_that_fails_then_passes_is_retried_with_doubling_back_off() -> None:
    tries: list[float] = []

    def send(delivery: Delivery, timeout: float) -> None:
        tries.append(clock.monotonic())
        if len(tries) < 3:
            raise Failed("timeout")

    sender, log, metrics, clock = _sender(send, backoff=1.0, attempts=3)
    sender.submit(_delivery())
    assert sender.stop(5)
    assert [b - a for a, b in itertools.pairwise(tries)] == [1.0, 2.0]
    assert _value(metrics, "sent") == 1
    assert log.matching("notify.failed") == []


def test_a_delivery_that_keeps_failing_is_logged_once_with_the_url_cut_to_its_host() -> None:
    def send(delivery: Delivery, timeout: float) -> None:
        raise Failed("connection_refused")

    sender, log, metrics, _ = _sender(send, attempts=3)
    for _ in range(2):
        sender.submit(_delivery())
    assert sender.stop(5)
    failed = log.matching("notify.failed")
    assert len(failed) == 2  # once per failed delivery, never once per attempt
    assert failed[0] == {
        "level": "warning",
        "event": "notify.failed",
        "kind": "notification",
        "name": "ops",
        "notify_event": "server.suspended",
        "error": "connection_refused",
        "attempts": 3,
        "url": "https://hooks.example.com",
    }
    assert TOKEN not in repr(log.lines)
    assert _value(metrics, "failed") == 2
    assert _value(metrics, "sent") == 0


def test_a_refusal_no_retry_can_change_is_not_retried() -> None:
    tries: list[Delivery] = []

    def send(delivery: Delivery, timeout: float) -> None:
        tries.append(delivery)
        raise Failed("http_404", passing=False)

    sender, log, _, _ = _sender(send, attempts=3)
    sender.submit(_delivery())
    assert sender.stop(5)
    assert len(tries) == 1
    assert log.matching("notify.failed", error="http_404", attempts=1)


def test_the_queue_is_bounded_and_drops_are_counted_never_blocking_the_caller() -> None:
    release = threading.Event()
    began = threading.Event()

    def send(delivery: Delivery, timeout: float) -> None:
        began.set()
        assert release.wait(10)

    sender, log, metrics, _ = _sender(send, capacity=2)
    assert sender.submit(_delivery("first"))  # taken by the worker, which then hangs
    assert began.wait(10)
    assert sender.submit(_delivery("second"))
    assert sender.submit(_delivery("third"))
    assert not sender.submit(_delivery("fourth"))  # full: dropped at once
    assert not sender.submit(_delivery("fifth"))
    assert sender.dropped == 2
    assert _value(metrics, "dropped") == 2
    assert len(log.matching("notify.dropped", why="the queue is full")) == 1  # one per run
    release.set()
    assert sender.stop(5)
    assert _value(metrics, "sent") == 3


def test_stop_waits_only_its_bound_and_counts_what_it_left() -> None:
    release = threading.Event()

    def send(delivery: Delivery, timeout: float) -> None:
        release.wait(10)

    sender, log, metrics, _ = _sender(send)
    for event in ("a", "b", "c"):
        sender.submit(_delivery(event))
    eventually(lambda: sender.pending == 2, what="the first taken by the worker")
    assert not sender.stop(0.05)
    assert _value(metrics, "dropped") == 2
    assert log.matching("notify.dropped", why="not delivered before the stop's bound", count=2)
    assert not sender.submit(_delivery("late"))
    release.set()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "https://hooks.example.com"),
        ("http://user:pw@10.0.0.1:8080/p?token=x", "http://10.0.0.1:8080"),
        ("https://[::1]:9/ping/uuid", "https://[::1]:9"),
        ("https://hc-ping.com/0f6b-uuid/start", "https://hc-ping.com"),
    ],
)
def test_a_url_is_shown_as_scheme_and_host_only(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def _real_sender(**options: object) -> tuple[Sender, Log, Metrics]:
    log, metrics = Log(), Metrics()
    sender = Sender(system_clock, log, metrics, backoff=0.01, **options)  # type: ignore[arg-type]
    return sender.start(), log, metrics


def test_a_real_post_and_get_reach_the_listener() -> None:
    with listening() as listener:
        sender, log, metrics = _real_sender()
        sender.submit(_delivery(url=f"{listener.url}/hook/{TOKEN}"))
        sender.submit(Delivery("ping", "east", "start", f"{listener.url}/ping/uuid/start"))
        assert sender.stop(5)
        post, get = listener.received
    assert (post.method, post.path, post.body) == ("POST", f"/hook/{TOKEN}", b'{"event": "x"}')
    assert post.headers["Content-Type"] == "application/json"
    assert (get.method, get.path, get.body) == ("GET", "/ping/uuid/start", b"")
    assert _value(metrics, "sent") == 1
    assert _value(metrics, "sent", "ping") == 1
    assert log.lines == []


def test_real_failures_are_sorted_into_kinds() -> None:
    with listening() as listener, refused_port() as port:
        listener.status = 500
        sender, log, metrics = _real_sender(attempts=2)
        sender.submit(_delivery("answered 500", url=f"{listener.url}/hook/{TOKEN}"))
        sender.submit(_delivery("refused", url=f"http://127.0.0.1:{port}/hook/{TOKEN}"))
        assert sender.stop(10)
        assert len(listener.received) == 2  # a 5xx is retried
    failed = {line["notify_event"]: line for line in log.matching("notify.failed")}
    assert failed["answered 500"]["error"] == "http_500"
    assert failed["refused"]["error"] == "connection_refused"
    assert failed["refused"]["url"] == f"http://127.0.0.1:{port}"
    assert TOKEN not in repr(log.lines)
    assert _value(metrics, "failed") == 2


def test_a_webhook_that_does_not_answer_is_cut_at_the_time_out() -> None:
    with listening() as listener:
        listener.delay = 5.0
        sender, log, _ = _real_sender(attempts=1, timeout=0.2)
        sender.submit(_delivery(url=f"{listener.url}/hook/{TOKEN}"))
        assert sender.stop(5)  # well before the listener would have answered
    assert log.matching("notify.failed", error="timeout", attempts=1)


def test_a_webhook_that_trickles_its_headers_is_cut_at_the_time_out_too() -> None:
    # A byte every 0.1 s never trips a per-read time-out: without a total deadline one
    # delivery would hold the sender's only thread for 100 s, and every ping behind it.
    with listening() as listener:
        listener.trickle = 0.1
        sender, log, _ = _real_sender(attempts=1, timeout=0.5)
        sender.submit(_delivery(url=f"{listener.url}/hook/{TOKEN}"))
        sender.submit(Delivery("ping", "east", "start", f"{listener.url}/ping/uuid/start"))
        assert sender.stop(5)  # both tried, each within its time-out
    assert log.matching("notify.failed", error="timeout", notify_event="server.suspended")
    assert log.matching("notify.failed", error="timeout", notify_event="start")


def test_a_webhook_that_trickles_its_body_has_answered_with_its_status() -> None:
    with listening() as listener:
        listener.trickle, listener.trickled = 0.1, "body"
        sender, log, metrics = _real_sender(attempts=1, timeout=0.5)
        sender.submit(_delivery(url=f"{listener.url}/hook/{TOKEN}"))
        sender.submit(Delivery("ping", "east", "start", f"{listener.url}/ping/uuid/start"))
        assert sender.stop(10)
    assert log.lines == []
    assert _value(metrics, "sent") == 1
    assert _value(metrics, "sent", "ping") == 1
