"""A store several refreshd instances share (issue 13, under construction): PostgreSQL or
MariaDB/MySQL, and SQLite for one host, behind one small interface; the claims that let one
instance, and only one, call for a run."""

from refreshd.shared.claims import Claim, ClaimStore
from refreshd.shared.engines import Engine, Tx, connect, sqlite_engine

__all__ = ["Claim", "ClaimStore", "Engine", "Tx", "connect", "sqlite_engine"]
