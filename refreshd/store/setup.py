"""The StateStore's opening: the schema migrated (or, read-only, checked), a SQLite file's
integrity, mode and identity (a file deleted or replaced under the daemon), a server database
that is another application's refused."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

from refreshd.shared.engines import Engine, Tx
from refreshd.store import schema
from refreshd.store.errors import StateError
from refreshd.store.schema import SCHEMA_VERSION
from refreshd.store.verifications import Verifications

__all__ = ["SetUp", "create_private_file", "identity"]


class SetUp(Verifications):
    """The StateStore's set-up methods (a part of it, kept apart for its size)."""

    _engine: Engine
    _path: Path | None
    _identity: tuple[int, int] | None

    @property
    def where(self) -> str:
        raise NotImplementedError  # the StateStore's

    def _translated(self, doing: str) -> AbstractContextManager[None]:
        raise NotImplementedError  # the StateStore's

    def replaced(self) -> str | None:
        """Whether the SQLite file this store writes is still the one at its path: None if
        it is (or the store is a database server's), else what happened ("deleted",
        "replaced"). A deleted or replaced file keeps taking our writes into the old inode,
        where no restart would find them."""
        if self._path is None or self._identity is None:
            return None
        try:
            now = identity(self._path)
        except FileNotFoundError:
            return "deleted"
        except OSError as err:
            return f"unreadable ({err.strerror or err})"
        return None if now == self._identity else "replaced"

    def _migrate(self) -> None:
        try:
            self._migrate_locked()
        except TimeoutError as err:
            raise StateError(
                f"{self.where}: cannot upgrade the schema: {err}. Start this instance again "
                "once the other one has started."
            ) from None

    def _migrate_locked(self) -> None:
        with self._translated("lock the schema to upgrade it"), self._engine.schema_lock():
            for target in range(1, SCHEMA_VERSION + 1):
                with self._write(f"upgrade to schema version {target}") as tx:
                    # Read inside the lock: another process may have just migrated.
                    version = self._engine.schema_version(tx)
                    self._refuse_newer(version)
                    if version >= target:
                        continue
                    if version == 0:
                        self._refuse_foreign(tx)
                    for statement in schema.migrations(self._engine)[target - 1]:
                        tx.execute(statement)
                    self._engine.set_schema_version(tx, target)

    def _check_integrity(self) -> None:
        with self._read("check the file's integrity") as tx:
            problems = self._engine.integrity_problems(tx)
        if problems:
            raise StateError(
                f"{self.where}: damaged ({'; '.join(problems)}). Stop refreshd, move the file "
                "aside (it keeps the history and the runs already done) and start again: a "
                "new file is created, and the slot now open may be refreshed once more."
            )

    def _check_readable(self) -> None:
        with self._read("read") as tx:
            version = self._engine.schema_version(tx)
        if version == 0:
            raise StateError(f"{self.where} holds no refreshd state yet: start the daemon once.")
        if version < SCHEMA_VERSION:
            raise StateError(
                f"{self.where} has schema version {version}, older than this refreshd's "
                f"{SCHEMA_VERSION}: restart the daemon (it upgrades it), then try again."
            )
        self._refuse_newer(version)

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            aside = (
                "move the file aside"
                if self._path is not None
                else "point [state] url at an empty database"
            )
            raise StateError(
                f"{self.where} has schema version {version}, newer than this refreshd "
                f"understands ({SCHEMA_VERSION}): it was written by a newer refreshd. Run "
                f"that version, or {aside} to start with empty state (suspensions and done "
                "runs are forgotten)."
            )

    def _refuse_foreign(self, tx: Tx) -> None:
        """A server database with the store's table names but no schema version is another
        application's (VICIdial's own database has a `servers` table): never migrated."""
        if self._path is not None:
            return
        clash = sorted(set(schema.OURS) & self._engine.tables(tx))
        if clash:
            raise StateError(
                f"{self.where} already has tables named {', '.join(clash)} that refreshd did "
                "not create: give refreshd a database of its own (CREATE DATABASE refreshd) "
                "and point [state] url at it."
            )


def identity(path: Path) -> tuple[int, int]:
    """The file at `path`, as the file system knows it (device, inode)."""
    status = path.stat()
    return status.st_dev, status.st_ino


def create_private_file(path: Path) -> None:
    """Create the directory (0700) and an empty file (0600) unless they exist.

    SQLite would create the file with the umask's looser mode; it then gives its
    -wal and -shm files the database file's mode, so this covers them too.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
        finally:
            os.close(fd)
    except OSError as err:
        reason = err.strerror or str(err)
        if path.parent.exists() and not path.parent.is_dir():
            reason = f"{path.parent} is not a directory"
        raise StateError(
            f"state file {path}: cannot create it: {reason}. Check that its "
            "directory can be created and written by the daemon's user, or set "
            "daemon.state_path."
        ) from err
