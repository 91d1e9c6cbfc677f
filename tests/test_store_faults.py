"""What operators meet, on every store: no raw driver exception leaves a store (SPEC 2).

A lock wait that timed out, a full disk, a damaged file or a connection
closed behind the store's back is an ``es.StoreError`` (a damaged file an
``es.CorruptEventError``) with the driver's exception as ``__cause__``, and
nothing is written. Full disks and read-only filesystems are small tmpfs
mounts made by the test (as root); where mounting is impossible the test is
skipped, except with CI=true, where that fails.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess

import pytest

import eventsourcery as es
from tests.events import ItemAdded
from tests.pg_cluster import in_ci
from tests.pg_support import connect, postgres_store


def item(aggregate_id: str = "agg", title: str = "t") -> ItemAdded:
    return ItemAdded(aggregate_id=aggregate_id, title=title)


def assert_store_error(excinfo: pytest.ExceptionInfo, driver: type[BaseException],
                       kind=es.StoreError) -> None:
    assert isinstance(excinfo.value, kind), excinfo.value
    assert isinstance(excinfo.value.__cause__, driver), repr(excinfo.value.__cause__)


@contextlib.contextmanager
def tmpfs(directory, size: str = "1m"):
    """A small tmpfs mounted at ``directory`` (made) for the block; unmounted afterwards."""
    os.makedirs(directory, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs at {directory} (needs root): {done.stderr.strip()}"
        if in_ci():
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


def remount(directory, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(directory)], check=True,
                   capture_output=True, timeout=30)


# --- SQLite ---------------------------------------------------------------------------------------


def test_sqlite_lock_wait_that_times_out_is_a_store_error(tmp_path):
    path = tmp_path / "e.db"
    store = es.SQLiteEventStore(path, busy_timeout=0.05)
    store.sink(item())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the write lock
    try:
        with pytest.raises(es.StoreError, match="locked") as excinfo:
            store.sink(item(title="late"))
        assert_store_error(excinfo, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [e.title for e in store.get_next_from(1)] == ["t"]
    store.sink(item(title="later"))  # the store is usable again
    store.close()


def test_sqlite_closed_connection_is_a_store_error_from_every_method(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "e.db")
    store.sink(item())
    calls = {
        "sink": lambda: store.sink(item()),
        "get_next_from": lambda: store.get_next_from(1),
        "latest_event_id": lambda: store.latest_event_id(),
        "get_events_for_aggregate_id": lambda: store.get_events_for_aggregate_id("agg"),
        "aggregate_version": lambda: store.aggregate_version("agg"),
        "each_by_range": lambda: list(store.each_by_range(1, 10)),
        "subscribe": lambda: next(store.subscribe(1, stop=lambda: False)),
        "stats": lambda: store.stats(),
        "transaction": lambda: store.transaction().__enter__(),
    }
    # reads outside a transaction go to the thread's reader connection
    writes = {"sink", "transaction"}
    for name, call in calls.items():
        store.connection.close()  # the writer closed behind the store's back
        try:
            call()
        except es.StoreError as exc:
            assert isinstance(exc.__cause__, sqlite3.Error), name
        else:
            assert name not in writes, name
    store.close()
    with es.SQLiteEventStore(tmp_path / "e.db") as again:  # a new connection works
        assert again.latest_event_id() == 1


def test_sqlite_full_disk_is_a_store_error_and_writes_nothing(tmp_path):
    with tmpfs(tmp_path / "small", "600k") as directory:
        store = es.SQLiteEventStore(directory / "e.db")
        stored: list[es.Event] = []
        failed = None
        for n in range(1000):  # bounded: 600 kB hold far fewer than 1000 events of 4 kB
            event = item(title=f"{n}" + "x" * 4000)
            try:
                stored += store.sink(event)
            except es.StoreError as exc:
                failed = (event, exc)
                break
        assert failed is not None, "the disk never filled"
        event, exc = failed
        assert "full" in str(exc)
        assert isinstance(exc.__cause__, sqlite3.Error)
        assert [e.uuid for e in store.get_next_from(1, limit=2000)] == [e.uuid for e in stored]
        store.close()


def _damaged_store(path) -> None:
    with es.SQLiteEventStore(path) as store:
        for n in range(20):
            store.sink([item(f"agg-{n}", "x" * 500) for _ in range(20)])
    size = os.path.getsize(path)
    pages = size // 4096
    assert pages > 20
    with open(path, "r+b") as f:  # garbage over the middle pages
        for page in range(2, pages - 2):
            f.seek(page * 4096)
            f.write(os.urandom(4096))


def test_sqlite_damaged_file_is_a_corrupt_event_error(tmp_path):
    path = tmp_path / "e.db"
    _damaged_store(path)
    store = es.SQLiteEventStore(path)
    with pytest.raises(es.CorruptEventError) as excinfo:
        list(store.each_by_range(1, 1000))
    assert isinstance(excinfo.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(es.CorruptEventError):
        store.sink(item("agg-new"))
    store.close()


def test_sqlite_file_that_is_not_a_database_is_a_corrupt_event_error(tmp_path):
    path = tmp_path / "e.db"
    with es.SQLiteEventStore(path) as store:
        store.sink(item())
    with open(path, "r+b") as f:
        f.write(os.urandom(4096))  # the header page
    with pytest.raises(es.CorruptEventError) as excinfo:
        es.SQLiteEventStore(path)
    assert isinstance(excinfo.value.__cause__, sqlite3.DatabaseError)


# --- Postgres (the shared server; nothing is restarted here) --------------------------------------


def test_postgres_lock_wait_that_times_out_is_a_store_error(tmp_path):
    import psycopg

    store = postgres_store(lock_timeout=0.05)
    store.sink(item())
    holder = connect()
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_write_lock_key(store),))
        with pytest.raises(es.StoreError,
                           match=r"waited longer than lock_timeout \(0.05 s\)") as excinfo:
            store.sink(item(title="late"))
        assert_store_error(excinfo, psycopg.OperationalError)
    finally:
        holder.close()
    assert [e.title for e in store.get_next_from(1)] == ["t"]
    store.sink(item(title="later"))
    store.close()


def _write_lock_key(store) -> int:
    import eventsourcery_pg as es_pg

    return es_pg._advisory_key("write", store.schema)


def test_postgres_failed_statement_is_a_store_error_from_every_method():
    import psycopg

    store = postgres_store()
    store.sink(item())
    with connect() as other:
        # dropped behind the store's back
        other.execute(f'DROP TABLE "{store.schema}".events CASCADE')
    calls = {
        "sink": lambda: store.sink(item()),
        "get_next_from": lambda: store.get_next_from(1),
        "latest_event_id": lambda: store.latest_event_id(),
        "get_events_for_aggregate_id": lambda: store.get_events_for_aggregate_id("agg"),
        "aggregate_version": lambda: store.aggregate_version("agg"),
        "each_by_range": lambda: list(store.each_by_range(1, 10)),
        "subscribe": lambda: next(store.subscribe(1, stop=lambda: False)),
    }
    for name, call in calls.items():
        with pytest.raises(es.StoreError) as excinfo:
            call()
        assert isinstance(excinfo.value.__cause__, psycopg.Error), name
    store.close()


# --- SQLite: read-only stores, and files deleted or replaced while open ---------------------------


def _store_with_one_event(path) -> None:
    with es.SQLiteEventStore(path) as store:
        store.sink(item(title="kept"))


def _assert_read_only(path) -> None:
    store = es.SQLiteEventStore(path)
    try:
        assert store.database.read_only
        assert [e.title for e in store.get_next_from(1)] == ["kept"]
        assert store.aggregate_version("agg") == 1
        assert store.stats()["events"] == 1
        with pytest.raises(es.StoreError, match="read-only"):
            store.sink(item(title="refused"))
        with pytest.raises(es.StoreError, match="read-only"):
            with store.transaction():
                pass
        assert store.latest_event_id() == 1
    finally:
        store.close()


def test_sqlite_store_on_a_read_only_filesystem_can_be_read_and_refuses_writes(tmp_path):
    with tmpfs(tmp_path / "ro") as directory:
        _store_with_one_event(directory / "e.db")
        remount(directory, "ro")
        _assert_read_only(directory / "e.db")


def test_sqlite_store_in_an_immutable_file_can_be_read_and_refuses_writes(tmp_path):
    path = tmp_path / "e.db"
    _store_with_one_event(path)
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:  # the filesystem has no immutable flag: a read-only bind mount instead
        with tmpfs(tmp_path / "ro") as directory:
            _store_with_one_event(directory / "e.db")
            view = tmp_path / "view"
            view.mkdir()
            subprocess.run(["mount", "--bind", str(directory), str(view)], check=True, timeout=30)
            try:
                subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True,
                               timeout=30)
                _assert_read_only(view / "e.db")
            finally:
                subprocess.run(["umount", "-l", str(view)], timeout=30)
        return
    try:
        _assert_read_only(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True, timeout=30)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_sqlite_store_file_deleted_or_replaced_while_open_refuses_the_next_write(tmp_path, how):
    path = tmp_path / "e.db"
    store = es.SQLiteEventStore(path)
    store.sink(item(title="before"))
    if how == "deleted":
        os.remove(path)
    else:
        other = tmp_path / "other.db"
        with es.SQLiteEventStore(other) as replacement:
            replacement.sink(item("other-agg", "replacement"))
        os.replace(other, path)
    refused = [item(title="never acknowledged"), item(title="never acknowledged either")]
    for event in refused:  # and on, until the store is opened again
        with pytest.raises(es.StoreError, match="deleted or replaced"):
            store.sink(event)
    store.close()
    if how == "replaced":
        with es.SQLiteEventStore(path) as reader:
            assert not {e.uuid for e in reader.get_next_from(1)} & {e.uuid for e in refused}
    else:
        assert not path.exists()  # not made again behind the operator's back
