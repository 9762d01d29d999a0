"""The state store: the journal of the ledger, what must survive a restart, in one SQLite file.

It holds the runs that succeeded (the no-double-refresh guarantee: a slot recorded
here is never refreshed again, even after kill -9 or a power cut), each server's
last outcome and suspension, each credentials' wait, and the call history behind
`refreshd status` and `refreshd history`. It decides nothing: the policy and the
scheduler do, and tell it what to write.

Reading order, for whoever opens the file with `sqlite3` at night:
  journal.py  `StateStore`: open, migrate, `load` and `journal` the ledger, history, prune
  schema.py   the tables, their migrations (`PRAGMA user_version`) and every SQL statement
  rows.py     the values read and written, and times as fixed-width UTC text
  verifications.py  the verdicts of verified refreshes, kept with the calls
  errors.py   `StateError`, and each SQLite failure as what to do
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
