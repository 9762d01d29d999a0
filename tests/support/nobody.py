"""refreshd run as another user (`nobody`, or the image's uid): the tests run as root, and
root reads and writes any file, so refusals of unreadable or read-only files, and what a
container's user may read, need another user."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.daemon import DaemonProcess

NOBODY = 65534

# The interpreter lives under /root (0700), so it cannot be started as another user: it
# starts as root, imports refreshd, then switches to the uid and gid given as its first two
# arguments before reading the config or the state; the rest are refreshd's arguments.
_AS_USER = """
import os, sys
import refreshd.cli
# Imported lazily (the cli imports each command's module when it runs, the logs structlog
# when they are set up, the daemon the rest): a checkout the user cannot read (a clone in
# a 0700 directory, as mktemp makes it) and the standard library become unreadable after
# the switch.
import refreshd.cli.calls, refreshd.cli.reading, refreshd.daemon, refreshd.manual
import apscheduler.triggers.date, concurrent.futures.thread, encodings.idna, structlog
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
sys.exit(refreshd.cli.main(sys.argv[3:]))
"""


def as_user(uid: int, gid: int) -> list[str]:
    """The argv prefix that runs `refreshd ARGS...` as `uid`:`gid` (append ARGS)."""
    return [sys.executable, "-c", _AS_USER, str(uid), str(gid)]


class NobodyDaemon(DaemonProcess):
    """The real daemon run as user `nobody`."""

    def command(self) -> list[str]:
        return [*as_user(NOBODY, NOBODY), "run", "-c", str(self.config)]


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
