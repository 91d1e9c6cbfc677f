"""Event processing in one process: dispatch, errors, projectors, reactors, error handlers.

SPEC.md section 4 and issue 3 items 1-5 and 7. Trackers and the processor lock
are in test_tracker_and_lock_contract.py, run on every store. The multiprocess
runner is in test_runner.py; the processors used by other processes live in
tests/processing_support.py. Waits are bounded polls that only expire when
something hangs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

import pytest

import eventsourcery as es
from tests import processing_support as ps
from tests._util import WAIT, everything_in, wait_until
from tests.processing_support import Ping, Pong, Tick


class UnitA(es.Event, type="proctest.unit_a"):
    n: int = 0


class UnitB(es.Event, type="proctest.unit_b"):
    n: int = 0


class UnitC(es.Event, type="proctest.unit_c"):
    n: int = 0


def sink_each(store, events):
    """Sink events one by one (each may belong to another aggregate); return the stored copies."""
    return [store.sink(e)[0] for e in events]


def a(n=0, agg="agg-1", **kw):
    return UnitA(aggregate_id=agg, n=n, **kw)


def b(n=0, agg="agg-1", **kw):
    return UnitB(aggregate_id=agg, n=n, **kw)


def c(n=0, agg="agg-1", **kw):
    return UnitC(aggregate_id=agg, n=n, **kw)


def stored(*events):
    """Events as if read from a store (ids 1, 2, ...), without a store."""
    store = es.MemoryEventStore()
    return sink_each(store, events)


def run_until_caught_up(processor, store, *, latest=None):
    """subscribe_to in this thread until the processor's position reaches ``latest`` (default: the
    store's)."""
    target = store.latest_event_id() if latest is None else latest
    processor.subscribe_to(store, stop=lambda: processor.last_processed_event_id >= target)


# --- 1. dispatch ----------------------------------------------------------------------------------


class Recorder(es.EventStreamProcessor):
    def __init__(self, tracker=None):
        super().__init__(tracker)
        self.calls = []


def test_several_handlers_per_type_run_in_definition_order():
    class Multi(Recorder):
        @es.on(UnitA)
        def first(self, event):
            self.calls.append(("first", event.type))

        @es.on(UnitA, UnitB)
        def second(self, event):
            self.calls.append(("second", event.type))

        @es.on(UnitB)
        def third(self, event):
            self.calls.append(("third", event.type))

    p = Multi()
    ea, eb, ec = stored(a(), b(), c())
    p.process(ea)
    assert p.calls == [("first", "proctest.unit_a"), ("second", "proctest.unit_a")]
    p.calls.clear()
    p.process(eb)
    assert p.calls == [("second", "proctest.unit_b"), ("third", "proctest.unit_b")]
    p.calls.clear()
    p.process(ec)  # no handler, no catch-all: ignored
    assert p.calls == []


def test_handlers_accept_type_names_as_strings():
    class ByName(Recorder):
        @es.on("proctest.unit_b")
        def _b(self, event):
            self.calls.append(event.n)

    p = ByName()
    for e in stored(a(1), b(2)):
        p.process(e)
    assert p.calls == [2]
    assert ByName.processes_event_types == ("proctest.unit_b",)


def test_inherited_handlers_run_base_class_first():
    class Base(Recorder):
        @es.on(UnitA)
        def base_a(self, event):
            self.calls.append("base_a")

        @es.on(UnitB)
        def base_b(self, event):
            self.calls.append("base_b")

    class Child(Base):
        @es.on(UnitA)
        def child_a(self, event):
            self.calls.append("child_a")

        @es.on(UnitC)
        def base_b(self, event):  # same name: replaces the inherited handler
            self.calls.append("child_c")

    p = Child()
    for e in stored(a(), b(), c()):
        p.process(e)
    assert p.calls == ["base_a", "child_a", "child_c"]
    assert set(Child.processes_event_types) == {"proctest.unit_a", "proctest.unit_c"}
    base = Base()
    for e in stored(a(), b(), c()):
        base.process(e)
    assert base.calls == ["base_a", "base_b"]  # the base class is unchanged


