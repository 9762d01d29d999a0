"""refreshd as PID 1 of a PID namespace of its own, as `docker run` starts an image's
ENTRYPOINT: the kernel gives such a PID 1 no default signal actions, so a signal it has no
handler for (SIGTERM, SIGHUP) is dropped, whoever sends it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess
from tests.support.waiting import eventually

UNSHARE = shutil.which("unshare")


def pid_namespace_problem() -> str | None:
    """Why refreshd cannot be run as PID 1 of a new PID namespace here, or None."""
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(
        [UNSHARE, "--pid", "--fork", "--kill-child", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return f"unshare --pid --fork fails here (needs root or user namespaces): {done.stderr}"
    return None


class Pid1Daemon(DaemonProcess):
    """`unshare --pid --fork --kill-child ARGV...`: ARGV runs as PID 1 of a new PID namespace.

    unshare itself stays outside, waits, and exits with ARGV's status; it ignores SIGTERM,
    so signals go to the inner process, by its pid as this (ancestor) namespace sees it:
    the path `docker kill` takes. If unshare is killed, --kill-child kills the inner one."""

    def __init__(self, config: Path, argv: Sequence[str], **options: Any) -> None:
        super().__init__(config, **options)
        self.argv = list(argv)

    def command(self) -> list[str]:
        assert UNSHARE is not None
        return [UNSHARE, "--pid", "--fork", "--kill-child", *self.argv]

    def inner_pid(self) -> int:
        """The pid of PID 1, as seen from here: unshare's only child."""
        children: list[str] = []

        def forked() -> bool:
            children[:] = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            return bool(children)

        eventually(forked, timeout=10, what="unshare's child")
        (child,) = children
        return int(child)

    def signal(self, signum: int) -> None:
        os.kill(self.inner_pid(), signum)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # and --kill-child takes PID 1 with it
            self.wait(5)
            raise
