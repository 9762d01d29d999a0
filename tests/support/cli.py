"""The `refreshd` command run in-process: `refreshd.cli.main(argv)` with the environment,
working directory, stdout and stderr a child process would have, and its exit code.

Starting `python -m refreshd` costs ~0.3 s of CPU (the interpreter and refreshd's imports)
before the command does anything. A test of what a command prints or which code it exits
with, where nothing belongs to the process itself, runs here instead. What only a process
shows stays in tests/process/ with the real entry point (tests.support.daemon): signals,
sd_notify, crashes, locks between processes, a closed or non-UTF-8 stdout, the interpreter's
own exit.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import structlog

from refreshd.cli import main
from refreshd.logs import redactor
from tests.support.daemon import RunResult, clean_env

__all__ = ["run_cli"]


def run_cli(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: Path,
) -> RunResult:
    """(exit code, stdout, stderr) of `refreshd ARGS...` run by `main` in this process, in
    a clean environment plus `env` (as tests.support.daemon.clean_env gives a child) with
    `cwd` as the working directory. An exit argparse raises (usage, --help, --version) is
    returned like a returned one."""
    out, err = _stream("strict"), _stream("backslashreplace")
    with _as_a_child(clean_env(env), cwd, out, err):
        try:
            code = main([os.fspath(arg) for arg in args])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return code, _text(out), _text(err)


def _stream(errors: str) -> io.TextIOWrapper:
    # A TextIOWrapper like a child's (UTF-8 under LANG=C.UTF-8), so that what `main` does
    # to sys.stdout (reconfigure its errors) acts on this one and on nothing of pytest's.
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors, write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    raw = stream.buffer
    assert isinstance(raw, io.BytesIO)
    return raw.getvalue().decode("utf-8")


@contextlib.contextmanager
def _as_a_child(
    env: Mapping[str, str], cwd: Path, out: io.TextIOWrapper, err: io.TextIOWrapper
) -> Iterator[None]:
    """This process's environment, time zone, working directory, standard streams and
    the process-wide state `main` sets (log set-up, known secrets) as a child's would
    be, each put back afterwards whatever happens."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdout, sys.stderr
    saved_logs = structlog.get_config()
    saved_secrets = redactor.secrets
    os.environ.clear()
    os.environ.update(env)
    time.tzset()  # a TZ in `env` (or none) as the child would read it
    os.chdir(cwd)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        time.tzset()
        structlog.configure(**saved_logs)
        redactor.set_secrets(saved_secrets)
