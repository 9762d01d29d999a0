"""The `refreshd` command: parse arguments, run one command, map its result to an exit code.

Reading order:
  main.py       `main` and the parser: every command and option
  arguments.py  option values checked as they are parsed (a usage error, never a traceback)
  loading.py    exit codes, and the config as each command needs it (passwords or not)
  calls.py      the commands that call VICIdial: run, check, refresh (passwords read)
  reading.py    the commands that only read: plan, status, history (no password needed)
  text.py       what reaches a terminal: times for people, control characters escaped, tables
"""

from __future__ import annotations

from refreshd.cli.loading import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from refreshd.cli.main import main

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]
