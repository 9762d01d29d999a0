"""Where a refreshd process spends its time: py-spy samples it (all threads, native
speed, no change to the code) and this folds the samples into a flat profile: each
function's inclusive share of the samples, plus the phases named by the caller.

    python bench/profiling.py -- refreshd check -c CONFIG     # any refreshd command
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from common import PYTHON, child_env

__all__ = ["Profile", "profile"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
RATE = 250  # samples per second


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: make bench installs it (pip install py-spy)")
    return found


class Profile:
    """Collapsed stacks ("frame;frame;... count"), folded by function (file:line dropped)."""

    def __init__(self, raw: str) -> None:
        self.stacks: Counter[tuple[str, ...]] = Counter()
        for line in raw.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = tuple(_name(frame) for frame in stack.split(";"))
            self.stacks[frames] += int(count)
        # Shares are of the main thread's samples: it does the start-up and the commands'
        # work, while idle pool threads would otherwise fill the profile with waits.
        self.total = sum(n for stack, n in self.stacks.items() if _main_thread(stack))

    def seconds(self, samples: int) -> float:
        return samples / RATE

    def share(self, predicate: Callable[[tuple[str, ...]], bool]) -> int:
        return sum(n for stack, n in self.stacks.items() if predicate(stack))

    def inclusive(self, main_only: bool = True) -> Counter[str]:
        found: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            if main_only and not _main_thread(stack):
                continue
            for name in set(stack):
                found[name] += n
        return found

    def self_time(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            found[stack[-1]] += n
        return found

    def phases(self, marks: Mapping[str, str]) -> list[tuple[str, float]]:
        """Seconds of samples per phase: the first mark (a function-name fragment) found
        in a stack, looking from the innermost frame out, names its phase."""
        totals: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            phase = "other"
            for frame in reversed(stack):
                hit = next((label for mark, label in marks.items() if mark in frame), None)
                if hit is not None:
                    phase = hit
                    break
            totals[phase] += n
        return [(label, self.seconds(n)) for label, n in totals.most_common()]

    def table(self, top: int = 18, only: str = "refreshd/") -> list[tuple[str, float, float]]:
        """(function, inclusive s, share of all samples) for the heaviest functions whose
        file contains `only` (or any frame, with only="")."""
        rows = []
        for name, n in self.inclusive().most_common():
            if only and only not in name:
                continue
            rows.append((name, self.seconds(n), n / self.total if self.total else 0.0))
            if len(rows) == top:
                break
        return rows


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"]
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    return f"{match['func']} ({file})"


def _main_thread(stack: tuple[str, ...]) -> bool:
    return bool(stack) and ("_run_module_as_main" in stack[0] or "<module>" in stack[0])


def profile(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    until: Callable[[subprocess.Popen[bytes]], bool] | None = None,
    timeout: float = 120.0,
) -> Profile:
    """Run `python -m refreshd ARGV...` under py-spy; with `until`, poll it every 50 ms
    and SIGTERM the program (not py-spy) once it says so."""
    with tempfile.TemporaryDirectory(prefix="refreshd-profile-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        spy = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--rate",
                str(RATE),
                "--nonblocking",  # never pause the program: its timing stays its own
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
                PYTHON,
                "-m",
                "refreshd",
                *argv,
            ],
            cwd=cwd or tmp,  # not the repository: `python -m` would import from there first
            env=child_env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        if until is not None:
            while spy.poll() is None and time.monotonic() < deadline:
                if until(spy):
                    for child in _children(spy.pid):
                        os.kill(child, 15)
                    break
                time.sleep(0.05)
        try:
            spy.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)
        return Profile(raw.read_text() if raw.exists() else "")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def print_table(title: str, prof: Profile, top: int = 18) -> None:
    print(f"  {title}: {prof.seconds(prof.total):.2f} s sampled")
    for name, seconds, share in prof.table(top):
        print(f"    {seconds:7.2f} s {share:6.1%}  {name}")


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if argv[:1] == ["refreshd"]:
        argv = argv[1:]
    prof = profile(argv)
    print_table("refreshd " + " ".join(argv), prof, top=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