def test_catch_all_receives_every_event():
    class All(Recorder):
        @es.on(UnitA)
        def _a(self, event):
            self.calls.append(("a", event.id))

        @es.on()
        def _all(self, event):
            self.calls.append(("all", event.id))

    p = All()
    for e in stored(a(), b(), c(), a()):
        p.process(e)
    assert [x for x in p.calls if x[0] == "all"] == [("all", 1), ("all", 2), ("all", 3), ("all", 4)]
    assert [x for x in p.calls if x[0] == "a"] == [("a", 1), ("a", 4)]
    assert All.processes_event_types is None


def test_catch_all_alone_means_all_event_types():
    class OnlyAll(Recorder):
        @es.on()
        def _all(self, event):
            self.calls.append(event.type)

    assert OnlyAll.processes_event_types is None
    p = OnlyAll()
    for e in stored(a(), c()):
        p.process(e)
    assert p.calls == ["proctest.unit_a", "proctest.unit_c"]


def test_a_second_catch_all_is_an_error_at_class_creation():
    with pytest.raises(es.MultipleCatchAllHandlersDefined):
        class Twice(es.EventStreamProcessor):
            @es.on()
            def one(self, event):
                pass

            @es.on()
            def two(self, event):
                pass
    assert issubclass(es.MultipleCatchAllHandlersDefined, es.Error)


def test_processes_event_types_lists_handled_types():
    class Typed(es.EventStreamProcessor):
        @es.on(UnitA, UnitB)
        def _ab(self, event):
            pass

        @es.on(UnitB)
        def _b(self, event):
            pass

    assert sorted(Typed.processes_event_types) == ["proctest.unit_a", "proctest.unit_b"]
    assert sorted(Typed().processes_event_types) == ["proctest.unit_a", "proctest.unit_b"]


def test_processor_name_defaults_to_snake_case_and_can_be_overridden():
    class OutstandingTodos(es.EventStreamProcessor):
        pass

    class Named(es.EventStreamProcessor):
        processor_name = "my_name"

    assert OutstandingTodos.processor_name == "outstanding_todos"
    assert OutstandingTodos().processor_name == "outstanding_todos"
    assert Named.processor_name == "my_name"
    assert Named().processor_name == "my_name"


def test_handler_errors_are_wrapped_in_event_processing_error():
    original = ValueError("boom")

    class Failing(es.EventStreamProcessor):
        @es.on(UnitA)
        def _a(self, event):
            raise original

    p = Failing()
    (event,) = stored(a(7))
    with pytest.raises(es.EventProcessingError) as info:
        p.process(event)
    err = info.value
    assert isinstance(err, es.Error)
    assert err.event is event
    assert err.processor is p
    assert err.__cause__ is original
    assert "failing" in str(err) and str(event.id) in str(err)


def test_subscribe_to_catches_up_reading_only_the_handled_types_and_moves_past_the_others():
    class Spy(es.MemoryEventStore):
        def get_next_from(self, id, event_types=None, limit=1000):
            self.reads.append((id, event_types))
            return super().get_next_from(id, event_types, limit)

    class OnlyB(Recorder):
        @es.on(UnitB)
        def _b(self, event):
            self.calls.append(event.id)

    store = Spy()
    store.reads = []
    sink_each(store, [a(), b(), c(), b(), a()])
    p = OnlyB()
    run_until_caught_up(p, store, latest=5)
    assert p.calls == [2, 4]
    assert store.reads[0][0] == 1 and list(store.reads[0][1]) == ["proctest.unit_b"]
    assert p.last_processed_event_id == 5  # past the unhandled event 5: not behind


# --- process_batch, subscribe_to and stop ---------------------------------------------------------


class FailOn(Recorder):
    """Records events; raises on events whose n is in fail_on (while ``failures`` lasts, if set)."""

    def __init__(self, tracker=None, fail_on=(), failures=None):
        super().__init__(tracker)
        self.fail_on = set(fail_on)
        self.failures = failures

    @es.on()
    def _any(self, event):
        if event.n in self.fail_on and (self.failures is None or self.failures.get(event.n, 0) > 0):
            if self.failures is not None:
                self.failures[event.n] -= 1
            raise RuntimeError(f"failing on n={event.n}")
        self.calls.append(event.id)


