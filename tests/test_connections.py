"""Bounded connections (SPEC 5): a store object lends its threads at most ``max_connections``
connections (SQLite: its reader connections, beside the one writer; Postgres: every connection for
reads, writes and transactions); a thread that finds them all in use waits up to
``connection_timeout`` seconds, then gets es.StoreError saying so. Bad arguments fail at
construction.

The Postgres runs with many threads, counted in pg_stat_activity on a private server, are in
tests/test_connections_pg.py.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid

import pytest

import eventsourcery as es
from tests.events import ItemAdded

BOUND = 30.0  # seconds any one wait may take; reached only when something hangs


def _sqlite_file_handles(path: str) -> int:
    """How many open file descriptors of this process are the database file (one per connection)."""
    path = os.path.abspath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                count += 1
        except OSError:  # closed meanwhile
            pass
    return count


# --- bad arguments --------------------------------------------------------------------------------


def _sqlite(tmp_path, **options):
    return es.SQLiteEventStore(tmp_path / "events.db", **options)


def _open_store(tmp_path, **options):
    return es.open_store(str(tmp_path / "events.db"), **options)


def _open_memory(tmp_path, **options):
    return es.open_store("memory:", **options)


def _open_database(tmp_path, **options):
    return es.open_database(str(tmp_path / "projection.db"), **options)


def _postgres(tmp_path, **options):
    es_pg = pytest.importorskip("eventsourcery_pg")
    # the arguments are checked before anything connects: no server is needed (nor reached) here
    return es_pg.PostgresEventStore("postgresql://nobody@127.0.0.1:1/none", **options)


CONSTRUCTORS = [_sqlite, _open_store, _open_memory, _open_database, _postgres]


@pytest.mark.parametrize("construct", CONSTRUCTORS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize(("options", "error", "words"), [
    ({"max_connections": 0}, ValueError, "max_connections must be at least 1"),
    ({"max_connections": -3}, ValueError, "max_connections must be at least 1"),
    ({"max_connections": 2.0}, TypeError, "max_connections must be an int"),
    ({"max_connections": "10"}, TypeError, "max_connections must be an int"),
    ({"max_connections": True}, TypeError, "max_connections must be an int"),
    ({"max_connections": None}, TypeError, "max_connections must be an int"),
    ({"connection_timeout": -1}, ValueError,
     "connection_timeout must be a number of seconds, 0 or more"),
    ({"connection_timeout": math.nan}, ValueError, "not NaN"),
    ({"connection_timeout": math.inf}, ValueError, "infinite"),
    ({"connection_timeout": "30"}, TypeError, "connection_timeout must be a number of seconds"),
    ({"connection_timeout": None}, TypeError, "connection_timeout must be a number of seconds"),
    ({"connection_timeout": False}, TypeError, "connection_timeout must be a number of seconds"),
])
def test_bad_connection_arguments_fail_at_construction(construct, options, error, words, tmp_path):
    with pytest.raises(error, match=words):
        construct(tmp_path, **options)
    assert not (tmp_path / "events.db").exists()  # nothing was opened, nor created


# --- a thread that gets no connection in time (SQLite and Postgres: one contract) -----------------


class _Holders:
    """``count`` threads that each hold one of the store's connections (a ``reading()`` block) until
    ``release()``."""

    def __init__(self, store: es.EventStore, count: int) -> None:
        self.entered = threading.Barrier(count + 1, timeout=BOUND)
        self.go = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._hold, args=(store,)) for _ in range(count)]
        for thread in self.threads:
            thread.start()
        self.entered.wait()

    def _hold(self, store: es.EventStore) -> None:
        try:
            database = store.database
            assert database is not None
            with database.reading() as conn:
                assert conn is not None
                self.entered.wait()
                assert self.go.wait(BOUND)
        except BaseException as exc:  # reported by release()
            self.errors.append(exc)
            self.entered.abort()

    def release(self) -> None:
        self.go.set()
        for thread in self.threads:
            thread.join(BOUND)
            assert not thread.is_alive()
        assert self.errors == []


@pytest.fixture(params=["sqlite", "postgres"])
def make_bounded(request, tmp_path):
    """Makes a store of each SQL kind with ``max_connections=2`` and the given
    ``connection_timeout``, opened by URL, and a function counting its open connections (SQLite:
    readers and writer, as file handles of this process; Postgres: sessions under the store's own
    application_name, in pg_stat_activity), and how many connections beside the bounded ones it may
    have."""
    made = []

    def make(timeout: float):
        store, count, extra = _bounded(request, tmp_path, timeout)
        made.append(store)
        return store, count, extra
    yield make
    for store in made:
        store.close()


def _bounded(request, tmp_path, timeout):
    if request.param == "sqlite":
        path = str(tmp_path / "events.db")
        store = es.open_store(path, max_connections=2, connection_timeout=timeout)

        def count() -> int:
            return _sqlite_file_handles(path)
        extra = 1  # the writer, beside the readers the bound counts
    else:
        from tests.pg_support import connect, new_schema, store_url

        name = f"es_bound_{uuid.uuid4().hex[:12]}"
        store = es.open_store(store_url(new_schema()) + f"&application_name={name}",
                              max_connections=2, connection_timeout=timeout)
        admin = connect()
        request.addfinalizer(admin.close)

        def count() -> int:
            return (admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                  "%s", (name,)).fetchone()[0])
        extra = 0
    return store, count, extra


def _in_thread(fn):
    """``fn()`` run in a new thread (one that has not written: on SQLite the thread that wrote last
    reads on the writer while nobody uses it); its result, or the exception it raised."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive()
    return out[0]


