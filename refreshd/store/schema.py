"""The state file's schema: migrations, SCHEMA_VERSION, and the SQL that reads and writes it.

The schema version is `PRAGMA user_version`; `MIGRATIONS[n]` takes a file from version n
to n+1 in one transaction. Never edit a shipped migration: append one. Every statement
naming a column is here, next to the tables, so a new column is one file's change (and
rows.py's, which reads and writes the columns in the order the statements list them).
"""

from __future__ import annotations

__all__ = [
    "CALLS_PRUNE",
    "CALL_INSERT",
    "CALL_SELECT",
    "FAILED_DELETE",
    "FAILED_INSERT",
    "FAILED_SELECT",
    "HEARTBEAT_SELECT",
    "HEARTBEAT_UPSERT",
    "LAST_RUNS_DONE",
    "LAST_VERIFIED",
    "MIGRATIONS",
    "RUNS_DONE_PRUNE",
    "RUN_DONE_INSERT",
    "SCHEMA_VERSION",
    "SERVER_SELECT",
    "SERVER_UPSERT",
    "VERIFIED_UPDATE",
    "WAIT_DELETE",
    "WAIT_SELECT",
    "WAIT_UPSERT",
]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        """CREATE TABLE servers (
            name TEXT PRIMARY KEY NOT NULL,
            last_outcome TEXT,
            last_attempt_at TEXT,
            last_success_at TEXT,
            suspended_until TEXT,
            suspensions INTEGER NOT NULL DEFAULT 0 CHECK (suspensions >= 0),
            suspension_reason TEXT,
            config_fingerprint TEXT
        )""",
        """CREATE TABLE credentials_waits (
            name TEXT PRIMARY KEY NOT NULL,
            waiting_until TEXT NOT NULL,
            reason TEXT NOT NULL,
            fingerprint TEXT
        )""",
        # One row per (server, due) that succeeded: the scheduler asks this table
        # before every run, so a restart never refreshes the same slot twice.
        """CREATE TABLE runs_done (
            server TEXT NOT NULL REFERENCES servers (name) ON DELETE CASCADE,
            due TEXT NOT NULL,
            done_at TEXT NOT NULL,
            PRIMARY KEY (server, due)
        ) WITHOUT ROWID""",
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            server TEXT NOT NULL REFERENCES servers (name) ON DELETE CASCADE,
            slot_start TEXT,
            due TEXT,
            attempt INTEGER NOT NULL CHECK (attempt >= 1),
            outcome TEXT NOT NULL,
            at TEXT NOT NULL,
            duration_ms INTEGER NOT NULL CHECK (duration_ms >= 0),
            http_status INTEGER,
            servers_flagged INTEGER,
            detail TEXT
        )""",
        "CREATE INDEX calls_by_time ON calls (at)",
        "CREATE INDEX calls_by_server_time ON calls (server, at)",
        "CREATE INDEX runs_done_by_due ON runs_done (due)",
    ),
    # 1 -> 2: calls that were, or may have been, failed logins, per login (the VICIdial
    # user), so that every process spends one budget of them.
    (
        """CREATE TABLE failed_logins (
            login TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (login, at)
        ) WITHOUT ROWID""",
    ),
    # 2 -> 3: when the daemon first had each server in its config, so that alerts see a
    # server that has never succeeded since (a restart must not reset it).
    ("ALTER TABLE servers ADD COLUMN first_seen TEXT",),
    # 3 -> 4: the daemon's last heartbeat (one row), so that `status` can tell how long
    # ago a daemon last showed a sign of life.
    (
        """CREATE TABLE daemon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            heartbeat_at TEXT NOT NULL
        )""",
    ),
    # 4 -> 5: whether each `ok` call's refresh was applied by every telephony server, as
    # the cluster's database showed (NULL: not verified), for `status` and `history`.
    (
        "ALTER TABLE calls ADD COLUMN applied INTEGER CHECK (applied IN (0, 1))",
        "ALTER TABLE calls ADD COLUMN apply_seconds REAL",
        "ALTER TABLE calls ADD COLUMN apply_detail TEXT",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and understands."""

