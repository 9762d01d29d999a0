"""The store's schema: migrations, SCHEMA_VERSION, and the SQL that reads and writes it.

One schema for the three engines. `migrations(engine)` takes a database from version n to n+1
(`MIGRATIONS[n]`), each step in one transaction (MariaDB commits each DDL statement by itself;
a lock keeps two instances from migrating at once). Column types are written as `{key}`,
`{text}`... and the engine says what each is (shared/engines.py): TEXT on SQLite, VARCHAR(255)
for keys on MariaDB. The version is SQLite's `PRAGMA user_version`, else a table of one row.
Never edit a shipped migration: append one. Every statement naming a column is here, next to
the tables, so a new column is one file's change (and rows.py's, which reads and writes the
columns in the order the statements list them). Placeholders are `%s` on every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refreshd.shared.engines import Engine, sqlite_engine

__all__ = ["MIGRATIONS", "OURS", "SCHEMA_VERSION", "Sql", "migrations"]

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        """CREATE TABLE servers (
            name {key} PRIMARY KEY NOT NULL,
            last_outcome {text},
            last_attempt_at {text},
            last_success_at {text},
            suspended_until {text},
            suspensions INTEGER NOT NULL DEFAULT 0 CHECK (suspensions >= 0),
            suspension_reason {text},
            config_fingerprint {text}
        ){options}""",
        """CREATE TABLE credentials_waits (
            name {key} PRIMARY KEY NOT NULL,
            waiting_until {text} NOT NULL,
            reason {text} NOT NULL,
            fingerprint {text}
        ){options}""",
        # One row per (server, due) that succeeded: the scheduler asks this table
        # before every run, so a restart never refreshes the same slot twice.
        """CREATE TABLE runs_done (
            server {key} NOT NULL REFERENCES servers (name) ON DELETE CASCADE,
            due {key} NOT NULL,
            done_at {text} NOT NULL,
            PRIMARY KEY (server, due)
        ){norowid}{options}""",
        """CREATE TABLE calls (
            id {id},
            server {key} NOT NULL REFERENCES servers (name) ON DELETE CASCADE,
            slot_start {text},
            due {text},
            attempt INTEGER NOT NULL CHECK (attempt >= 1),
            outcome {text} NOT NULL,
            at {key} NOT NULL,
            duration_ms INTEGER NOT NULL CHECK (duration_ms >= 0),
            http_status INTEGER,
            servers_flagged INTEGER,
            detail {text}
        ){options}""",
        "CREATE INDEX calls_by_time ON calls (at)",
        "CREATE INDEX calls_by_server_time ON calls (server, at)",
        "CREATE INDEX runs_done_by_due ON runs_done (due)",
    ),
    # 1 -> 2: calls that were, or may have been, failed logins, per login (the VICIdial
    # user), so that every process spends one budget of them.
    (
        """CREATE TABLE failed_logins (
            login {key} NOT NULL,
            at {key} NOT NULL,
            PRIMARY KEY (login, at)
        ){norowid}{options}""",
    ),
    # 2 -> 3: when the daemon first had each server in its config, so that alerts see a
    # server that has never succeeded since (a restart must not reset it).
    ("ALTER TABLE servers ADD COLUMN first_seen {text}",),
    # 3 -> 4: the daemon's last heartbeat (one row), so that `status` can tell how long
    # ago a daemon last showed a sign of life.
    (
        """CREATE TABLE daemon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            heartbeat_at {text} NOT NULL
        ){options}""",
    ),
    # 4 -> 5: whether each `ok` call's refresh was applied by every telephony server, as
    # the cluster's database showed (NULL: not verified), for `status` and `history`.
    (
        "ALTER TABLE calls ADD COLUMN applied INTEGER CHECK (applied IN (0, 1))",
        "ALTER TABLE calls ADD COLUMN apply_seconds {real}",
        "ALTER TABLE calls ADD COLUMN apply_detail {text}",
    ),
    # 5 -> 6: what started each credentials wait (policy.WaitKind), so that status, the
    # metrics and the alerts tell a refused login from a lock-out. NULL (older waits): a
    # refused login.
    ("ALTER TABLE credentials_waits ADD COLUMN kind {text}",),
    # 6 -> 7: a counter every journal write adds one to, so that each process tells
    # another's writes from its own on every engine (runner.sync).
    (
        """CREATE TABLE changes (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            counter BIGINT NOT NULL
        ){options}""",
        "INSERT INTO changes (id, counter) VALUES (1, 0)",
    ),
)


SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this code writes and understands."""

OURS = ("servers", "credentials_waits", "runs_done", "calls", "failed_logins", "daemon", "changes")
"""The store's tables: a server database that has one of them but no schema version is
another application's, and is not migrated."""


