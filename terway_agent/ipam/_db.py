"""The IPAM's tables in the agent's store (schema: migration 2 of terway_agent/store.py).

Every function is one immediate transaction and blocks: the pools call them
through ``store.acall`` (a worker thread), never on the event loop.

The rule that keeps an address from ever reaching two live owners: ownership
changes only through conditional updates (``... WHERE owner IS NULL AND state =
'ready'``) whose row count is checked inside the same transaction, and the
unique indexes ``(owner, family)`` / ``owner`` of the tables.  The in-memory
view of a pool is a cache of these rows; the rows win.

*Tombstones* (``kv`` rows of plugin :data:`LOST`, key = the address, value = JSON
``{owner, pod, family, eni_id, assigned_at, lost_at}``): an address its owner
still uses although the cloud no longer has it on our ENI.  The tombstone lives
until the owner is released; meanwhile the address is never taken, marked for
release or deleted, even when the cloud hands it to one of our ENIs again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from terway_agent.store import Store

ENI_COLUMNS = (
    "eni_id",
    "pool",
    "mac",
    "vswitch_id",
    "state",
    "device_index",
    "primary_ip",
    "cidr4",
    "gateway4",
    "cidr6",
    "gateway6",
    "trunk",
    "owner",
    "pod",
    "assigned_at",
    "released_at",
    "created_at",
    "updated_at",
)
IP_COLUMNS = (
    "address",
    "family",
    "eni_id",
    "is_primary",
    "state",
    "owner",
    "pod",
    "assigned_at",
    "released_at",
    "hold_for",
    "hold_until",
    "created_at",
)


#: the ``kv`` plugin name of the tombstones
LOST = "ipam-lost"
#: addresses with a tombstone (a sub-select for the conditional updates)
_LOST_SQL = f"(SELECT key FROM kv WHERE plugin = '{LOST}')"


class OwnershipConflict(RuntimeError):
    """A conditional ownership update matched no row: the cache disagreed with the store."""


def load_lost(store: Store) -> dict[str, dict[str, Any]]:
    """Every tombstone: address -> ``{owner, pod, family, eni_id, assigned_at, lost_at}``."""
    with store.transaction() as db:
        rows = db.execute("SELECT key, value FROM kv WHERE plugin = ?", (LOST,)).fetchall()
    return {r[0]: json.loads(r[1]) for r in rows}


def get_ips(store: Store, addresses: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``addresses`` that exist."""
    out: dict[str, dict[str, Any]] = {}
    with store.transaction() as db:
        for address in addresses:
            row = db.execute("SELECT * FROM ipam_ips WHERE address = ?", (address,)).fetchone()
            if row is not None:
                out[address] = dict(row)
    return out