# -- servers ---------------------------------------------------------------------------

SERVER_SELECT = (
    "SELECT name, last_outcome, last_attempt_at, last_success_at, suspended_until, "
    "suspensions, suspension_reason, config_fingerprint, first_seen FROM servers"
)
# first_seen: the earliest written stays (a one-shot command's entry may lack it).
SERVER_UPSERT = (
    "INSERT INTO servers (name, last_outcome, last_attempt_at, last_success_at, "
    "suspended_until, suspensions, suspension_reason, config_fingerprint, first_seen) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "last_outcome = excluded.last_outcome, last_attempt_at = excluded.last_attempt_at, "
    "last_success_at = excluded.last_success_at, suspended_until = excluded.suspended_until, "
    "suspensions = excluded.suspensions, suspension_reason = excluded.suspension_reason, "
    "config_fingerprint = excluded.config_fingerprint, "
    "first_seen = COALESCE(servers.first_seen, excluded.first_seen)"
)

# -- credentials waits -----------------------------------------------------------------

WAIT_SELECT = "SELECT name, waiting_until, reason, fingerprint FROM credentials_waits"
WAIT_UPSERT = (
    "INSERT INTO credentials_waits (name, waiting_until, reason, fingerprint) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "waiting_until = excluded.waiting_until, reason = excluded.reason, "
    "fingerprint = excluded.fingerprint"
)
WAIT_DELETE = "DELETE FROM credentials_waits WHERE name = ?"

# -- failed logins ---------------------------------------------------------------------

FAILED_SELECT = "SELECT login, at FROM failed_logins ORDER BY login, at"
FAILED_DELETE = "DELETE FROM failed_logins WHERE login = ?"
FAILED_INSERT = "INSERT OR IGNORE INTO failed_logins (login, at) VALUES (?, ?)"

# -- runs done -------------------------------------------------------------------------

# OR IGNORE: a second success for the same run (a retry whose first answer was lost)
# keeps the first time.
RUN_DONE_INSERT = "INSERT OR IGNORE INTO runs_done (server, due, done_at) VALUES (?, ?, ?)"
LAST_RUNS_DONE = "SELECT server, MAX(due) FROM runs_done GROUP BY server"
RUNS_DONE_PRUNE = "DELETE FROM runs_done WHERE due < ?"

# -- the daemon ------------------------------------------------------------------------

HEARTBEAT_UPSERT = (
    "INSERT INTO daemon (id, heartbeat_at) VALUES (1, ?) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
)
HEARTBEAT_SELECT = "SELECT heartbeat_at FROM daemon WHERE id = 1"

# -- calls -----------------------------------------------------------------------------

CALL_INSERT = (
    "INSERT INTO calls (server, slot_start, due, attempt, outcome, at, "
    "duration_ms, http_status, servers_flagged, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
CALL_SELECT = (
    "SELECT id, server, slot_start, due, attempt, outcome, at, duration_ms, "
    "http_status, servers_flagged, detail, applied, apply_seconds, apply_detail FROM calls "
    "WHERE (:server IS NULL OR server = :server) AND (:since IS NULL OR at >= :since) "
    "ORDER BY at DESC, id DESC LIMIT :limit"
)
CALLS_PRUNE = "DELETE FROM calls WHERE at < ?"
# The verdict on the `ok` call of a server sent at a time (the verifier knows no call id).
VERIFIED_UPDATE = (
    "UPDATE calls SET applied = ?, apply_seconds = ?, apply_detail = ? "
    "WHERE server = ? AND at = ? AND outcome = 'ok'"
)
# Each server's latest verdict.
LAST_VERIFIED = (
    "SELECT server, at, applied, apply_seconds, apply_detail FROM calls AS c "
    "WHERE applied IS NOT NULL AND at = (SELECT MAX(at) FROM calls "
    "WHERE server = c.server AND applied IS NOT NULL)"
)
