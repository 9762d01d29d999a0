"""One daemon per state file: an OS lock beside it, held for the process's life.

Two daemons on one state file both refreshed every run (and doubled failed logins). The
lock is `flock` on `<state file>.lock`: the kernel drops it when the process dies however
it dies, so it is never stale after a crash, and a second `refreshd run` is refused at
start with the holder's pid. One-shot commands (`refresh`, `check`, `status`) never take
it: they run beside the daemon by design.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["InstanceLock", "LockHeld", "lock_path"]


class LockHeld(Exception):
    """Another process holds the lock; str() names it and says what to do."""


def lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


class InstanceLock:
    """The held lock; `release()` (or the process's end) lets it go."""

    def __init__(self, state_path: Path, *, pid: int | None = None) -> None:
        """Take the lock for `state_path`, or raise LockHeld (another daemon has it) or
        OSError (the directory cannot be created or written)."""
        path = lock_path(state_path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockHeld(
                f"state file {state_path} is in use by another refreshd ({holder}): two "
                "daemons on one state file would each refresh every run. Stop the other "
                "one, or give this one its own daemon.state_path."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {pid if pid is not None else os.getpid()}\n".encode())
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 100, 0).decode(errors="replace").strip()
        if text:
            return text
    return "pid unknown"
