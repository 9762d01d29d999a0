"""Which `[[servers]]` entries are one VICIdial cluster, from what their databases said: pure
rules over facts read elsewhere (refreshd/verify/clusters.py reads them).

The identity. A cluster is one database; the question is whether two `[databases]` tables
reach the same one. Same host, port and database name: certainly (the user may differ).
Otherwise refreshd compares what the data says, and errs towards "different": a false
"same" makes one cluster go unrefreshed, a false "different" only costs the second reload
that refreshd made before it knew. So two databases are one cluster only when:

- the `servers` rows, every (server_id, server_ip) sorted, are equal and not empty: stable
  (they change when a box is added, for both readings alike) and per cluster, except for
  two clusters installed from one template with the same ids and private addresses;
- `system_settings.version` is equal;
- `system_settings.reload_timestamp`, read in the same pass, is equal: it is moved by every
  refresh of that cluster alone, to the second, so clones refreshed at different seconds
  (and, once merged, only one of them is refreshed) tell themselves apart. It is not part
  of the cluster's stable name (`fingerprint`), only a check on the pass that compares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from refreshd.core.vicidial import Outcome

__all__ = [
    "CallGroups",
    "ClusterFacts",
    "SameCluster",
    "cluster_of",
    "counts_for_mate",
    "fingerprint",
    "same_clusters",
]


@dataclass(frozen=True)
class ClusterFacts:
    """What one reading of a cluster's database showed."""

    where: tuple[str, int, str]  # host, port, database name
    servers: tuple[tuple[str, str], ...]  # every servers row's (server_id, server_ip)
    version: str | None  # system_settings.version
    reload_timestamp: datetime | None  # system_settings.reload_timestamp, as UTC


@dataclass(frozen=True)
class SameCluster:
    """Entries (in config order) found to be one cluster, and why, for an operator."""

    cluster: str  # the fingerprint: a stable name for the cluster, shown to operators
    database: str  # the first [databases] table of it: unique per group (clones share a
    # fingerprint without being one cluster), so this is what calls are grouped by
    servers: tuple[str, ...]
    why: str


def fingerprint(facts: ClusterFacts) -> str:
    """A short stable name for the cluster whose database showed `facts`."""
    rows = "\n".join(f"{sid}\t{ip}" for sid, ip in sorted(facts.servers))
    text = f"{facts.version or ''}\n{rows}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same(one: ClusterFacts, other: ClusterFacts) -> str | None:
    """Why the two readings are one cluster; None when they may not be."""
    if one.where == other.where:
        host, port, database = one.where
        return f"the same database ({host}:{port}/{database})"
    if (
        one.servers
        and sorted(one.servers) == sorted(other.servers)
        and one.version == other.version
        and one.reload_timestamp is not None
        and one.reload_timestamp == other.reload_timestamp
    ):
        stamp = one.reload_timestamp.isoformat().replace("+00:00", "Z")
        return (
            f"their databases list the same {len(one.servers)} servers rows and the same "
            f"version and last reload ({stamp})"
        )
    return None


def same_clusters(
    entries: Mapping[str, str],
    facts: Mapping[str, ClusterFacts],
    server_ips: Mapping[str, str | None] | None = None,
) -> list[SameCluster]:
    """Groups of two or more entries that are one cluster. `entries`: server name -> the
    name of its `[databases]` table, in config order; `facts`: what each table's database
    showed (a table missing there could not be read: its entries stay apart); `server_ips`:
    server name -> its `server_ip`, if any. An entry naming a box its database does not
    list stays apart: its `database` (copied from another entry, say) or its server_ip is
    wrong, and grouped it could go unrefreshed while verifying on the other cluster's
    database said "applied"."""
    names = list(dict.fromkeys(entries.values()))
    # Each readable database joins the first earlier one it is the same as.
    leader: dict[str, tuple[str, str | None]] = {}  # database -> (leading database, why)
    for index, name in enumerate(names):
        if name not in facts:
            continue
        leader[name] = (name, None)
        for earlier in names[:index]:
            if earlier in facts and leader[earlier][0] == earlier:
                why = _same(facts[earlier], facts[name])
                if why is not None:
                    leader[name] = (earlier, why)
                    break
    groups: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}
    for server, database in entries.items():
        if database not in leader:
            continue
        server_ip = (server_ips or {}).get(server)
        if server_ip is not None and server_ip not in {ip for _, ip in facts[database].servers}:
            continue
        head, why = leader[database]
        groups.setdefault(head, []).append(server)
        if why is not None:
            reasons.setdefault(head, why)
    found = []
    for head, servers in groups.items():
        if len(servers) < 2:
            continue
        host, port, database = facts[head].where
        why = reasons.get(head, f"the same database ({host}:{port}/{database})")
        found.append(SameCluster(fingerprint(facts[head]), head, tuple(servers), why))
    return found


def cluster_of(groups: Sequence[SameCluster]) -> dict[str, str]:
    """Server name -> the key its cluster's calls are grouped by, for `groups`' entries."""
    return {server: group.database for group in groups for server in group.servers}


@dataclass(frozen=True)
class CallGroups:
    """Server name -> its cluster, as last learnt; what makes entries' calls one.

    The entries of one cluster, due together, make one call: VICIdial flags every box of
    the cluster whichever entry asks, and each extra call reloads every box again. Its
    answer counts for each of them (each run done, in the history, in the metrics). Only
    with the same login and password, though: the answer to one login says nothing of
    another's, and counting it for the other would record a failed login it never made
    (or prove a password it never sent), which the lock-out rules must never do. So a
    cluster reached with two logins gets one call per login, and `check --online` says so.
    """

    clusters: Mapping[str, str]

    def group_of(self, server: str, login: str, password_key: str) -> tuple[str, ...] | None:
        """The group of `server`'s call (`password_key`: a hash of the password, never the
        password); None: not known to share a cluster, its call is its own."""
        cluster = self.clusters.get(server)
        return None if cluster is None else ("cluster", cluster, login, password_key)


# Outcomes that speak of the web server reached (its address, TLS, proxy, or an outage), not
# of the cluster or the login: an entry of the group that names another web server makes
# its own call then, rather than count a failure its own path may not have.
_PATH_OUTCOMES = frozenset(
    {
        Outcome.NOT_FOUND,
        Outcome.TLS_REJECTED,
        Outcome.PROXY_REFUSED,
        Outcome.TRANSIENT,
        Outcome.UNEXPECTED,
    }
)


def counts_for_mate(outcome: Outcome, *, same_web_server: bool, same_server_ip: bool) -> bool:
    """Whether a grouped call's `outcome` counts for an entry of its group (else that entry
    calls on its own, through the login gate like any call, so lock-out rules hold).
    `not_found` may be VICIdial's SERVER IP NOT FOUND, about the server_ip the call named
    (an old entry's box since removed): it never counts for a mate that names another."""
    if outcome is Outcome.NOT_FOUND and not same_server_ip:
        return False
    return same_web_server or outcome not in _PATH_OUTCOMES
