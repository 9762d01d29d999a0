"""Verified refreshes: reading a cluster's VICIdial database, read-only, to learn whether every
telephony server picked a refresh up (its keepalive cleared `servers.rebuild_conf_files`)."""

from refreshd.dburl import DatabaseUrl, parse_database_url
from refreshd.verify.database import Box, ClusterDatabase, DatabaseProblem, Reading

__all__ = [
    "Box",
    "ClusterDatabase",
    "DatabaseProblem",
    "DatabaseUrl",
    "Reading",
    "parse_database_url",
]
