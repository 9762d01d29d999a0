"""One daemon per state file: an OS lock beside it, held for the process's life.

Two daemons on one state file both refreshed every run (and doubled failed logins). The
lock is `flock` on `<state file>.lock`: the kernel drops it when the process dies however
it dies, so it is never stale after a crash, and a second `refreshd run` is refused at
start with the holder's pid. One-shot commands (`refresh`, `check`, `status`) never take
it: they run beside the daemon by design. `status` asks `lock_holder` whether a daemon
holds it, which looks at the kernel's list of locks rather than trying to take it (a probe
that took the lock for a moment could make a daemon starting at that moment refuse).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["Holder", "InstanceLock", "LockHeld", "lock_error", "lock_holder", "lock_path"]

_PROC_LOCKS = Path("/proc/locks")


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


class Holder(NamedTuple):
    """Whether a daemon holds the lock, and its pid when known."""

    running: bool
    pid: int | None


def lock_holder(state_path: Path, proc_locks: Path = _PROC_LOCKS) -> Holder:
    """Whether a daemon holds `state_path`'s lock now, and its pid, without taking it.
    Raises OSError only where the kernel's list is missing and the lock file unreadable."""
    path = lock_path(state_path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return Holder(False, None)  # no daemon ever ran on this state file
    listed = _listed_holders(status, proc_locks)
    # Without /proc/locks (not Linux): a probe, with the race the docstring above tells.
    running = _probe(path) if listed is None else bool(listed)
    if not running:
        return Holder(False, None)
    # The kernel's pid is this namespace's view of the holder (0 when it cannot see it);
    # else the pid the daemon wrote into the file.
    return Holder(True, next((p for p in listed or [] if p > 0), None) or _written_pid(path))


def _written_pid(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        written = _read(fd).removeprefix("pid ")
    finally:
        os.close(fd)
    return int(written) if written.isdigit() else None


def _listed_holders(status: os.stat_result, proc_locks: Path) -> list[int] | None:
    """The pids holding an flock on the file `status` describes, from /proc/locks
    ('1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF'); None if it cannot be read."""
    try:
        lines = proc_locks.read_text(errors="replace").splitlines()
    except OSError:
        return None
    wanted = (os.major(status.st_dev), os.minor(status.st_dev), status.st_ino)
    pids = []
    for line in lines:
        parts = line.split()
        # "->" marks a process waiting for the lock, not holding it.
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        with contextlib.suppress(ValueError):
            major, minor, inode = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                pids.append(int(parts[4]))
    return pids


def _probe(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also lets go of the shared lock if it was taken
    return False


def lock_error(state_path: Path, err: OSError) -> str:
    where = f"cannot create the lock file {lock_path(state_path)}: {err.strerror or err}"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"{where}. The state directory is read-only for this user: give the daemon's "
            "user write access to it and to the state file, or set daemon.state_path."
        )
    return f"{where}. Check that daemon.state_path's directory exists and is writable."


class _Shared:
    """No lock: on a shared store several instances run (claims keep them apart)."""

    def release(self) -> None:
        return


def daemon_lock(state_path: Path, *, shared: bool) -> InstanceLock | _Shared:
    """The daemon's lock on its SQLite file (one daemon per file; none on a shared store);
    LockHeld saying who holds it, or why the lock file cannot be made."""
    if shared:
        return _Shared()
    try:
        return InstanceLock(state_path)
    except LockHeld:
        raise
    except OSError as err:
        raise LockHeld(lock_error(state_path, err)) from None
