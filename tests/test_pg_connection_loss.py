"""Connection loss on Postgres (SPEC 2), on a private cluster this module may restart (never the
shared server): a connection found dead before anything is sent is opened again without an error
(one that dies just as a read or a BEGIN is sent: that is run again on a new connection), and a sink
interrupted by a lost connection is resolved by its events' uuids: the caller sees success once, or
a StoreError and nothing stored, never a duplicate.

Each step of a sink is hit: idle before it (backend terminated, server restarted), parked on the
store's write lock (held by another session) when the backend is terminated or the server restarts,
and after the server committed but before the answer arrived (the connection's execute patched).
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

import eventsourcery as es
from tests.events import ItemAdded
from tests.pg_cluster import in_ci, private_cluster

if in_ci():
    import psycopg
else:
    psycopg = pytest.importorskip("psycopg")

import eventsourcery_pg as es_pg  # noqa: E402

__all__ = ["private_cluster"]

BOUND = 20.0  # seconds; reached only when something hangs


@pytest.fixture
def cluster(private_cluster):
    private_cluster.ensure_running()
    return private_cluster


_schemas = iter(range(10**6))


@pytest.fixture
def store(cluster):
    s = es_pg.PostgresEventStore(cluster.url, schema=f"loss_{next(_schemas)}",
                                 reconnect_timeout=BOUND)
    yield s
    s.close()


def item(title: str = "t") -> ItemAdded:
    return ItemAdded(aggregate_id="agg", title=title)


def stored_titles(cluster, store) -> list[str]:
    return [row[0] for row in cluster.execute('SELECT body->>\'title\' FROM '
                                              f'"{store.schema}".events ORDER BY id')]


def write_lock_holder(cluster, store):
    """A session holding the store's write lock (a transaction-scoped advisory lock), so sinks
    park."""
    conn = cluster.connect(application_name="lock holder")
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (es_pg._advisory_key("write", store.schema),))
    return conn


def sink_in_thread(store, event):
    result: dict[str, object] = {}

    def run():
        try:
            result["stored"] = store.sink(event)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait_until_parked(cluster) -> None:
    deadline = time.monotonic() + BOUND
    while not cluster.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                              "AND wait_event = 'advisory' AND application_name = 'eventsourcery'",
                              dbname="test"):
        assert time.monotonic() < deadline, "the sink never waited for the write lock"
        time.sleep(0.01)


# --- found dead before anything is sent: opened again, no error --------------------------------


@pytest.mark.parametrize("fault", ["terminate", "restart"])
def test_first_sink_and_read_after_the_connection_died_idle_succeed(cluster, store, fault):
    store.sink(item("before"))
    if fault == "terminate":
        cluster.terminate_backends("eventsourcery")
    else:
        cluster.restart()
    [stored] = store.sink(item("after"))  # the first request after the fault
    assert stored.id == 2
    cluster.terminate_backends("eventsourcery")
    assert [e.title for e in store.get_next_from(1)] == ["before", "after"]
    cluster.terminate_backends("eventsourcery")
    assert store.latest_event_id() == 2
    cluster.terminate_backends("eventsourcery")
    assert store.aggregate_version("agg") == 2
    cluster.terminate_backends("eventsourcery")
    assert len(store.get_events_for_aggregate_id("agg")) == 2


def dies_before_its_next_statement(cluster, store, monkeypatch) -> None:
    """End the store's session so that the check made before a statement still finds it alive (the
    server's farewell arrives just after the check): the statement itself meets the lost
    connection."""
    store.latest_event_id()  # this thread's connection is open
    monkeypatch.setattr(type(store.database), "_connection_usable",
                        lambda self, conn: not conn.closed)
    cluster.terminate_backends("eventsourcery")


READS = {
    "get_next_from": lambda store: [e.title for e in store.get_next_from(1)] == ["before"],
    "latest_event_id": lambda store: store.latest_event_id() == 1,
    "aggregate_version": lambda store: store.aggregate_version("agg") == 1,
    "get_events_for_aggregate_id": lambda store: len(store.get_events_for_aggregate_id("agg")) == 1,
    "snapshots": lambda store: store.snapshots("agg") == [],
    "is_running": lambda store: store.is_running("p") is False,
    "tracker.record": lambda store: store.tracker().record("p").position == 1,
    "tracker.last_processed_event_id": lambda store: store.tracker().last_processed_event_id("p")
        == 1,
}


@pytest.mark.parametrize("read", list(READS))
def test_a_read_whose_connection_dies_just_before_it_is_read_again_on_a_new_connection(
        cluster, store, read, monkeypatch):
    store.sink(item("before"))
    store.tracker().processed_event("p", 1)
    dies_before_its_next_statement(cluster, store, monkeypatch)
    assert READS[read](store)
    assert store.sink(item("after"))[0].id == 2
    assert stored_titles(cluster, store) == ["before", "after"]


def test_a_transaction_whose_connection_dies_just_before_begin_begins_on_a_new_connection(
        cluster, store, monkeypatch):
    store.sink(item("before"))
    dies_before_its_next_statement(cluster, store, monkeypatch)
    with store.transaction():
        store.sink(item("inside"))
    assert stored_titles(cluster, store) == ["before", "inside"]


def test_a_read_whose_connection_dies_again_on_the_new_one_is_a_store_error(cluster, store):
    store.sink(item("before"))
    conn = store.connection
    real_execute = conn.execute
    open_connection = store.database._create_connection

    def terminate_first(query, params=None, **kw):
        cluster.terminate_backends("eventsourcery")
        return real_execute(query, params, **kw)

    def dying_connection():
        new = open_connection()
        execute = new.execute

        def terminate_first_on_it(query, params=None, **kw):
            cluster.terminate_backends("eventsourcery")
            return execute(query, params, **kw)

        new.execute = terminate_first_on_it
        return new

    conn.execute = terminate_first
    store.database._create_connection = dying_connection
    with pytest.raises(es.StoreError, match="lost the connection") as excinfo:
        store.get_next_from(1)
    assert isinstance(excinfo.value.__cause__, psycopg.OperationalError)
    store.database._create_connection = open_connection
    assert store.sink(item("after"))[0].id == 2  # on a new connection, outside any transaction
    assert stored_titles(cluster, store) == ["before", "after"]


def test_a_read_inside_a_transaction_whose_connection_dies_is_a_store_error_and_nothing_is_stored(
        cluster, store, monkeypatch):
    store.sink(item("before"))
    with pytest.raises(es.StoreError, match="lost the connection"), store.transaction():
        store.sink(item("inside"))
        cluster.terminate_backends("eventsourcery")
        # never read again elsewhere: it would not see the transaction's sink
        store.get_next_from(1)
    assert store.sink(item("after"))[0].id == 2
    assert stored_titles(cluster, store) == ["before", "after"]


# --- interrupted while parked on the write lock: not stored, a clear StoreError -------------------


@pytest.mark.parametrize("fault", ["terminate", "restart"])
def test_sink_interrupted_while_waiting_for_the_write_lock_raises_and_stores_nothing(
        cluster, store, fault):
    store.sink(item("before"))
    holder = write_lock_holder(cluster, store)
    thread, result = sink_in_thread(store, item("interrupted"))
    try:
        wait_until_parked(cluster)
        if fault == "terminate":
            cluster.terminate_backends("eventsourcery")
        else:
            cluster.restart()  # ends every session, the lock holder's too
        thread.join(BOUND)
        assert not thread.is_alive()
    finally:
        holder.close()
    error = result.get("error")
    assert isinstance(error, es.StoreError) and "not stored" in str(error), result
    assert isinstance(error.__cause__, psycopg.OperationalError)
    assert stored_titles(cluster, store) == ["before"]
    [again] = store.sink(item("again"))  # the store works on
    assert again.id == 2


def test_sink_inside_a_transaction_whose_connection_dies_raises_and_stores_nothing(cluster, store):
    store.sink(item("before"))
    with pytest.raises(es.StoreError):
        with store.transaction():
            store.sink(item("first in transaction"))
            cluster.terminate_backends("eventsourcery")
            store.sink(item("second in transaction"))
    assert stored_titles(cluster, store) == ["before"]
    assert store.sink(item("after"))[0].id == 2


# --- a transaction whose COMMIT lost its answer: resolved by the uuids of the events it stored ----


def lose_at_commit(cluster, store, *, after_commit: bool):
    """Make the store's connection lose its COMMIT: after the server committed, or before it was
    sent."""
    conn = store.connection
    real_execute = conn.execute

    def execute(query, params=None, **kw):
        if str(query) == "COMMIT":
            if after_commit:
                real_execute(query, params, **kw)
            cluster.terminate_backends("eventsourcery")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_execute(query, params, **kw)

    conn.execute = execute


def test_a_transaction_whose_commit_answer_is_lost_after_it_committed_succeeds_once(cluster, store):
    store.sink(item("before"))
    lose_at_commit(cluster, store, after_commit=True)
    with store.transaction():
        first = store.sink(item("in transaction 1"))
        second = store.sink(ItemAdded(aggregate_id="other", title="in transaction 2"))
    assert stored_titles(cluster, store) == ["before", "in transaction 1", "in transaction 2"]
    assert store.get_next_from(2) == first + second
    assert store.sink(item("after"))[0].id == 4  # on a new connection


def test_a_transaction_whose_commit_never_reached_the_server_says_it_was_not_committed(
        cluster, store):
    store.sink(item("before"))
    lose_at_commit(cluster, store, after_commit=False)
    with pytest.raises(es.StoreError, match="it was not committed") as caught:
        with store.transaction():
            store.sink(item("lost 1"))
            store.sink(item("lost 2"))
    assert not isinstance(caught.value, es.CorruptEventError)
    assert stored_titles(cluster, store) == ["before"]
    assert store.sink(item("after"))[0].id == 2


def test_events_of_a_rolled_back_savepoint_do_not_count_when_a_lost_commit_is_resolved(
        cluster, store):
    lose_at_commit(cluster, store, after_commit=True)
    with store.transaction():
        kept = store.sink(item("kept"))
        with contextlib.suppress(RuntimeError), store.transaction():
            store.sink(item("rolled back with its savepoint"))
            raise RuntimeError("undo the inner block")
    # resolved as committed, not as a partial write
    assert stored_titles(cluster, store) == ["kept"]
    assert store.get_next_from(1) == kept


def test_a_lost_commit_of_a_transaction_that_stored_no_events_says_it_does_not_know(cluster, store):
    store.sink(item("before"))
    lose_at_commit(cluster, store, after_commit=True)
    with pytest.raises(es.StoreError, match="not known"):
        with store.transaction() as conn:
            conn.execute(f'UPDATE "{store.schema}".events SET correlation_id = NULL WHERE false')


# --- lost after the server committed: the stored copies, exactly once --------------------------


def test_sink_whose_connection_dies_after_the_commit_returns_the_stored_copies_once(cluster, store):
    store.sink(item("before"))
    conn = store.connection
    real_execute = conn.execute

    def execute_then_lose(query, params=None, **kw):
        cursor = real_execute(query, params, **kw)
        # committed (autocommit): now lose the answer
        if "eventsourcery_write_events" in str(query):
            cluster.terminate_backends("eventsourcery")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cursor

    conn.execute = execute_then_lose
    events = [item("committed 1"), item("committed 2")]
    stored = store.sink(events)
    assert [(e.id, e.version, e.uuid) for e in stored] == [(2, 2, events[0].uuid),
                                                           (3, 3, events[1].uuid)]
    assert store.get_next_from(2) == stored
    assert stored_titles(cluster, store) == ["before", "committed 1", "committed 2"]


def test_sink_whose_connection_dies_before_the_statement_reaches_the_server_is_not_stored(
        cluster, store):
    store.sink(item("before"))
    conn = store.connection

    def lose(query, params=None, **kw):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    conn.execute = lose
    with pytest.raises(es.StoreError, match="not stored"):
        store.sink(item("lost"))
    assert stored_titles(cluster, store) == ["before"]


def test_sink_that_cannot_reconnect_to_resolve_says_it_does_not_know(cluster):
    store = es_pg.PostgresEventStore(cluster.url, schema=f"loss_{next(_schemas)}",
                                     reconnect_timeout=0.5)
    try:
        store.sink(item("before"))
        conn = store.connection

        def lose_and_stop(query, params=None, **kw):
            cluster.stop("immediate")
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        conn.execute = lose_and_stop
        with pytest.raises(es.StoreError, match="whether they were stored"):
            store.sink(item("unknown"))
    finally:
        cluster.ensure_running()
        store.close()