def test_process_batch_records_the_position_after_the_batch():
    p = FailOn()
    p.process_batch(stored(a(1), a(2), a(3)))
    assert p.calls == [1, 2, 3]
    assert p.last_processed_event_id == 3


def test_process_batch_records_the_position_up_to_the_last_good_event_on_failure():
    p = FailOn(fail_on={3})
    with pytest.raises(es.EventProcessingError) as info:
        p.process_batch(stored(a(1), a(2), a(3), a(4)))
    assert info.value.event.id == 3
    assert p.calls == [1, 2]
    assert p.last_processed_event_id == 2


def test_process_batch_failing_on_the_first_event_keeps_the_position():
    p = FailOn(fail_on={1})
    p.tracker.processed_event(p.processor_name, 0)
    with pytest.raises(es.EventProcessingError):
        p.process_batch(stored(a(1), a(2)))
    assert p.last_processed_event_id == 0


def test_subscribe_to_with_a_callable_stop_resumes_where_it_stopped():
    store = es.MemoryEventStore()
    sink_each(store, [a(i) for i in range(1, 6)])
    p = FailOn()
    run_until_caught_up(p, store)
    assert p.calls == [1, 2, 3, 4, 5]
    sink_each(store, [a(i) for i in range(6, 9)])
    run_until_caught_up(p, store)
    assert p.calls == [1, 2, 3, 4, 5, 6, 7, 8]  # nothing twice


def test_subscribe_to_returns_at_once_when_stop_is_already_set():
    store = es.MemoryEventStore()
    sink_each(store, [a(1)])
    p = FailOn()
    stop = threading.Event()
    stop.set()
    p.subscribe_to(store, stop=stop)
    assert p.calls == []


def test_subscribe_to_with_a_threading_event_follows_new_events_until_stopped(store):
    p = FailOn(tracker=store.tracker())
    stop = threading.Event()
    errors = []

    def run():
        try:
            p.subscribe_to(store, stop=stop)
        except BaseException as exc:  # reported below
            errors.append(exc)

    sink_each(store, [a(1), a(2)])
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: p.calls == [1, 2])
        sink_each(store, [a(3)])  # committed while it waits for news
        assert wait_until(lambda: p.calls == [1, 2, 3])
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive(), "subscribe_to did not return after stop was set"
    assert errors == []
    assert p.last_processed_event_id == 3


# --- 2. trackers and the processor lock: tests/test_tracker_and_lock_contract.py, on every store


# --- 3. Projector: tests/test_projector_contract.py, on SQLite and Postgres -----------------------


# --- 4. Reactor -----------------------------------------------------------------------------------


def committed(db_path, sql):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def position_in(db_path, name):
    rows = committed(db_path, f"SELECT position FROM eventsourcery_trackers WHERE name = '{name}'")
    return rows[0][0] if rows else 0


class Ponger(es.Reactor):
    processor_name = "ponger"
    emits_events = (Pong,)
    fail_after_emit: set = set()

    @es.on(Ping)
    def _ping(self, event):
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id))
        if event.n in self.fail_after_emit:
            raise RuntimeError("fails after emitting")


def pongs(store):
    return [e for e in everything_in(store) if isinstance(e, Pong)]


def test_reactor_emit_event_sets_causation_and_correlation(store):
    plain = store.sink(Ping(aggregate_id="p1", n=1))[0]
    correlated = store.sink(Ping(aggregate_id="p2", n=2, correlation_id="corr-1"))[0]
    r = Ponger(store)
    run_until_caught_up(r, store, latest=correlated.id)
    first, second = pongs(store)
    assert ((first.ping_id, first.causation_id, first.correlation_id)
            == (plain.id, plain.uuid, plain.uuid))
    assert ((second.ping_id, second.causation_id, second.correlation_id)
            == (correlated.id, correlated.uuid, "corr-1"))
    assert r.last_processed_event_id == correlated.id
    assert store.tracker().last_processed_event_id("ponger") == correlated.id