def migrations(engine: Engine) -> tuple[tuple[str, ...], ...]:
    """The migrations in `engine`'s column types."""
    return tuple(
        tuple(statement.format_map(engine.types) for statement in step) for step in _MIGRATIONS
    )


# No file is opened: only its column types are asked.
MIGRATIONS = migrations(sqlite_engine(Path("state.db")))
"""The migrations as SQLite runs them (tests build files of older versions with them)."""

_SERVER_COLUMNS = (
    "name",
    "last_outcome",
    "last_attempt_at",
    "last_success_at",
    "suspended_until",
    "suspensions",
    "suspension_reason",
    "config_fingerprint",
    "first_seen",
)
_WAIT_COLUMNS = ("name", "waiting_until", "reason", "fingerprint", "kind")
_CALL_COLUMNS = (
    "server",
    "slot_start",
    "due",
    "attempt",
    "outcome",
    "at",
    "duration_ms",
    "http_status",
    "servers_flagged",
    "detail",
)


@dataclass(frozen=True)
class Sql:
    """Every statement of the store, in one engine's words."""

    server_upsert: str
    wait_upsert: str
    failed_insert: str
    run_done_insert: str
    heartbeat_upsert: str
    call_insert: str

    @classmethod
    def of(cls, engine: Engine) -> Sql:
        return cls(
            # first_seen: the earliest written stays (a one-shot command's entry may lack it).
            server_upsert=engine.upsert("servers", _SERVER_COLUMNS, ("name",), ("first_seen",)),
            wait_upsert=engine.upsert("credentials_waits", _WAIT_COLUMNS, ("name",)),
            failed_insert=engine.insert_ignore("failed_logins", ("login", "at")),
            # Ignored: a second success for the same run (a retry whose first answer was
            # lost) keeps the first time.
            run_done_insert=engine.insert_ignore("runs_done", ("server", "due", "done_at")),
            heartbeat_upsert=engine.upsert("daemon", ("id", "heartbeat_at"), ("id",)),
            call_insert=(
                f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(_CALL_COLUMNS))})"
            ),
        )


# -- servers and logins ------------------------------------------------------------------

# Built from the column lists above, never from input.
SERVER_SELECT = f"SELECT {', '.join(_SERVER_COLUMNS)} FROM servers"
WAIT_SELECT = f"SELECT {', '.join(_WAIT_COLUMNS)} FROM credentials_waits"
WAIT_DELETE = "DELETE FROM credentials_waits WHERE name = %s"
FAILED_SELECT = "SELECT login, at FROM failed_logins ORDER BY login, at"
# A login's failures up to a success: VICIdial forgot them when it let the login in. Never
# all of them: another instance's failure after that success still counts.
FAILED_FORGET = "DELETE FROM failed_logins WHERE login = %s AND at <= %s"
FAILED_PRUNE = "DELETE FROM failed_logins WHERE at < %s"

# -- runs done -----------------------------------------------------------------------------

LAST_RUNS_DONE = "SELECT server, MAX(due) FROM runs_done GROUP BY server"
RUNS_DONE_PRUNE = "DELETE FROM runs_done WHERE due < %s"

# -- the daemon and the change counter ---------------------------------------------------

HEARTBEAT_SELECT = "SELECT heartbeat_at FROM daemon WHERE id = 1"
CHANGES_BUMP = "UPDATE changes SET counter = counter + 1 WHERE id = 1"
CHANGES_SELECT = "SELECT counter FROM changes WHERE id = 1"

# -- calls ---------------------------------------------------------------------------------

_CALL_READ = (
    "SELECT id, server, slot_start, due, attempt, outcome, at, duration_ms, "
    "http_status, servers_flagged, detail, applied, apply_seconds, apply_detail FROM calls"
)


def call_select(*, server: bool, since: bool) -> str:
    """The history, newest first; with `server = %s`, `at >= %s` when asked, then LIMIT %s
    (built, not `%s IS NULL OR`: PostgreSQL cannot type a bare NULL parameter)."""
    where = [w for w, on in (("server = %s", server), ("at >= %s", since)) if on]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"{_CALL_READ}{clause} ORDER BY at DESC, id DESC LIMIT %s"


CALLS_PRUNE = "DELETE FROM calls WHERE at < %s"
# The verdict on the `ok` call of a server sent at a time (the verifier knows no call id).
VERIFIED_UPDATE = (
    "UPDATE calls SET applied = %s, apply_seconds = %s, apply_detail = %s "
    "WHERE server = %s AND at = %s AND outcome = 'ok'"
)
# Each server's latest verdict.
LAST_VERIFIED = (
    "SELECT server, at, applied, apply_seconds, apply_detail FROM calls AS c "
    "WHERE applied IS NOT NULL AND at = (SELECT MAX(at) FROM calls "
    "WHERE server = c.server AND applied IS NOT NULL)"
)
