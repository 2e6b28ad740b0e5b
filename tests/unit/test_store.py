"""The SQLite store: schema, attachments, leases (ownership, cooldown, stickiness), kv."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from terway_agent.store import _MIGRATIONS, SCHEMA_VERSION, Store, StoreError
from terway_agent.types import Allocation, IPAssignment, LinkResult, PodRef


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock) -> Store:
    s = Store(tmp_path / "state.db", clock=clock)
    yield s
    s.close()


def _req(cid: str = "c1", ifname: str = "eth0") -> dict:
    return {"container_id": cid, "ifname": ifname, "verb": "ADD", "netns": "/n", "pod": {"namespace": "ns", "name": "p"}}


def test_schema_is_created_in_wal_mode(store: Store, tmp_path) -> None:
    assert store.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_reopening_keeps_data(tmp_path, clock) -> None:
    s = Store(tmp_path / "s.db", clock=clock)
    s.set_meta("k", "v")
    s.close()
    s = Store(tmp_path / "s.db", clock=clock)
    assert s.get_meta("k") == "v"
    s.close()


def test_newer_schema_is_refused(tmp_path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this agent's"):
        Store(tmp_path / "s.db")


def test_corrupt_file_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "s.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="unusable"):
        Store(tmp_path / "s.db")


def test_attachment_lifecycle(store: Store) -> None:
    pod = PodRef("ns", "p", "uid")
    store.begin_attachment(request=_req(), network="terway", pod=pod, netns="/n", mode="m")
    with pytest.raises(sqlite3.IntegrityError):
        store.begin_attachment(request=_req(), network="terway", pod=pod, netns="/n", mode="m")
    att = store.get_attachment("c1", "eth0")
    assert att is not None and att.state == "allocating" and att.allocation is None
    alloc = Allocation(kind="local", ipv4=IPAssignment("10.0.0.5", 24, "10.0.0.1"), extra={"k": [1]})
    store.set_allocation("c1", "eth0", alloc)
    store.set_link("c1", "eth0", LinkResult(state={"host_if": "x"}))
    att = store.get_attachment("c1", "eth0")
    assert att.state == "ready" and att.allocation == alloc and att.link.state == {"host_if": "x"}
    assert store.attachments_of_pod(pod)[0].key == ("c1", "eth0")
    assert store.count_by_mode() == {"m": 1}
    assert store.delete_attachment("c1", "eth0") is True
    assert store.delete_attachment("c1", "eth0") is False
    with pytest.raises(KeyError):
        store.set_state("c1", "eth0", "ready")


def test_lease_is_exclusive_and_idempotent_per_owner(store: Store) -> None:
    cands = ["10.0.0.2", "10.0.0.3"]
    a = store.lease("p", cands, "c1/eth0")
    assert a == "10.0.0.2"
    assert store.lease("p", cands, "c1/eth0") == "10.0.0.2"  # same owner, same address
    assert store.lease("p", cands, "c2/eth0") == "10.0.0.3"
    assert store.lease("p", cands, "c3/eth0") is None  # exhausted
    assert store.release_lease("p", "c1/eth0") == "10.0.0.2"
    assert store.release_lease("p", "c1/eth0") is None  # idempotent


def test_released_address_waits_for_the_cooldown(store: Store, clock: Clock) -> None:
    cands = ["10.0.0.2", "10.0.0.3"]
    store.lease("p", cands, "a")
    store.release_lease("p", "a")
    assert store.lease("p", cands, "b", cooldown=30) == "10.0.0.3"
    assert store.lease("p", cands, "c", cooldown=30) is None  # .2 is cooling down
    clock.now += 31
    assert store.lease("p", cands, "c", cooldown=30) == "10.0.0.2"


def test_sticky_hold_returns_the_address_to_the_same_pod(store: Store, clock: Clock) -> None:
    cands = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    store.lease("p", cands, "old/eth0", pod="ns/web-0")
    store.release_lease("p", "old/eth0", hold_for="ns/web-0", hold_seconds=300)
    # another pod cannot take it during the hold, even without cooldown
    assert store.lease("p", ["10.0.0.2"], "x/eth0", pod="ns/other") is None
    # the same pod name gets it back, despite the reuse cooldown
    assert store.lease("p", cands, "new/eth0", pod="ns/web-0", cooldown=30) == "10.0.0.2"
    store.release_lease("p", "new/eth0", hold_for="ns/web-0", hold_seconds=300)
    clock.now += 301
    assert store.lease("p", ["10.0.0.2"], "y/eth0", pod="ns/other") == "10.0.0.2"  # hold expired


def test_concurrent_leases_never_share_an_address(store: Store) -> None:
    cands = [f"10.0.0.{i}" for i in range(2, 60)]
    got: list[str | None] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for j in range(10):
            a = store.lease("p", cands, f"w{n}-{j}")
            with lock:
                got.append(a)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leased = [a for a in got if a is not None]
    assert len(leased) == len(set(leased)) == len(cands)
    assert got.count(None) == 80 - len(cands)


def test_deleting_an_attachment_frees_its_leases(store: Store) -> None:
    store.begin_attachment(request=_req(), network="t", pod=PodRef("ns", "p"), netns="", mode="m")
    store.lease("p", ["10.0.0.2"], "c1/eth0")
    store.delete_attachment("c1", "eth0")
    assert store.leases("p")[0].owner is None


def test_kv(store: Store) -> None:
    store.kv_put("mode", "a", {"x": [1, 2]})
    assert store.kv_get("mode", "a") == {"x": [1, 2]}
    assert store.kv_items("mode") == {"a": {"x": [1, 2]}}
    store.kv_put("mode", "a", None)
    assert store.kv_get("mode", "a") is None


def test_a_schema_1_database_with_data_is_migrated_and_keeps_its_data(tmp_path, clock) -> None:
    """Data written under schema 1 (meta, attachments, leases) survives the migration to the current schema."""
    path = tmp_path / "old.db"
    s = Store(path, clock=clock)
    s.set_meta("ran_mode", "shared_eni")
    s.begin_attachment(request=_req("old1"), network="terway", pod=PodRef("ns", "p"), netns="/n", mode="shared_eni")
    assert s.lease("pool", iter(["10.0.0.5"]), "old1/eth0", pod="ns/p") == "10.0.0.5"
    s.close()
    # turn it into what an agent of schema 1 left behind: its tables, its data, user_version 1
    v1 = sqlite3.connect(":memory:")
    v1.executescript(_MIGRATIONS[1])
    v1_tables = {r[0] for r in v1.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db = sqlite3.connect(path)
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        if table not in v1_tables:
            db.execute(f"DROP TABLE {table}")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    s = Store(path, clock=clock)
    assert s.schema_version == SCHEMA_VERSION
    assert s.get_meta("ran_mode") == "shared_eni"
    assert [a.container_id for a in s.attachments()] == ["old1"]
    assert s.lease("pool", iter(["10.0.0.6"]), "old1/eth0", pod="ns/p") == "10.0.0.5"  # same owner, same address
    s.close()
