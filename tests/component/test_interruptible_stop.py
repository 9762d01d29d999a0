"""The graceful stop waits in short slices (daemon._interruptible): a signal the kernel
hands to another thread still has its handler run at once on the main thread (only the
main thread runs Python's handlers, between bytecodes), which a second SIGTERM during the
grace relies on to exit at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from refreshd.daemon import _interruptible
from tests.support.waiting import eventually


class Handled(Exception):
    """Raised by the test's handler, as os._exit would end the daemon."""


@pytest.fixture
def ended() -> Iterator[tuple[threading.Event, list[bool]]]:
    """SIGUSR1's handler for the test, recording whether the stop's work had ended (the
    event, set by the work) each time it ran."""
    work_ended = threading.Event()
    seen: list[bool] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        seen.append(work_ended.is_set())
        raise Handled

    previous = signal.signal(signal.SIGUSR1, handle)
    try:
        yield work_ended, seen
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_signal_delivered_to_another_thread_is_handled_during_the_wait(
    ended: tuple[threading.Event, list[bool]],
) -> None:
    work_ended, seen = ended
    release = threading.Event()
    started = threading.Event()

    def work() -> bool:
        started.set()
        release.wait(30)  # a grace the signal must not wait out
        work_ended.set()
        return True

    def signal_the_worker() -> None:
        eventually(started.is_set, what="the stop's work under way")
        worker = next(t for t in threading.enumerate() if t.name == "refreshd-stop")
        assert worker.ident is not None
        signal.pthread_kill(worker.ident, signal.SIGUSR1)  # not to the main thread

    sender = threading.Thread(target=signal_the_worker)
    sender.start()
    try:
        with pytest.raises(Handled):
            _interruptible(work)
    finally:
        release.set()
        sender.join(10)
    # Handled while the work still waited, not once it had ended.
    assert seen == [False]


def test_the_work_s_answer_and_error_reach_the_caller() -> None:
    assert _interruptible(lambda: True) is True
    assert _interruptible(lambda: False) is False

    def fails() -> bool:
        raise RuntimeError("in the stop")

    with pytest.raises(RuntimeError, match="in the stop"):
        _interruptible(fails)
