"""The state store: the journal of the ledger, what must survive a restart: one SQLite file,
or a PostgreSQL or MariaDB/MySQL database several instances share (`[state]`).

It holds the runs that succeeded (the no-double-refresh guarantee: a slot recorded
here is never refreshed again, even after kill -9 or a power cut), each server's
last outcome and suspension, each credentials' wait, and the call history behind
`refreshd status` and `refreshd history`. It decides nothing: the policy and the
scheduler do, and tell it what to write.

Reading order, for whoever opens the file with `sqlite3` at night:
  journal.py  `StateStore`: open, `load` and `journal` the ledger, history, prune, changes
  setup.py    migrating (or checking, read-only) the schema; a SQLite file's integrity
  schema.py   the tables, their migrations and every SQL statement (portable, `%s`)
  rows.py     the values read and written, and times as fixed-width UTC text
  verifications.py  the verdicts of verified refreshes, kept with the calls
  errors.py   `StateError`, and each SQLite or database server failure as what to do
  opening.py  the store a config names: `[state]` url, else daemon.state_path
The engines (SQLite, psycopg 3, PyMySQL) and their dialects: refreshd/shared/engines.py.
"""

from __future__ import annotations

from refreshd.store.errors import BUSY_TIMEOUT, StateError
from refreshd.store.journal import RUNS_DONE_EXTRA_KEEP, StateStore
from refreshd.store.rows import (
    DETAIL_MAX,
    CallRecord,
    CredentialsWait,
    NewCall,
    ServerState,
    Verification,
)
from refreshd.store.schema import SCHEMA_VERSION

__all__ = [
    "BUSY_TIMEOUT",
    "DETAIL_MAX",
    "RUNS_DONE_EXTRA_KEEP",
    "SCHEMA_VERSION",
    "CallRecord",
    "CredentialsWait",
    "NewCall",
    "ServerState",
    "StateError",
    "StateStore",
    "Verification",
]
