"""The test suite's wall time, like for like: the first release's tests as they are today.

Issue 10 asked for half the first release's `make test` wall time. The suite has since
grown by the tests of later capabilities (several instances on PostgreSQL and MariaDB,
verified refreshes, notifications, the status page, packaging), so the whole suite's time
no longer compares like with like. This runs `make pytest` twice in one go, on the same
machine: once restricted to the tests whose names the first release had (read from git,
without importing the old code; a test keeps its name when it moves, say from a
real-process test to a component one), then the whole suite.

    .venv/bin/python bench/first_release.py

Used by pytest as a plugin too (`-p first_release`, bench/ on PYTHONPATH): with
REFRESHD_FIRST_RELEASE_ONLY=1 it deselects every test the first release did not name.
Figures go to docs/PERFORMANCE.md, section F, by hand.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIRST_RELEASE = "435c5d6"  # the commit docs/PERFORMANCE.md measures the first release at
ONLY = "REFRESHD_FIRST_RELEASE_ONLY"


def first_release_test_names(commit: str = FIRST_RELEASE) -> set[str]:
    """The names of the test functions in `commit`'s tests/ (parameters left off)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return done.stdout

    names: set[str] = set()
    for path in git("ls-tree", "-r", "--name-only", commit, "tests").split():
        if path.endswith(".py"):
            tree = ast.parse(git("show", f"{commit}:{path}"))
            names.update(
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name.startswith("test_")
            )
    return names


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if os.environ.get(ONLY) != "1":
        return
    names = first_release_test_names()
    keep = [item for item in items if item.name.split("[", 1)[0] in names]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def _make_pytest(first_release_only: bool) -> dict[str, Any]:
    only = "1" if first_release_only else "0"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), ONLY: only}
    started = time.monotonic()
    done = subprocess.run(
        ["make", "--no-print-directory", "pytest", "PYTEST_ARGS=-p first_release"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    passed = re.search(r"(\d+) passed", summary)
    return {
        "wall_s": round(wall, 1),
        "passed": int(passed.group(1)) if passed else None,
        "summary": summary,
        "exit": done.returncode,
    }


def main() -> int:
    names = first_release_test_names()
    results = {
        "first_release_commit": FIRST_RELEASE,
        "first_release_test_names": len(names),
        "first_release_tests_today": _make_pytest(first_release_only=True),
        "whole_suite": _make_pytest(first_release_only=False),
    }
    print(json.dumps(results, indent=2))
    runs = (results["first_release_tests_today"], results["whole_suite"])
    return 0 if all(run["exit"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