def test_reactor_emitting_an_undeclared_event_fails(store):
    class Loose(es.Reactor):
        emits_events = (Pong,)

        @es.on(Ping)
        def _ping(self, event):
            self.emit_event(Tick(aggregate_id="x"))

    store.sink(Ping(aggregate_id="p1"))
    r = Loose(store)
    with pytest.raises(es.EventProcessingError) as info:
        run_until_caught_up(r, store)
    assert isinstance(info.value.__cause__, es.UndeclaredEventEmissionError)
    assert store.latest_event_id() == 1


def test_reactor_emitted_events_and_position_commit_together(store):
    """db=None: the position lives in the store, so a failure after emitting leaves nothing of that
    event emitted, while the events before it have committed their emissions and position."""
    for n in range(1, 5):
        store.sink(Ping(aggregate_id=f"p{n}", n=n))
    r = Ponger(store)
    r.fail_after_emit = {3}
    with pytest.raises(es.EventProcessingError):
        run_until_caught_up(r, store)
    assert store.latest_event_id() == 6  # the pongs for pings 1-2; ping 3's was never sunk
    assert [p.ping_id for p in pongs(store)] == [1, 2]
    assert store.tracker().last_processed_event_id("ponger") == 2
    r.fail_after_emit = set()
    run_until_caught_up(r, store, latest=4)
    assert [p.ping_id for p in pongs(store)] == [1, 2, 3, 4]
    assert store.tracker().last_processed_event_id("ponger") >= 4  # and past the pongs it read over


class LoggingPonger(es.Reactor):
    """Logs each Ping in a table of its own, then answers it; on the memory store the table lives in
    an in-memory SQLite database."""

    processor_name = "logging_ponger"
    emits_events = (Pong,)
    schema = (
        "CREATE TABLE IF NOT EXISTS ponger_log (event_id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    fail_after: set = set()

    @es.on(Ping)
    def _ping(self, event):
        p = self.placeholder
        self.db.execute(f"INSERT INTO ponger_log (event_id, n) VALUES ({p}, {p})",
                        (event.id, event.n))
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id))
        if event.n in self.fail_after:
            raise RuntimeError("fails after logging and emitting")


def test_a_reactor_on_the_memory_store_keeps_its_schema_in_an_in_memory_sqlite_database(
        monkeypatch):
    store = es.MemoryEventStore()
    pings = [store.sink(Ping(aggregate_id=f"p{n}", n=n))[0] for n in range(1, 5)]
    r = LoggingPonger(store, batch_size=2)
    r.fail_after = {4}

    def logged():
        return [row[0] for row in r.db.execute("SELECT event_id FROM ponger_log ORDER BY event_id")]

    r.setup()
    assert isinstance(r.database, es.SQLiteDatabase) and r.database.path == ":memory:"
    assert isinstance(r.db, sqlite3.Connection) and r.placeholder == "?"
    assert logged() == []  # setup created the table
    # and the position, in the store's tracker
    assert store.tracker().positions() == {"logging_ponger": 0}
    assert r.tracker is store.tracker()

    with pytest.raises(es.EventProcessingError) as info:
        run_until_caught_up(r, store, latest=pings[-1].id)
    assert info.value.event.id == pings[3].id
    # events 1-3 committed (logs, pongs, position); 4 failed after logging and answering: all of it
    # rolled back
    assert logged() == [1, 2, 3]
    assert [p.ping_id for p in pongs(store)] == [1, 2, 3]
    assert store.latest_event_id() == 7
    assert store.tracker().last_processed_event_id("logging_ponger") == 3

    r.fail_after = set()
    tracker = store.tracker()
    commit = tracker.commit_position

    # the position is written, then the batch fails
    def commit_then_fail(name, event_id, generation):
        commit(name, event_id, generation)
        assert tracker.last_processed_event_id(name) == event_id
        raise RuntimeError("fails after recording the position")

    monkeypatch.setattr(tracker, "commit_position", commit_then_fail)
    with pytest.raises(RuntimeError, match="after recording the position"):
        run_until_caught_up(r, store, latest=pings[-1].id)
    # rolled back with the rest
    assert store.tracker().last_processed_event_id("logging_ponger") == 3
    assert logged() == [1, 2, 3]
    assert [p.ping_id for p in pongs(store)] == [1, 2, 3]
    assert store.latest_event_id() == 7

    monkeypatch.undo()
    run_until_caught_up(r, store, latest=pings[-1].id)
    assert logged() == [1, 2, 3, 4]
    assert [p.ping_id for p in pongs(store)] == [1, 2, 3, 4]
    # the rolled-back pongs left no hole
    assert [e.id for e in everything_in(store)] == list(range(1, 9))
    assert r.last_processed_event_id == 4

    r.reset()  # drops the table and the position, and sets up again
    assert logged() == []
    assert store.tracker().positions() == {"logging_ponger": 0}


