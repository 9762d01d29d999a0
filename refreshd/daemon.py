"""Process life of `refreshd run`: start, signals, reload, heartbeat, metrics, clean stop."""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import FrameType

from refreshd import __version__
from refreshd.claiming import claims_for
from refreshd.clock import Clock, StepWatch, system_clock
from refreshd.config import (
    Config,
    ConfigError,
)
from refreshd.httpd import MetricsServer, listen_error
from refreshd.instance import LockHeld, daemon_lock
from refreshd.logs import get_logger, redactor
from refreshd.metrics import Metrics
from refreshd.notify import Notifications
from refreshd.reloading import Reloading
from refreshd.runner import Runner
from refreshd.scheduler import Scheduler
from refreshd.sdnotify import Notifier
from refreshd.statuspage import daemon_page
from refreshd.store import StateError, StateStore
from refreshd.store.opening import open_store
from refreshd.verify.watch import Verification

__all__ = ["Daemon", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 78

# The heartbeat proves the scheduling loop alive, feeds the systemd watchdog and notices
# wall-clock jumps; at most this long apart.
HEARTBEAT = 10.0
# The longest the main thread waits before Python runs a signal handler it owes.
SIGNAL_POLL = 0.2
# A call this many seconds past the client's deadline is stuck: /healthz says 503.
STUCK_MARGIN = 5.0
# A wall-clock step larger than this, relative to the monotonic clock, is a jump.
CLOCK_JUMP = 2.0


class Daemon(Reloading):
    """One running daemon. `run()` is the whole life; signals are turned into queue
    messages, handled one at a time on the main thread."""

    def __init__(
        self,
        config_path: Path,
        environ: Mapping[str, str] | None = None,
        clock: Clock = system_clock,
        *,
        wait_for_config: bool = False,
    ) -> None:
        self.config_path = config_path
        self.wait_for_config = wait_for_config
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self.log = get_logger()
        self.notifier = Notifier(self.environ)
        self.metrics = Metrics()
        # SimpleQueue, not Queue: its put() is reentrant, and the signal handler calls it
        # on the main thread, which may be inside get() holding a Queue's lock (deadlock).
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop_heartbeat = threading.Event()
        interval = self.notifier.watchdog_interval
        self.heartbeat = min(HEARTBEAT, interval) if interval else HEARTBEAT
        self.scheduler: Scheduler | None = None
        self.metrics_server: MetricsServer | None = None
        self.verification: Verification | None = None
        self.page = partial(daemon_page, self)  # the status page at /

    # --- life ------------------------------------------------------------------------

    def run(self) -> int:
        # First thing: a SIGHUP or SIGTERM during start-up is queued, not fatal.
        self._install_signals()
        # Hand the interpreter lock over within 1 ms rather than 5: the timer thread's
        # hand-off to a worker is the firing lag operators see (bench/accuracy.py).
        sys.setswitchinterval(0.001)
        config = self._first_config()
        if config is None:
            return EXIT_CONFIG
        redactor.set_secrets(config.secrets())
        self._warn(config)
        self.log.info("config.loaded", path=str(self.config_path), servers=len(config.servers))
        try:
            lock = daemon_lock(config.daemon.state_path, shared=config.state is not None)
        except LockHeld as err:
            self.log.error("daemon.failed", error=str(err))
            return EXIT_FAILED
        try:
            try:
                store = open_store(config)
            except StateError as err:
                self.log.error("daemon.failed", error=str(err))
                return EXIT_FAILED
            try:
                return self._serve(config, store)
            finally:
                store.close()
                # A file written anew after the old one was deleted under us (check_store).
                current = self.scheduler.runner.store if self.scheduler else None
                if current is not None and current is not store:
                    current.close()
        finally:
            lock.release()

    def _first_config(self) -> Config | None:
        """The config to start on, or None once it is clear there is none (exit 78).

        With `wait_for_config` an invalid file is not the end: the daemon waits, doing
        nothing, for SIGHUP (the file was fixed: read it again) or SIGTERM/SIGINT (give up).
        Containers need this: Docker's restart policies cannot exempt exit 78, so a daemon
        that exited would be started again and again on a file no restart can fix."""
        while True:
            try:
                return self._load_config()
            except ConfigError as err:
                self.log.error(
                    "config.rejected",
                    path=str(self.config_path),
                    errors=err.errors,
                    **(
                        {"waiting": "for SIGHUP once the file is fixed"}
                        if self.wait_for_config
                        else {}
                    ),
                )
            if not self.wait_for_config:
                return None
            signum = self._next_signal()
            if signum != signal.SIGHUP:
                self.log.info(
                    "daemon.stopped", signal=signal.Signals(signum).name, config="invalid"
                )
                return None

    def _serve(self, config: Config, store: StateStore) -> int:
        try:
            runner = Runner(
                config, store=store, clock=self.clock, log=self.log, metrics=self.metrics
            )
        except StateError as err:
            self.log.error("daemon.failed", error=str(err))
            return EXIT_FAILED
        runner.events.notifications = Notifications(self.clock, self.log, self.metrics)
        runner.claims = claims_for(config, store, self.clock, runner.events, self._stop_heartbeat)
        scheduler = Scheduler(
            config, runner=runner, clock=self.clock, log=self.log, metrics=self.metrics
        )
        self.scheduler = scheduler
        # Verified refreshes: each `ok` of a server with a database, on a thread of its own.
        # And the entries that are one cluster, for the scheduler to group their calls.
        verification = Verification(self.clock, runner.verified, log=self.log, scheduler=scheduler)
        self.verification = verification
        verification.configure(config)
        runner.after_call = verification.after_call
        runner.claims.lost = verification.lost_call  # a lost call's run, settled from its DB
        if not self._start_metrics(config):
            return EXIT_FAILED
        try:
            scheduler.start()
        except StateError as err:
            self.log.error("daemon.failed", error=str(err))
            scheduler.stop(0)
            if self.metrics_server is not None:
                self.metrics_server.stop()
            return EXIT_FAILED
        # Everything built so far (modules, the config, the plan) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it. One
        # walked ~50,000 objects for ~20 ms, holding every call due meanwhile (the firing
        # lag's outliers, bench/accuracy.py); with 10,000 servers it takes far longer.
        gc.freeze()
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        self.notifier.ready(f"{len(config.servers)} servers scheduled")
        self.log.info(
            "daemon.started",
            version=__version__,
            pid=os.getpid(),
            servers=len(config.servers),
            state_path=str(config.daemon.state_path),
            proxy=config.client.proxy_shown,
            metrics=self.metrics_server.url if self.metrics_server else None,
        )
        while True:
            signum = self._next_signal()
            if signum == signal.SIGHUP:
                self._reload()
                continue
            break
        return self._stop(signum)

    def _start_metrics(self, config: Config) -> bool:
        """Serve /metrics, /healthz and / where configured; False (said) if the port is taken."""
        address = config.daemon.metrics_address
        if address is None:
            return True
        try:
            self.metrics_server = MetricsServer(
                *address, self.metrics.registry, self.healthy, clock=self.clock, page=self.page
            )
        except OSError as err:
            self.log.error("daemon.failed", error=listen_error(config.daemon.metrics_listen, err))
            return False
        self.metrics_server.start()
        return True

    def _stop(self, signum: int) -> int:
        assert self.scheduler is not None
        config = self.scheduler.config
        grace = config.daemon.shutdown_grace.total_seconds()
        # A second SIGTERM/SIGINT while we wait means "now"; installed before anything
        # else so that no second signal can fall into the queue nobody reads any more.
        signal.signal(signal.SIGTERM, self._exit_now)
        signal.signal(signal.SIGINT, self._exit_now)
        while not self._signals.empty():
            if self._signals.get_nowait() != signal.SIGHUP:
                self._forced_exit(signum)  # not in a handler: no lock can be held here
        self.notifier.stopping()
        self.log.info(
            "daemon.stopping",
            signal=signal.Signals(signum).name,
            in_flight=self.scheduler.dispatcher.in_flight,
            grace_s=grace,
        )
        finished = _interruptible(partial(self._shut_down, grace))
        # Every outcome was committed as it came; nothing is left to flush but the file.
        self.log.info("daemon.stopped", clean=finished)
        return EXIT_OK

    def _shut_down(self, grace: float) -> bool:
        """No new call, calls in flight given `grace` seconds; then the rest stops. True
        when every call finished."""
        assert self.scheduler is not None
        finished = self.scheduler.stop(grace)
        if self.verification is not None:
            self.verification.stop()  # waiting verifications end unsettled: nothing to keep
        self._stop_heartbeat.set()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        return finished

    def _exit_now(self, signum: int, frame: FrameType | None) -> None:
        """The second signal's handler. It runs on the main thread, which the signal may
        have interrupted inside a log call holding the log's lock: logging here would wait
        for that lock for ever (seen: a second SIGTERM sent as `daemon.stopping` was read
        hung the daemon). A thread of its own logs and exits; the handler returns at once,
        and the main thread releases the lock."""
        threading.Thread(target=self._forced_exit, args=(signum,), daemon=True).start()

    def _forced_exit(self, signum: int) -> None:
        self.log.warning("daemon.stopped", forced=True, signal=signal.Signals(signum).name)
        os._exit(EXIT_FAILED)

    # --- signals -----------------------------------------------------------------------

    def _next_signal(self) -> int:
        """Block until a signal was queued. Never in one long wait: the kernel may deliver
        the signal to another thread, and then nothing interrupts the main thread's wait,
        so Python's handler (which runs only on the main thread) would never run and the
        daemon would ignore SIGTERM (seen: 1 stop in ~30). A short wait returns to the
        interpreter, which runs the pending handler."""
        while True:
            with contextlib.suppress(queue.Empty):
                return self._signals.get(timeout=SIGNAL_POLL)

    def _install_signals(self) -> None:
        def enqueue(signum: int, frame: FrameType | None) -> None:
            self._signals.put(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, enqueue)

    # --- heartbeat ---------------------------------------------------------------------

    def healthy(self) -> bool:
        """/healthz: the scheduling loop ran a job recently, and no call has outlived its
        deadline by more than STUCK_MARGIN (one that did holds its login, and with an
        unproven login every server sharing it)."""
        scheduler = self.scheduler
        if scheduler is None or not scheduler.loop_alive(3 * self.heartbeat):
            return False
        limit = scheduler.config.client.timeout.total_seconds() + STUCK_MARGIN
        claims = scheduler.runner.claims  # not renewed for longer than a lease: 503
        healthy = scheduler.dispatcher.longest_in_flight() <= limit
        return healthy and (claims is None or claims.healthy())

    def _heartbeat(self) -> None:
        """Every `heartbeat` seconds (monotonic, so immune to clock steps): ask the
        scheduling loop for a sign of life, feed the watchdog only if it gave one,
        re-plan when the wall clock jumped, and take in what another process changed in
        the state file."""
        assert self.scheduler is not None
        scheduler = self.scheduler
        clock = self.clock
        steps = StepWatch(clock, CLOCK_JUMP)
        last_prune = 0.0
        scheduler.loop_beat()
        with contextlib.suppress(StateError):  # said by the first beat in the loop
            scheduler.runner.store_beat()
        while not clock.wait(self._stop_heartbeat, self.heartbeat):
            if scheduler.loop_alive(2 * self.heartbeat):
                self.notifier.watchdog()
            scheduler.loop_beat()
            step = steps.look()
            if step is not None:
                self.log.warning("clock.jumped", seconds=round(step, 3))
                scheduler.replan_all()
            try:
                scheduler.runner.check_store()  # deleted or replaced under us?
                scheduler.sync_from_store()  # what a manual `refreshd refresh` changed
                scheduler.runner.store_beat()
            except StateError as err:
                scheduler.runner.events.store_failed(str(err))  # once per outage
            else:
                scheduler.runner.events.store_answered()
            if (beat := clock.monotonic()) - last_prune > 3600:
                last_prune = beat
                self._prune(scheduler)

    def _prune(self, scheduler: Scheduler) -> None:
        store, retention = scheduler.runner.store, scheduler.config.daemon.history_retention
        if store is None:
            return
        try:
            removed = store.prune(self.clock.now() - retention)
        except StateError as err:
            scheduler.runner.events.store_failed(str(err))
            return
        if removed:
            self.log.info("state.pruned", calls_removed=removed)


def _interruptible(work: Callable[[], bool]) -> bool:
    """`work()` on a thread of its own, the main thread waiting for it in short slices. A
    second SIGTERM during the graceful stop must exit at once, but Python runs a signal's
    handler only on the main thread and between bytecodes: when the kernel delivers the
    signal to another thread, a main thread blocked in one long join (the grace) would not
    run it until the join ends (the hole `_next_signal` names for the daemon's long wait)."""
    outcome: list[bool | BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # raised again on the main thread, as before
            outcome.append(error)

    worker = threading.Thread(target=run, name="refreshd-stop")
    worker.start()
    while worker.is_alive():
        worker.join(SIGNAL_POLL)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def run(
    config_path: Path, environ: Mapping[str, str] | None = None, *, wait_for_config: bool = False
) -> int:
    return Daemon(config_path, environ, wait_for_config=wait_for_config).run()
