"""The agent's persistent state: SQLite in WAL mode.

What is stored (schema in ``_MIGRATIONS``; docs/architecture.md, "State"):

* ``attachments`` -- one row per (container id, interface): the pod, the mode
  that made it, its lifecycle state and the JSON of the request, the
  allocation and the link result.  The allocation is committed *before* the
  datapath is built and the link result before the CNI gets its answer, so a
  crash at any instant leaves a row that DEL, GC or the start-up resync can
  finish.
* ``leases`` -- address ownership per pool: an address is owned by at most one
  attachment (primary key), released addresses keep a cooldown, and sticky
  holds keep an address for a named pod (StatefulSets).
* ``kv`` -- a small per-plugin key-value space.
* ``meta`` -- schema version, the mode history of the node.

Writes are transactions with ``synchronous=FULL``: committed means on disk.
All methods are synchronous and thread-safe; async code calls them through
:meth:`Store.acall` (one writer thread at a time, never the event loop).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from terway_agent.errors import PermanentError
from terway_agent.types import Allocation, Attachment, LinkResult, PodRef

T = TypeVar("T")

SCHEMA_VERSION = 2

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE attachments (
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        network TEXT NOT NULL,
        pod_namespace TEXT NOT NULL,
        pod_name TEXT NOT NULL,
        pod_uid TEXT NOT NULL DEFAULT '',
        netns TEXT NOT NULL DEFAULT '',
        mode TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('allocating', 'allocated', 'ready', 'releasing')),
        request TEXT NOT NULL,
        allocation TEXT,
        link TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (container_id, ifname)
    );
    CREATE INDEX attachments_pod ON attachments (pod_namespace, pod_name);
    CREATE TABLE leases (
        pool TEXT NOT NULL,
        address TEXT NOT NULL,
        owner TEXT,
        pod TEXT NOT NULL DEFAULT '',
        released_at REAL,
        hold_for TEXT NOT NULL DEFAULT '',
        hold_until REAL,
        PRIMARY KEY (pool, address)
    );
    CREATE UNIQUE INDEX leases_owner ON leases (pool, owner) WHERE owner IS NOT NULL;
    CREATE TABLE kv (plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (plugin, key));
    """,
    # 2: the IPAM's ENIs and addresses (terway_agent/ipam/_db.py; docs/ipam.md, "State").
    2: """
    CREATE TABLE ipam_enis (
        eni_id TEXT PRIMARY KEY,
        pool TEXT NOT NULL CHECK (pool IN ('shared', 'exclusive')),
        mac TEXT NOT NULL,
        vswitch_id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('attaching', 'ready', 'releasing')),
        device_index INTEGER,
        primary_ip TEXT NOT NULL DEFAULT '',
        cidr4 TEXT,
        gateway4 TEXT,
        cidr6 TEXT,
        gateway6 TEXT,
        trunk INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        pod TEXT NOT NULL DEFAULT '',
        assigned_at REAL,
        released_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX ipam_enis_owner ON ipam_enis (owner) WHERE owner IS NOT NULL;
    CREATE TABLE ipam_ips (
        address TEXT PRIMARY KEY,
        family INTEGER NOT NULL CHECK (family IN (4, 6)),
        eni_id TEXT NOT NULL REFERENCES ipam_enis (eni_id),
        is_primary INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('ready', 'releasing')),
        owner TEXT,
        pod TEXT NOT NULL DEFAULT '',
        assigned_at REAL,
        released_at REAL,
        hold_for TEXT NOT NULL DEFAULT '',
        hold_until REAL,
        created_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX ipam_ips_owner ON ipam_ips (owner, family) WHERE owner IS NOT NULL;
    CREATE INDEX ipam_ips_eni ON ipam_ips (eni_id);
    CREATE TABLE ipam_orphans (eni_id TEXT PRIMARY KEY, first_seen REAL NOT NULL, reason TEXT NOT NULL);
    """,
}

ATTACHMENT_STATES = ("allocating", "allocated", "ready", "releasing")


class StoreError(PermanentError):
    """The state database is unusable (newer schema, corrupt file)."""


@dataclass(frozen=True, slots=True)
class Lease:
    pool: str
    address: str
    owner: str | None
    pod: str
    released_at: float | None
    hold_for: str
    hold_until: float | None