def test_reactor_with_its_own_database(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "events.db")
    store.sink(Ping(aggregate_id="p1"))
    r = Ponger(store, db=str(tmp_path / "reactor.db"))
    run_until_caught_up(r, store, latest=1)
    assert [p.ping_id for p in pongs(store)] == [1]
    assert position_in(str(tmp_path / "reactor.db"), "ponger") == 1
    store.close()


# --- 5. error handlers ----------------------------------------------------------------------------


def run_with(handler, processor, store):
    """run_processor until the processor has caught up with the store."""
    latest = store.latest_event_id()
    es.run_processor(processor, store, stop=lambda: processor.last_processed_event_id >= latest,
                     error_handler=handler)


def failing_setup(fail_on_counts):
    """A memory store with events n=1..4 and a processor failing fail_on_counts[n] times on event
    n."""
    store = es.MemoryEventStore()
    sink_each(store, [a(n) for n in range(1, 5)])
    return store, FailOn(fail_on=set(fail_on_counts), failures=dict(fail_on_counts))


@pytest.mark.parametrize("failures, expected", [
    ({2: 3}, [1, 2, 4]),
    ({2: 10}, [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]),
    ({2: 3, 3: 2}, [1, 2, 4, 1, 2]),
])
def test_exponential_backoff_doubles_while_the_same_event_fails(failures, expected):
    sleeps = []
    store, p = failing_setup(failures)
    run_with(es.ExponentialBackoffRetry(sleep=sleeps.append), p, store)
    assert sleeps == expected
    assert p.calls == [1, 2, 3, 4]  # every event processed once in the end


def test_exponential_backoff_initial_and_maximum():
    sleeps = []
    store, p = failing_setup({1: 5})
    run_with(es.ExponentialBackoffRetry(0.5, 3.0, sleep=sleeps.append), p, store)
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


