"""refreshd run as user `nobody`: the tests run as root, and root reads and writes any
file, so refusals of unreadable or read-only files need another user."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.daemon import DaemonProcess

# The interpreter lives under /root (0700), so it cannot be started as `nobody`: it starts as
# root, imports refreshd, then drops to nobody before reading the config or the state.
_AS_NOBODY = """
import os, sys
import refreshd.cli
# Imported lazily (by the cli, and by the daemon); the standard library becomes unreadable
# after the switch.
import refreshd.daemon, refreshd.manual
import apscheduler.triggers.date, concurrent.futures.thread, encodings.idna
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(refreshd.cli.main(sys.argv[1:]))
"""


class NobodyDaemon(DaemonProcess):
    """The real daemon run as user `nobody`."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _AS_NOBODY, "run", "-c", str(self.config)]


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory `nobody` can enter (pytest's tmp_path parents are 0700); removed on
    leaving, whatever modes the test left in it."""
    made = Path(tempfile.mkdtemp(prefix="refreshd-test-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        made.chmod(0o700)
        shutil.rmtree(made)
