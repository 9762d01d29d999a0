"""`make run`: the simulator and the daemon on config/demo.toml, stopped together by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

DEMO_LISTEN = "127.0.0.1:18080"
# The simulator's demo user (config/simulator.toml); a demo value, not a secret.
DEMO_PASSWORD = "demo-pass-123"  # noqa: S105


def main() -> int:
    # The demo's files live in the repository beside the package (an editable install);
    # the state file goes to .demo/ under the current directory.
    root = Path(__file__).resolve().parent.parent
    config = root / "config" / "demo.toml"
    users = root / "config" / "simulator.toml"
    if not config.exists():
        print(f"refreshd demo: {config} not found; run `make run` in a checkout", file=sys.stderr)
        return 2
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refreshd",
            "simulator",
            "--listen",
            DEMO_LISTEN,
            "--config",
            str(users),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert simulator.stdout is not None
        started = simulator.stdout.readline()
        if not started:
            print(
                f"refreshd demo: the simulator did not start; is {DEMO_LISTEN} in use?",
                file=sys.stderr,
            )
            return 1
        url = json.loads(started).get("url")
        print(f"refreshd demo: VICIdial simulator at {url}; Ctrl-C stops both", file=sys.stderr)
        env = {**os.environ, "REFRESHD_DEMO_PASSWORD": DEMO_PASSWORD}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "refreshd", "run", "-c", str(config)], env=env
        )
        try:
            return daemon.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the whole group; let the daemon finish cleanly.
            return daemon.wait()
    finally:
        if simulator.poll() is None:
            simulator.send_signal(signal.SIGTERM)
            simulator.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