class FlakyStore(es.MemoryEventStore):
    """subscribe() raises a plain error (not an EventProcessingError) the first ``failures``
    times."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def subscribe(self, from_id, event_types=None, *, stop=None):
        if self.failures:
            self.failures -= 1
            raise OSError("store unavailable")
        return super().subscribe(from_id, event_types, stop=stop)


def test_exponential_backoff_does_not_grow_on_errors_outside_handlers():
    store = FlakyStore(3)
    store.sink(a(1))
    sleeps = []
    p = FailOn()
    run_with(es.ExponentialBackoffRetry(sleep=sleeps.append), p, store)
    assert sleeps == [1, 1, 1]
    assert p.calls == [1]


def test_constant_retry():
    sleeps = []
    store, p = failing_setup({2: 2, 3: 1})
    run_with(es.ConstantRetry(0.25, sleep=sleeps.append), p, store)
    assert sleeps == [0.25, 0.25, 0.25]
    assert es.ConstantRetry().interval == 1.0


def test_errors_are_reported_unwrapped_to_on_event_processor_error(monkeypatch, caplog):
    reported = []
    monkeypatch.setattr(es.config, "on_event_processor_error",
                        lambda exc, name: reported.append((exc, name)))
    store, p = failing_setup({2: 2})
    caplog.set_level(logging.INFO, logger="eventsourcery")
    run_with(es.ConstantRetry(0, sleep=lambda s: None), p, store)
    assert [(type(exc), str(exc), name) for exc, name in reported] == [
        (RuntimeError, "failing on n=2", "fail_on"),
        (RuntimeError, "failing on n=2", "fail_on"),
    ]
    assert any("[fail_on]" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    plain = FlakyStore(1)
    plain.sink(a(1))
    reported.clear()
    run_with(es.ConstantRetry(0, sleep=lambda s: None), FailOn(), plain)
    assert [(type(exc), name) for exc, name in reported] == [(OSError, "fail_on")]


def test_run_processor_with_no_retry_raises_the_processing_error(monkeypatch):
    reported = []
    monkeypatch.setattr(es.config, "on_event_processor_error",
                        lambda exc, name: reported.append(exc))
    store, p = failing_setup({3: 1})
    with pytest.raises(es.EventProcessingError) as info:
        run_with(es.NoRetry(), p, store)
    assert info.value.event.n == 3
    assert len(reported) == 1 and isinstance(reported[0], RuntimeError)
    assert p.calls == [1, 2]


def test_config_error_handler_is_used_by_default(monkeypatch):
    monkeypatch.setattr(es.config, "error_handler", es.NoRetry)
    store, p = failing_setup({1: 1})
    with pytest.raises(es.EventProcessingError):
        es.run_processor(p, store, stop=lambda: p.last_processed_event_id >= 4)


def test_run_processor_returns_when_stopped_while_waiting_to_retry(monkeypatch):
    store, p = failing_setup({1: 1000})
    stop = threading.Event()
    reported = threading.Event()
    monkeypatch.setattr(es.config, "on_event_processor_error", lambda exc, name: reported.set())
    thread = threading.Thread(target=es.run_processor, args=(p, store),
                              kwargs={"stop": stop, "error_handler": es.ConstantRetry(WAIT * 10)},
                              daemon=True)
    thread.start()
    assert reported.wait(WAIT)  # it failed once and now waits WAIT * 10 s to retry
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive(), "run_processor kept waiting after stop was set"


def test_a_processor_starting_while_its_status_is_probed_still_gets_the_lock(tmp_path):
    """processor_statuses()/the CLI probe the lock for an instant; a processor starting then must
    not fail."""
    store = es.SQLiteEventStore(str(tmp_path / "events.db"))
    import fcntl

    os.makedirs(tmp_path / "events.db.locks", exist_ok=True)
    probe = os.open(tmp_path / "events.db.locks" / "probe_me.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # what is_running() holds while it looks
    release = threading.Timer(0.05, os.close, args=(probe,))
    release.start()
    with store.lock("probe_me"):
        assert store.is_running("probe_me")
    release.join()
    assert not store.is_running("probe_me")
    store.close()


def test_a_standby_instance_is_logged_as_a_warning_not_reported_as_an_error(caplog):
    reported = []
    es.configure(on_event_processor_error=lambda exc, name: reported.append(exc))
    handler = es.ConstantRetry(interval=0.5)
    with caplog.at_level("WARNING", logger="eventsourcery"):
        assert handler.handle(es.UnableToLockProcessorError("held elsewhere"), "standby") == 0.5
    assert reported == []
    assert any(r.levelname == "WARNING" and "standby" in r.getMessage() for r in caplog.records)
    assert es.NoRetry().handle(es.UnableToLockProcessorError("held elsewhere"), "standby") is None


def test_a_reactors_placeholder_is_that_of_its_database(store):
    """The projector's side is in test_projector_contract.py. A reactor without a db of its own
    writes in the store's database, or, on the memory store, in an in-memory SQLite database."""
    reactor = ps.PingReactor(store)
    expected = "?" if isinstance(store, (es.MemoryEventStore, es.SQLiteEventStore)) else "%s"
    assert reactor.placeholder == expected
    assert reactor.db.execute(f"SELECT 1 WHERE 1 = {reactor.placeholder}", (1,)).fetchone() == (1,)
    if store.database is not None:
        assert reactor.database is store.database