class Store:
    """The state database at ``path`` (created with its directory if missing)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"state database {self.path} is unusable: {exc}", path=str(self.path)) from exc
        self._limiter = trio.CapacityLimiter(1)

    # -- plumbing -------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema {version}, newer than this agent's {SCHEMA_VERSION}; "
                "downgrading the agent over a newer state is not supported",
                path=str(self.path),
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits any open transaction first, so the whole
            # migration is one explicit transaction inside the script.
            with self._lock:
                try:
                    self._db.executescript(
                        f"BEGIN IMMEDIATE;\n{_MIGRATIONS[target]}\nPRAGMA user_version={target};\nCOMMIT;"
                    )
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction; commits on success."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    async def acall(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method in a worker thread (never on the event loop)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta -------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # -- attachments ------------------------------------------------------------

    def begin_attachment(self, *, request: dict[str, Any], network: str, pod: PodRef, netns: str, mode: str) -> None:
        """Insert an attachment in state ``allocating``.

        Fails with ``sqlite3.IntegrityError`` if the attachment exists.
        """
        now = self._clock()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO attachments (container_id, ifname, network, pod_namespace, pod_name, pod_uid, netns,"
                " mode, state, request, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?, 'allocating', ?,?,?)",
                (
                    request["container_id"],
                    request["ifname"],
                    network,
                    pod.namespace,
                    pod.name,
                    pod.uid,
                    netns,
                    mode,
                    json.dumps(request, sort_keys=True),
                    now,
                    now,
                ),
            )

    def set_allocation(self, container_id: str, ifname: str, allocation: Allocation) -> None:
        self._update(container_id, ifname, state="allocated", allocation=json.dumps(allocation.to_dict(), sort_keys=True))

    def set_link(self, container_id: str, ifname: str, link: LinkResult) -> None:
        self._update(container_id, ifname, state="ready", link=json.dumps(link.to_dict(), sort_keys=True))

    def set_state(self, container_id: str, ifname: str, state: str) -> None:
        if state not in ATTACHMENT_STATES:
            raise ValueError(state)
        self._update(container_id, ifname, state=state)

    def _update(self, container_id: str, ifname: str, **cols: Any) -> None:
        cols["updated_at"] = self._clock()
        assignments = ", ".join(f"{k} = ?" for k in cols)
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE attachments SET {assignments} WHERE container_id = ? AND ifname = ?",
                (*cols.values(), container_id, ifname),
            )
            if cur.rowcount != 1:
                raise KeyError((container_id, ifname))

    def delete_attachment(self, container_id: str, ifname: str) -> bool:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM attachments WHERE container_id = ? AND ifname = ?", (container_id, ifname))
            db.execute("UPDATE leases SET owner = NULL, released_at = ? WHERE owner = ?", (self._clock(), f"{container_id}/{ifname}"))
        return cur.rowcount == 1

    def get_attachment(self, container_id: str, ifname: str) -> Attachment | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM attachments WHERE container_id = ? AND ifname = ?", (container_id, ifname)
            ).fetchone()
        return None if row is None else _row_to_attachment(row)

    def attachments(self, *, network: str | None = None, mode: str | None = None) -> list[Attachment]:
        sql = "SELECT * FROM attachments"
        cond, args = [], []
        if network is not None:
            cond.append("network = ?")
            args.append(network)
        if mode is not None:
            cond.append("mode = ?")
            args.append(mode)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY created_at"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_row_to_attachment(r) for r in rows]

    def attachments_of_pod(self, pod: PodRef) -> list[Attachment]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM attachments WHERE pod_namespace = ? AND pod_name = ?", (pod.namespace, pod.name)
            ).fetchall()
        return [_row_to_attachment(r) for r in rows]

    def count_by_mode(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT mode, COUNT(*) FROM attachments GROUP BY mode").fetchall()
        return {r[0]: r[1] for r in rows}

    # -- leases -----------------------------------------------------------------

    def lease(
        self,
        pool: str,
        candidates: Iterable[str],
        owner: str,
        *,
        pod: str = "",
        cooldown: float = 0.0,
        prefer: str | None = None,
    ) -> str | None:
        """Give ``owner`` one address of ``candidates`` that nobody owns, atomically.

        An owner already holding an address in ``pool`` gets it again
        (idempotent after a crash).  Addresses released less than ``cooldown``
        seconds ago and addresses held for another pod are skipped; an address
        of the pool held for ``pod`` (sticky) wins, then ``prefer`` (which must
        belong to the pool).  ``candidates`` is consumed lazily, so a generator
        over a large subnet costs only as much as it is read.  Returns ``None``
        when no candidate is free.
        """
        now = self._clock()
        with self.transaction() as db:
            row = db.execute("SELECT address FROM leases WHERE pool = ? AND owner = ?", (pool, owner)).fetchone()
            if row is not None:
                return str(row[0])
            taken: dict[str, sqlite3.Row] = {
                r["address"]: r for r in db.execute("SELECT * FROM leases WHERE pool = ?", (pool,)).fetchall()
            }

            def usable(addr: str) -> bool:
                r = taken.get(addr)
                if r is None:
                    return True
                if r["owner"] is not None:
                    return False
                if r["hold_for"] and r["hold_until"] is not None and r["hold_until"] > now and r["hold_for"] != pod:
                    return False
                if r["hold_for"] == pod and pod and r["hold_until"] is not None and r["hold_until"] > now:
                    return True
                return r["released_at"] is None or now - r["released_at"] >= cooldown

            sticky = [
                a for a, r in taken.items()
                if pod and r["owner"] is None and r["hold_for"] == pod and r["hold_until"] is not None and r["hold_until"] > now
            ]
            preferred = [prefer] if prefer else []
            for addr in itertools.chain(sticky, preferred, candidates):
                if usable(addr):
                    db.execute(
                        "INSERT INTO leases (pool, address, owner, pod) VALUES (?,?,?,?) ON CONFLICT(pool, address) DO UPDATE"
                        " SET owner = excluded.owner, pod = excluded.pod, hold_for = '', hold_until = NULL",
                        (pool, addr, owner, pod),
                    )
                    return addr
        return None

    def release_lease(self, pool: str, owner: str, *, hold_for: str = "", hold_seconds: float = 0.0) -> str | None:
        """Free ``owner``'s address in ``pool`` (idempotent); optionally hold it for pod ``hold_for``."""
        now = self._clock()
        with self.transaction() as db:
            row = db.execute("SELECT address FROM leases WHERE pool = ? AND owner = ?", (pool, owner)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE leases SET owner = NULL, released_at = ?, hold_for = ?, hold_until = ? WHERE pool = ? AND address = ?",
                (now, hold_for, now + hold_seconds if hold_for else None, pool, row[0]),
            )
            return str(row[0])

    def leases(self, pool: str | None = None) -> list[Lease]:
        with self._lock:
            if pool is None:
                rows = self._db.execute("SELECT * FROM leases ORDER BY pool, address").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM leases WHERE pool = ? ORDER BY address", (pool,)).fetchall()
        return [Lease(**{k: r[k] for k in r.keys()}) for r in rows]

    # -- per-plugin key-value -----------------------------------------------------

    def kv_get(self, plugin: str, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE plugin = ? AND key = ?", (plugin, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def kv_put(self, plugin: str, key: str, value: Any) -> None:
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM kv WHERE plugin = ? AND key = ?", (plugin, key))
            else:
                db.execute(
                    "INSERT INTO kv (plugin, key, value) VALUES (?,?,?) ON CONFLICT(plugin, key) DO UPDATE SET value = excluded.value",
                    (plugin, key, json.dumps(value, sort_keys=True)),
                )

    def kv_items(self, plugin: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM kv WHERE plugin = ?", (plugin,)).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}


def _row_to_attachment(row: sqlite3.Row) -> Attachment:
    return Attachment(
        container_id=row["container_id"],
        ifname=row["ifname"],
        network=row["network"],
        pod=PodRef(row["pod_namespace"], row["pod_name"], row["pod_uid"]),
        netns=row["netns"],
        mode=row["mode"],
        state=row["state"],
        allocation=Allocation.from_dict(json.loads(row["allocation"])) if row["allocation"] else None,
        link=LinkResult.from_dict(json.loads(row["link"])) if row["link"] else None,
        request=json.loads(row["request"]),
    )
