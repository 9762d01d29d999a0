"""The verdicts of verified refreshes in the history: whether each `ok` call's refresh was
applied by every telephony server, written when the verifier knows, read by `status`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime

from refreshd.shared.engines import Tx
from refreshd.store import rows, schema
from refreshd.store.rows import Verification

__all__ = ["Verifications"]


class Verifications:
    """The StateStore's verification methods (a part of it, kept apart for its size)."""

    def _read(self, doing: str) -> AbstractContextManager[Tx]:
        raise NotImplementedError  # the StateStore's

    def _write(self, doing: str) -> AbstractContextManager[Tx]:
        raise NotImplementedError  # the StateStore's

    def verified(self, server: str, at: datetime, found: Verification) -> None:
        """Record the verdict on `server`'s `ok` call sent at `at` (a call pruned or never
        recorded meanwhile is left alone)."""
        with self._write("record a verification") as tx:
            tx.execute(schema.VERIFIED_UPDATE, rows.verification_row(server, at, found))

    def last_verifications(self) -> dict[str, Verification]:
        """Each server's latest verdict, by server name."""
        with self._read("read the verifications") as tx:
            tx.execute(schema.LAST_VERIFIED)
            found = tx.fetchall()
        return {
            str(row[0]): verdict
            for row in found
            if (verdict := rows.verification(tuple(row[1:]))) is not None
        }