def test_a_thread_that_finds_every_connection_busy_waits_then_gets_a_store_error_saying_so(
        make_bounded):
    store, count, extra = make_bounded(0.3)
    store.sink(ItemAdded(aggregate_id="a", title="first"))
    holders = _Holders(store, 2)  # both connections the store may lend are now in use
    try:
        started = time.monotonic()
        caught = _in_thread(lambda: store.get_next_from(1))
        waited = time.monotonic() - started
        assert isinstance(caught, es.StoreError), caught
        message = str(caught)
        for words in ("max_connections=2", "connection_timeout=0.3", "all 2 connections",
                      "stayed in use", "raise max_connections"):
            assert words in message
        assert waited >= 0.3  # it waited for one first
        assert count() <= 2 + extra
    finally:
        holders.release()
    # a connection given back is lent again: the same read now succeeds, and nothing leaked
    assert [e.title for e in _in_thread(lambda: store.get_next_from(1))] == ["first"]
    assert count() <= 2 + extra
    store.close()
    assert _settled(count) == 0


def _settled(count) -> int:
    """``count()`` once closed connections are gone (a Postgres backend exits a moment after its
    client hangs up): 0 as soon as it is, else the count after a while."""
    deadline = time.monotonic() + 10
    while (now := count()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


def test_a_thread_waiting_for_a_connection_gets_the_first_one_given_back(make_bounded):
    store, count, extra = make_bounded(BOUND)
    store.sink(ItemAdded(aggregate_id="a", title="first"))
    holders = _Holders(store, 2)
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append([e.title for e in store.get_next_from(1)])
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=read)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and outcome == []  # waiting: both connections are held
    holders.release()  # the first connection given back goes to it
    waiter.join(BOUND)
    assert outcome == [["first"]]
    assert count() <= 2 + extra


# --- SQLite: the readers' bound holds with many threads -------------------------------------------


@pytest.mark.parametrize("max_connections", [3, 10])
def test_sqlite_readers_stay_within_max_connections_with_many_threads(tmp_path, max_connections):
    path = str(tmp_path / "events.db")
    # 10: the default
    kwargs = {} if max_connections == 10 else {"max_connections": max_connections}
    store = es.SQLiteEventStore(path, **kwargs)
    threads_count, rounds = 40, 5
    most = 0
    done = threading.Event()
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count, timeout=BOUND)

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, _sqlite_file_handles(path))
            time.sleep(0.001)

    def work(i: int) -> None:
        try:
            start.wait()
            for k in range(rounds):
                store.sink(ItemAdded(aggregate_id=f"a{i}", title=f"{i}.{k}"), expected_version=k)
                assert [e.title
                        for e in store.get_events_for_aggregate_id(f"a{i}")][-1] == f"{i}.{k}"
                store.get_next_from(1, limit=50)
                store.latest_event_id()
        except BaseException as exc:
            errors.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(BOUND * 2)
            assert not worker.is_alive()
    finally:
        done.set()
        sampler.join(BOUND)
    assert errors == []
    events = store.get_next_from(1, limit=10_000)
    assert sorted(e.title for e in events) == sorted(f"{i}.{k}" for i in range(threads_count)
                                                     for k in range(rounds))
    assert 2 <= most <= max_connections + 1  # the readers, and the one writer beside them
    store.close()
    assert _sqlite_file_handles(path) == 0