def get_eni(store: Store, eni_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The row of ``eni_id`` (``None`` if gone) and its address rows."""
    with store.transaction() as db:
        row = db.execute("SELECT * FROM ipam_enis WHERE eni_id = ?", (eni_id,)).fetchone()
        ips = [dict(r) for r in db.execute("SELECT * FROM ipam_ips WHERE eni_id = ?", (eni_id,))]
    return (None if row is None else dict(row)), ips


def _tombstone(db: sqlite3.Connection, row: sqlite3.Row, now: float) -> dict[str, Any]:
    """Turn the owned address row ``row`` into a tombstone (the caller deletes the row)."""
    value = {
        "owner": row["owner"],
        "pod": row["pod"] or "",
        "family": int(row["family"]),
        "eni_id": row["eni_id"],
        "assigned_at": row["assigned_at"],
        "lost_at": now,
    }
    db.execute(
        "INSERT INTO kv (plugin, key, value) VALUES (?,?,?)"
        " ON CONFLICT(plugin, key) DO UPDATE SET value = excluded.value",
        (LOST, row["address"], json.dumps(value, sort_keys=True)),
    )
    return value


def _clear_lost_of(db: sqlite3.Connection, owners: Iterable[str]) -> list[str]:
    """Delete the tombstones of ``owners``; returns their addresses."""
    wanted = set(owners)
    gone = []
    for key, value in db.execute("SELECT key, value FROM kv WHERE plugin = ?", (LOST,)).fetchall():
        if json.loads(value).get("owner") in wanted:
            gone.append(key)
    db.executemany("DELETE FROM kv WHERE plugin = ? AND key = ?", [(LOST, k) for k in gone])
    return gone


def load(store: Store) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """All ENI rows, all IP rows and the orphan marks."""
    with store.transaction() as db:
        enis = [dict(r) for r in db.execute("SELECT * FROM ipam_enis ORDER BY created_at, eni_id")]
        ips = [dict(r) for r in db.execute("SELECT * FROM ipam_ips ORDER BY created_at, address")]
        orphans = {r["eni_id"]: float(r["first_seen"]) for r in db.execute("SELECT * FROM ipam_orphans")}
    return enis, ips, orphans


def insert_eni(store: Store, row: dict[str, Any]) -> None:
    """Record an ENI (state ``attaching`` for one being created, ``ready`` when adopted)."""
    cols = [c for c in ENI_COLUMNS if c in row]
    with store.transaction() as db:
        db.execute(
            f"INSERT INTO ipam_enis ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [row[c] for c in cols],
        )
        db.execute("DELETE FROM ipam_orphans WHERE eni_id = ?", (row["eni_id"],))


def _insert_ips(db: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
    for row in rows:
        cols = [c for c in IP_COLUMNS if c in row]
        db.execute(
            f"INSERT INTO ipam_ips ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
            " ON CONFLICT(address) DO UPDATE SET eni_id = excluded.eni_id, family = excluded.family,"
            " is_primary = excluded.is_primary",
            [row[c] for c in cols],
        )


def eni_ready(store: Store, eni_id: str, fields: dict[str, Any], ips: Sequence[dict[str, Any]]) -> None:
    """An ENI finished attaching: its network facts and its addresses (idle) in one transaction."""
    assign = ", ".join(f"{k} = ?" for k in fields)
    with store.transaction() as db:
        cur = db.execute(
            f"UPDATE ipam_enis SET state = 'ready', {assign} WHERE eni_id = ?", (*fields.values(), eni_id)
        )
        if cur.rowcount != 1:
            raise OwnershipConflict(f"ENI {eni_id} is not in the store")
        _insert_ips(db, ips)


def update_eni(store: Store, eni_id: str, fields: dict[str, Any]) -> None:
    assign = ", ".join(f"{k} = ?" for k in fields)
    with store.transaction() as db:
        db.execute(f"UPDATE ipam_enis SET {assign} WHERE eni_id = ?", (*fields.values(), eni_id))


def add_ips(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    """New idle addresses (assigned by the cloud, or found on our ENIs)."""
    with store.transaction() as db:
        _insert_ips(db, rows)


def take_ips(store: Store, addresses: Sequence[str], owner: str, pod: str, now: float) -> None:
    """Give ``addresses`` to ``owner``, all or none.

    :raises OwnershipConflict: one of them is owned or not ready in the store.
    """
    with store.transaction() as db:
        for address in addresses:
            cur = db.execute(
                "UPDATE ipam_ips SET owner = ?, pod = ?, assigned_at = ?, hold_for = '', hold_until = NULL"
                f" WHERE address = ? AND owner IS NULL AND state = 'ready' AND address NOT IN {_LOST_SQL}",
                (owner, pod, now, address),
            )
            if cur.rowcount != 1:
                raise OwnershipConflict(f"address {address} is not free in the store")


def release_ips(store: Store, owner: str, now: float, hold_for: str, hold_until: float | None) -> list[str]:
    """Free every address of ``owner`` and drop its tombstones (idempotent); returns the
    addresses freed and the tombstoned ones (a tombstoned address back on one of our ENIs
    starts its reuse cooldown now)."""
    with store.transaction() as db:
        rows = [r[0] for r in db.execute("SELECT address FROM ipam_ips WHERE owner = ?", (owner,))]
        db.execute(
            "UPDATE ipam_ips SET owner = NULL, pod = '', released_at = ?, hold_for = ?, hold_until = ?"
            " WHERE owner = ?",
            (now, hold_for, hold_until, owner),
        )
        lost = _clear_lost_of(db, [owner])
        db.executemany(
            "UPDATE ipam_ips SET released_at = ? WHERE address = ? AND owner IS NULL",
            [(now, a) for a in lost],
        )
    return rows + lost


def take_eni(store: Store, eni_id: str, owner: str, pod: str, now: float) -> None:
    """Give the whole ENI ``eni_id`` (and its addresses) to ``owner``."""
    with store.transaction() as db:
        busy = db.execute(
            f"SELECT COUNT(*) FROM ipam_ips WHERE eni_id = ? AND (owner IS NOT NULL OR address IN {_LOST_SQL})",
            (eni_id,),
        ).fetchone()[0]
        cur = db.execute(
            "UPDATE ipam_enis SET owner = ?, pod = ?, assigned_at = ?, updated_at = ?"
            " WHERE eni_id = ? AND owner IS NULL AND state = 'ready'",
            (owner, pod, now, now, eni_id),
        )
        if busy or cur.rowcount != 1:
            raise OwnershipConflict(f"ENI {eni_id} is not free in the store")
        cur = db.execute(
            "UPDATE ipam_ips SET owner = ?, pod = ?, assigned_at = ? WHERE eni_id = ? AND owner IS NULL",
            (owner, pod, now, eni_id),
        )


def release_eni_owner(store: Store, owner: str, now: float) -> list[str]:
    """Free the ENI(s) of ``owner`` (idempotent); returns their ids."""
    with store.transaction() as db:
        ids = [r[0] for r in db.execute("SELECT eni_id FROM ipam_enis WHERE owner = ?", (owner,))]
        db.execute(
            "UPDATE ipam_enis SET owner = NULL, pod = '', released_at = ?, updated_at = ? WHERE owner = ?",
            (now, now, owner),
        )
        db.execute(
            "UPDATE ipam_ips SET owner = NULL, pod = '', released_at = ? WHERE owner = ?", (now, owner)
        )
        lost = _clear_lost_of(db, [owner])
        db.executemany(
            "UPDATE ipam_ips SET released_at = ? WHERE address = ? AND owner IS NULL",
            [(now, a) for a in lost],
        )
    return ids


def mark_ips_releasing(store: Store, addresses: Sequence[str]) -> None:
    """Take idle addresses out of the pool before they are unassigned; all or none
    (idempotent: addresses already ``releasing`` and unowned are accepted again).

    :raises OwnershipConflict: one of them is owned, tombstoned or gone.
    """
    with store.transaction() as db:
        for address in addresses:
            cur = db.execute(
                "UPDATE ipam_ips SET state = 'releasing'"
                f" WHERE address = ? AND owner IS NULL AND address NOT IN {_LOST_SQL}",
                (address,),
            )
            if cur.rowcount != 1:
                raise OwnershipConflict(f"address {address} is owned or gone")


def delete_ips(store: Store, addresses: Sequence[str]) -> list[str]:
    """Forget given-back addresses: only rows that are unowned and ``releasing`` are deleted.

    Returns the addresses whose row survived because the store says they are owned
    (or not ``releasing``): the caller's view was wrong, the row wins.
    """
    kept = []
    with store.transaction() as db:
        for address in addresses:
            cur = db.execute(
                "DELETE FROM ipam_ips WHERE address = ? AND owner IS NULL AND state = 'releasing'", (address,)
            )
            if (
                cur.rowcount != 1
                and db.execute("SELECT 1 FROM ipam_ips WHERE address = ?", (address,)).fetchone()
            ):
                kept.append(address)
    return kept


def drop_stale_ips(store: Store, addresses: Sequence[str], now: float) -> dict[str, dict[str, Any]]:
    """Addresses the cloud no longer has on our ENI: unowned rows are deleted, owned rows
    become tombstones (the owner still uses the address).  Returns the new tombstones."""
    lost: dict[str, dict[str, Any]] = {}
    with store.transaction() as db:
        for address in addresses:
            row = db.execute("SELECT * FROM ipam_ips WHERE address = ?", (address,)).fetchone()
            if row is None:
                continue
            if row["owner"] is not None:
                lost[address] = _tombstone(db, row, now)
            db.execute("DELETE FROM ipam_ips WHERE address = ?", (address,))
    return lost


def drop_vanished_eni(store: Store, eni_id: str, now: float) -> dict[str, dict[str, Any]]:
    """An ENI the cloud no longer has: its owned addresses become tombstones, the rest is
    forgotten.  Returns the new tombstones."""
    lost: dict[str, dict[str, Any]] = {}
    with store.transaction() as db:
        for row in db.execute(
            "SELECT * FROM ipam_ips WHERE eni_id = ? AND owner IS NOT NULL", (eni_id,)
        ).fetchall():
            lost[row["address"]] = _tombstone(db, row, now)
        db.execute("DELETE FROM ipam_ips WHERE eni_id = ?", (eni_id,))
        db.execute("DELETE FROM ipam_enis WHERE eni_id = ?", (eni_id,))
        db.execute("DELETE FROM ipam_orphans WHERE eni_id = ?", (eni_id,))
    return lost


def mark_eni_releasing(store: Store, eni_id: str, now: float) -> None:
    """Take an ENI and all its addresses out of the pool before it is deleted.

    Idempotent (an ENI already ``releasing`` is accepted again): the delete path calls it
    right before the cloud call, so the store, not the pool's view, decides.

    :raises OwnershipConflict: the ENI or one of its addresses is owned or tombstoned.
    """
    with store.transaction() as db:
        owned = db.execute(
            f"SELECT COUNT(*) FROM ipam_ips WHERE eni_id = ? AND (owner IS NOT NULL OR address IN {_LOST_SQL})",
            (eni_id,),
        ).fetchone()[0]
        cur = db.execute(
            "UPDATE ipam_enis SET state = 'releasing', updated_at = ? WHERE eni_id = ? AND owner IS NULL",
            (now, eni_id),
        )
        if owned or cur.rowcount != 1:
            raise OwnershipConflict(f"ENI {eni_id} is owned or gone")
        db.execute("UPDATE ipam_ips SET state = 'releasing' WHERE eni_id = ?", (eni_id,))


def delete_eni(store: Store, eni_id: str) -> None:
    """Forget an ENI and its addresses (after the cloud deleted it).

    :raises OwnershipConflict: the ENI or one of its addresses is owned (the row wins).
    """
    with store.transaction() as db:
        owned = db.execute(
            "SELECT (SELECT COUNT(*) FROM ipam_enis WHERE eni_id = ? AND owner IS NOT NULL)"
            " + (SELECT COUNT(*) FROM ipam_ips WHERE eni_id = ? AND owner IS NOT NULL)",
            (eni_id, eni_id),
        ).fetchone()[0]
        if owned:
            raise OwnershipConflict(f"ENI {eni_id} is owned in the store")
        db.execute("DELETE FROM ipam_ips WHERE eni_id = ?", (eni_id,))
        db.execute("DELETE FROM ipam_enis WHERE eni_id = ?", (eni_id,))
        db.execute("DELETE FROM ipam_orphans WHERE eni_id = ?", (eni_id,))


def release_dead_owners(
    store: Store, live: set[str], as_of: float | None, now: float
) -> list[tuple[str, str]]:
    """Free addresses and ENIs owned by owners not in ``live`` (assigned before ``as_of``).

    Returns ``(owner, address-or-eni)`` pairs.
    """
    out: list[tuple[str, str]] = []
    with store.transaction() as db:
        for table, key in (("ipam_ips", "address"), ("ipam_enis", "eni_id")):
            rows = db.execute(
                f"SELECT {key}, owner, assigned_at FROM {table} WHERE owner IS NOT NULL"
            ).fetchall()
            for r in rows:
                if r["owner"] in live:
                    continue
                if as_of is not None and r["assigned_at"] is not None and r["assigned_at"] >= as_of:
                    continue
                db.execute(
                    f"UPDATE {table} SET owner = NULL, pod = '', released_at = ? WHERE {key} = ?",
                    (now, r[key]),
                )
                out.append((r["owner"], r[key]))
        # tombstones of dead owners: the address may be handed out again (after the cooldown)
        for address, value in db.execute("SELECT key, value FROM kv WHERE plugin = ?", (LOST,)).fetchall():
            t = json.loads(value)
            if t.get("owner") in live:
                continue
            assigned = t.get("assigned_at")
            if as_of is not None and assigned is not None and assigned >= as_of:
                continue
            db.execute("DELETE FROM kv WHERE plugin = ? AND key = ?", (LOST, address))
            db.execute(
                "UPDATE ipam_ips SET released_at = ? WHERE address = ? AND owner IS NULL", (now, address)
            )
            out.append((t.get("owner") or "", address))
    return out


def set_orphan(store: Store, eni_id: str, first_seen: float | None, reason: str = "") -> None:
    with store.transaction() as db:
        if first_seen is None:
            db.execute("DELETE FROM ipam_orphans WHERE eni_id = ?", (eni_id,))
        else:
            db.execute(
                "INSERT INTO ipam_orphans (eni_id, first_seen, reason) VALUES (?,?,?) ON CONFLICT(eni_id) DO NOTHING",
                (eni_id, first_seen, reason),
            )


def clear_orphans(store: Store, keep: Iterable[str]) -> None:
    """Forget orphan marks of ENIs not in ``keep``."""
    keep_set = set(keep)
    with store.transaction() as db:
        for (eni_id,) in db.execute("SELECT eni_id FROM ipam_orphans").fetchall():
            if eni_id not in keep_set:
                db.execute("DELETE FROM ipam_orphans WHERE eni_id = ?", (eni_id,))
