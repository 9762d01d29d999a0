"""`make bench` is not part of `make test`, so nothing else would notice a benchmark that no
longer imports (it once imported a test helper that had moved, and every later `make bench`
stopped at its first script). Each script is imported as `make bench` runs it: from bench/,
in a process of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.repo import REPO

BENCH = REPO / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py"))


def test_the_bench_scripts_are_the_ones_make_bench_runs() -> None:
    makefile = (REPO / "Makefile").read_text()
    (line,) = [x for x in makefile.splitlines() if x.strip().startswith("for b in ")]
    run = line.split(" in ", 1)[1].split(";")[0].split()
    assert set(run) <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_script_imports(script: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {script}"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
