"""The rules docs/ARCHITECTURE.md states, checked on the source: where time is read, what the
core may import, how large a module or a function may grow."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "refreshd"
MODULES = sorted(PACKAGE.rglob("*.py"))
CORE = sorted((PACKAGE / "core").glob("*.py"))

# Calls that read a clock. clock.py is the one place allowed to make them.
TIME_READS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("time", "perf_counter"),
    ("time", "clock_gettime"),
    ("time", "clock_gettime_ns"),
    ("time", "sleep"),
    ("time", "localtime"),
}
MODULE_LINES = 420  # "about 400"
FUNCTION_LINES = 62  # "about 60"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_the_rules_see_the_whole_package() -> None:
    assert len(MODULES) > 40
    assert PACKAGE / "clock.py" in MODULES
    assert len(CORE) > 8


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_nothing_but_clock_py_reads_the_time(path: Path) -> None:
    if path.name == "clock.py" and path.parent == PACKAGE:
        return
    reads = [
        f"{_name(path)}:{node.lineno} {node.func.value.id}.{node.func.attr}()"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and (node.func.value.id, node.func.attr) in TIME_READS
    ]
    assert reads == [], "read the time through refreshd.clock"


@pytest.mark.parametrize("path", CORE, ids=_name)
def test_the_core_imports_only_the_standard_library_and_the_core(path: Path) -> None:
    imported: list[str] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    shell = [
        name
        for name in imported
        if not name.startswith("refreshd.core")
        and name.split(".")[0] not in sys.stdlib_module_names
        and name != "__future__"
    ]
    io = {"sqlite3", "socket", "threading", "subprocess", "os", "time", "logging", "http"}
    io_used = [name for name in imported if name.split(".")[0] in io]
    assert shell == [], "the core imports no shell module or library"
    assert io_used == [], "the core does no I/O and keeps no threads"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_grows_past_about_four_hundred_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MODULE_LINES, f"{_name(path)}: {lines} lines: split it by job"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_function_grows_past_about_sixty_lines(path: Path) -> None:
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES
    ]
    assert long == []
