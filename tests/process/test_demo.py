"""`make run`: the demo shows real refreshes within ten seconds and stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_the_demo_shows_refreshes_within_ten_seconds_and_stops_cleanly(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "refreshd.demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # like a terminal: Ctrl-C reaches the whole group
    )
    events: list[dict[str, object]] = []
    try:
        assert demo.stdout is not None
        # The demo starts the simulator and the daemon (seconds on a loaded machine); the
        # first refresh comes at once after the daemon's start, not at the next `every`.
        started = time.monotonic()
        deadline = started + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            events.append(json.loads(line))
            if events[-1]["event"] == "daemon.started":
                started = time.monotonic()
            if events[-1]["event"] == "refresh.succeeded":
                break
        assert any(e["event"] == "refresh.succeeded" for e in events), events
        assert any(e["event"] == "daemon.started" for e in events), events
        assert time.monotonic() - started < 10
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    rest = [json.loads(line) for line in out.splitlines()]
    assert rest[-1]["event"] == "daemon.stopped"
    assert demo.returncode == 0, err
    assert "Traceback" not in err
    assert (tmp_path / ".demo" / "state.db").exists()
