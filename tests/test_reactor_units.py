"""A reactor's unit of work (issue 19 point 1): each handled event's table writes, emitted events
and position commit together, in a transaction of their own, that holds the store's write lock only
from the handler's first write on. (The kill -9 test is tests/test_reactor_crash.py.)"""

from __future__ import annotations

import threading

import pytest

import eventsourcery as es
from tests import pg_support
from tests._util import WAIT, everything_in
from tests.processing_support import Ping, Pong


def pongs(store: es.EventStore) -> list[Pong]:
    return [e for e in everything_in(store) if isinstance(e, Pong)]


def run_until_caught_up(processor: es.EventStreamProcessor, store: es.EventStore,
                        latest: int) -> None:
    processor.subscribe_to(store, stop=lambda: processor.last_processed_event_id >= latest)


class LoggingPonger(es.Reactor):
    """Logs each Ping in its table and answers it; then fails on the pings in ``fail_after``."""

    processor_name = "unit_ponger"
    emits_events = (Pong,)
    schema = "CREATE TABLE IF NOT EXISTS unit_log (event_id INTEGER NOT NULL, n INTEGER NOT NULL)"
    fail_after: set[int] = set()

    @es.on(Ping)
    def _ping(self, event: Ping) -> None:
        p = self.placeholder
        self.db.execute(f"INSERT INTO unit_log (event_id, n) VALUES ({p}, {p})",
                        (event.id, event.n))
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id))
        if event.n in self.fail_after:
            raise RuntimeError("fails after logging and answering")


def logged(reactor: es.Reactor) -> list[int]:
    rows = reactor.database.fetch_all("SELECT event_id FROM unit_log ORDER BY event_id")
    return [row[0] for row in rows]


@pytest.mark.parametrize("commit_interval", [0.0, 60.0], ids=["each-event", "grouped"])
def test_a_failing_event_rolls_back_its_writes_and_emissions_and_the_ones_before_commit(
        store, commit_interval):
    """Each event in a unit of its own, or (grouped) the whole batch in one transaction, a savepoint
    per event after the first: either way the failing event alone rolls back."""
    pings = [store.sink(Ping(aggregate_id=f"p{n}", n=n))[0] for n in range(1, 5)]
    r = LoggingPonger(store)
    r.commit_interval = commit_interval
    r.fail_after = {3}
    with pytest.raises(es.EventProcessingError) as info:
        run_until_caught_up(r, store, latest=pings[-1].id)
    assert info.value.event.id == pings[2].id
    assert logged(r) == [1, 2]  # ping 3's row rolled back with its pong and its position
    assert [p.ping_id for p in pongs(store)] == [1, 2]
    assert store.tracker().last_processed_event_id("unit_ponger") == 2
    r.fail_after = set()
    run_until_caught_up(r, store, latest=store.latest_event_id())
    assert logged(r) == [1, 2, 3, 4]  # each row once
    assert [p.ping_id for p in pongs(store)] == [1, 2, 3, 4]


class Waiter(es.Reactor):
    """Waits on the outside world (two threading.Events) before it writes its table, then emits."""

    processor_name = "unit_waiter"
    emits_events = (Pong,)
    schema = "CREATE TABLE IF NOT EXISTS unit_waited (event_id INTEGER NOT NULL)"
    entered = threading.Event()
    go_on = threading.Event()

    @es.on(Ping)
    def _ping(self, event: Ping) -> None:
        type(self).entered.set()
        assert type(self).go_on.wait(WAIT), "never told to go on"
        self.db.execute(f"INSERT INTO unit_waited VALUES ({self.placeholder})", (event.id,))
        self.emit_event(Pong(aggregate_id="pong", ping_id=event.id))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_handler_waiting_before_its_first_write_holds_no_write_lock(kind, tmp_path):
    """Another store object (another connection, as another process would have) sinks while the
    reactor's handler waits; with a short busy_timeout / lock_timeout it would fail if the handler
    held the store's write lock."""
    if kind == "sqlite":
        target = str(tmp_path / "events.db")
        store = es.SQLiteEventStore(target)
        other = es.SQLiteEventStore(target, busy_timeout=0.5)
    else:
        import eventsourcery_pg as es_pg

        url, schema = pg_support.require_postgres(), pg_support.new_schema()
        store = es_pg.PostgresEventStore(url, schema=schema)
        other = es_pg.PostgresEventStore(url, schema=schema, lock_timeout=0.5)
    Waiter.entered.clear()
    Waiter.go_on.clear()
    ping = store.sink(Ping(aggregate_id="p1", n=1))[0]
    reactor = Waiter(store)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            reactor.subscribe_to(store, stop=stop)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert Waiter.entered.wait(WAIT), "the handler never ran"
        other.sink([Ping(aggregate_id="p2", n=2)])  # while the handler waits: no lock to wait for
        Waiter.go_on.set()
        assert reactor.wait_for(store.latest_event_id(), timeout=WAIT)
    finally:
        Waiter.go_on.set()
        stop.set()
        thread.join(WAIT)
        other.close()
    assert not thread.is_alive() and not failures, failures
    assert [p.ping_id for p in pongs(store)] == [ping.id, 2]
    rows = reactor.database.fetch_all("SELECT event_id FROM unit_waited ORDER BY 1")
    assert [r[0] for r in rows] == [1, 2]
    store.close()
