"""Operating processors on Postgres (SPEC §4, issue 10): bounded lock waits, a reactor whose handler
writes through a second store object, sessions the server ends when idle, and projectors whose
position lives in a database of their own, listed by the store. Every wait is bounded."""

from __future__ import annotations

import threading
import time
import urllib.parse

import pytest

import eventsourcery as es
from tests._util import WAIT, everything_in, wait_until
from tests.pg_support import new_schema, postgres_store, require_postgres
from tests.processing_support import Ping, Tick
from tests.test_operating_processors import Background, CountingPonger, pongs_per_ping, sink_pings

es_pg = pytest.importorskip("eventsourcery_pg")


@pytest.fixture
def store(tmp_path):
    s = postgres_store(tmp_path)
    yield s
    s.close()


def test_a_write_waiting_longer_than_lock_timeout_raises_store_error_naming_the_holder(store):
    waiting = es_pg.PostgresEventStore(store.conninfo, schema=store.schema, lock_timeout=0.2)
    holding = threading.Event()
    release = threading.Event()

    def hold_the_write_lock():
        with store.transaction():
            store.sink(Tick(aggregate_id="holder"))
            holding.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold_the_write_lock, daemon=True)
    holder.start()
    try:
        assert holding.wait(WAIT)
        began = time.monotonic()
        with pytest.raises(es.StoreError) as caught:
            waiting.sink(Tick(aggregate_id="waiter"))
        assert time.monotonic() - began < WAIT  # bounded: it did not wait for the holder to finish
    finally:
        release.set()
        holder.join(WAIT)
    message = str(caught.value)
    assert "lock_timeout (0.2 s)" in message and "write lock" in message and "'waiter'" in message
    assert "server process" in message and "in a transaction for" in message  # who held it
    assert caught.value.__cause__ is not None
    assert [e.aggregate_id for e in everything_in(store)] == ["holder"]  # the waiter wrote nothing
    assert waiting.sink(Tick(aggregate_id="waiter"))[0].id == 2  # and the store works on
    waiting.close()


@pytest.mark.parametrize("bad", [0, -1, True, "5", float("nan")])
def test_lock_timeout_must_be_a_positive_number_of_seconds(store, bad):
    with pytest.raises(ValueError, match="lock_timeout"):
        es_pg.PostgresEventStore(store.conninfo, schema=store.schema, lock_timeout=bad)


def test_a_reactor_whose_handler_sinks_through_a_second_store_object_never_waits_for_itself(store):
    other = es_pg.PostgresEventStore(store.conninfo, schema=store.schema, lock_timeout=5)

    class Recorder(CountingPonger):
        processor_name = "recorder_through_other_store"

        @es.on(Ping)
        def _ping(self, event):
            super()._ping(event)  # emits a Pong, committed with the position
            # and writes through another object
            other.sink(Tick(aggregate_id=f"tick-{event.n}", n=event.n))

    sink_pings(store, 1, 30)
    reactor = Recorder(store)
    running = Background(reactor, store, es.NoRetry())
    assert wait_until(lambda: reactor.last_processed_event_id >= 30
                      or not running.thread.is_alive())
    running.finish()
    # no lock wait timed out: the reactor held no write lock in its handler
    assert running.error is None
    assert pongs_per_ping(store) == {n: 1 for n in range(1, 31)}
    assert sorted(e.n for e in everything_in(store) if isinstance(e, Tick)) == list(range(1, 31))
    other.close()


def _idle_sessions_end_after(url: str, milliseconds: int) -> str:
    """``url`` with every session it opens ended by the server after ``milliseconds`` idle."""
    options = urllib.parse.quote(f"-c idle_session_timeout={milliseconds}")
    return f"{url}{'&' if '?' in url else '?'}options={options}"


def test_sessions_ended_by_idle_session_timeout_fence_the_old_instance_and_lose_nothing(store):
    idle_url = _idle_sessions_end_after(require_postgres(), 700)

    class Ponger(CountingPonger):
        processor_name = f"idle_ponger_{store.schema}"[:50]

    def idle_store():
        return es_pg.PostgresEventStore(idle_url, schema=store.schema, poll_interval=0.2)

    first_store = idle_store()
    first = Background(Ponger(first_store), first_store, es.ConstantRetry(0.05))
    sink_pings(store, 1, 10)
    assert wait_until(lambda: first.processor.last_processed_event_id >= 10)
    second_store = idle_store()
    second = Background(Ponger(second_store), second_store, es.ConstantRetry(0.05))
    # the server ends the first instance's idle lock session; the standby takes the name
    assert wait_until(lambda: first.processor.tracker.record(Ponger.processor_name).generation == 2)
    sink_pings(store, 11, 40)
    assert wait_until(lambda: not first.thread.is_alive())  # fenced at its next commit
    assert isinstance(first.error, es.ProcessorFencedError)
    assert wait_until(lambda: second.processor.last_processed_event_id
                      >= store.latest_event_id([Ping]))
    time.sleep(1.0)  # the survivor's own sessions end too, while idle; it reconnects and goes on
    sink_pings(store, 41, 45)
    assert wait_until(lambda: second.processor.last_processed_event_id
                      >= store.latest_event_id([Ping]))
    second.finish()
    assert second.error is None
    assert pongs_per_ping(store) == {n: 1 for n in range(1, 46)}
    first_store.close()
    second_store.close()


class OwnSchemaCounter(es_pg.Projector):
    """Counts ticks in a schema of its own (its position lives there, not in the store's schema)."""

    processor_name = "own_schema_counter"
    schema = "CREATE TABLE IF NOT EXISTS tick_count (n INTEGER NOT NULL)"

    @es.on(Tick)
    def _tick(self, event):
        self.db.execute("INSERT INTO tick_count (n) VALUES (%s)", (event.n,))


def test_a_projector_with_its_own_postgres_schema_is_listed_by_the_store(store):
    own_schema = new_schema()
    projector = OwnSchemaCounter(require_postgres(), schema=own_schema)
    for n in range(3):
        store.sink(Tick(aggregate_id="t", n=n))
    running = Background(projector, store)
    assert projector.wait_for(3, timeout=WAIT)
    statuses = {s.name: s for s in es.processor_statuses(store)}
    status = statuses["own_schema_counter"]
    assert (status.kind, status.position, status.lag, status.running) == ("projector", 3, 0, True)
    (record,) = [r for r in store.tracker().records() if r.name == "own_schema_counter"]
    assert record.location == projector.database.location
    assert f"schema={own_schema}" in record.location and "password" not in record.location
    # the location opens the same database and schema in another process
    reopened = es.open_database(record.location)
    assert es.DatabaseTracker(reopened).last_processed_event_id("own_schema_counter") == 3
    reopened.close()
    running.finish()
    projector.close()


def test_a_projector_on_the_stores_own_schema_is_not_registered_elsewhere(store):
    projector = OwnSchemaCounter(store.conninfo, schema=store.schema)
    store.sink(Tick(aggregate_id="t", n=1))
    running = Background(projector, store)
    assert projector.wait_for(1, timeout=WAIT)
    running.finish()
    (record,) = [r for r in store.tracker().records() if r.name == "own_schema_counter"]
    assert record.location is None and record.position == 1  # its tracker row is the store's
    projector.close()


def test_the_location_names_no_password():
    db = es_pg.PostgresDatabase("postgresql://alice:secret@db.example:5433/app?schema=reports",
                                lock_timeout=None)
    assert "secret" not in db.location and "password" not in db.location
    assert es_pg.split_schema(db.location) == (
        "postgresql://?dbname=app&host=db.example&port=5433&user=alice", "reports")
