"""The tracker-and-lock contract, run against every store (conftest.STORE_FACTORIES).

Two promises of eventsourcery.py ("Event stores: the contract"):

* A **tracker** keeps each processor's position by name: ``store.tracker()``
  (in the store's own database) and a tracker in a database of its own
  (``es.MemoryTracker``, ``es.SQLiteTracker``, ``es_pg.PostgresTracker``).
  Positions in a database are seen by every other connection to it once
  committed, and a store tracker's writes commit with ``store.transaction()``.
* A store owns the **single-instance lock** of each processor name
  (``store.lock(name)``, ``store.is_running(name)``): one holder at a time per
  name and store, whatever tracker the processor uses; released when the
  holder's block ends or the holder dies, even by ``kill -9``.

What needs a database several connections or processes share (a second
tracker or store object, a holder in another process) runs on the SQLite and
Postgres stores only: a memory store cannot be shared. Backend details (the
SQLite is_running probe, Postgres schemas) stay in test_processing.py and
test_postgres.py. Every wait is bounded (tests._util.WAIT).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import threading

import pytest

import eventsourcery as es
from tests import pg_support as pg
from tests import processing_support as ps
from tests._util import WAIT, wait_until
from tests.processing_support import Tick

SPAWN = multiprocessing.get_context("spawn")
SHARED_STORES = ["sqlite", "postgres"]  # the store kinds another connection or process can open too


def ticks(store, n, start=1):
    return [store.sink(Tick(aggregate_id=f"tick-{i % 3}", n=i))[0] for i in range(start, start + n)]


def store_url(store) -> str:
    """What another process or store object opens the same store with."""
    if isinstance(store, es.SQLiteEventStore):
        return store.path
    return pg.store_url(store.schema)  # a PostgresEventStore


class Recorder(es.EventStreamProcessor):
    """Records the ids it handles; its name is given per instance (``subscribe_to`` uses
    ``self.processor_name``)."""

    def __init__(self, name="recorder", tracker=None):
        super().__init__(tracker)
        self.processor_name = name
        self.calls = []

    @es.on()
    def _any(self, event):
        self.calls.append(event.id)


def run_until_caught_up(processor, store, latest=None):
    target = store.latest_event_id() if latest is None else latest
    processor.subscribe_to(store, stop=lambda: processor.last_processed_event_id >= target)


# =================================================================================================
# trackers: the store's, and one in a database of its own
# =================================================================================================


class TrackerCase:
    """A tracker under test, and how to open further trackers on other connections to its
    database."""

    def __init__(self, tracker, others, closers):
        self.tracker = tracker
        self._others = others  # label -> factory of a tracker on a new connection
        self._closers = closers

    def others(self):
        """[(label, tracker)], each on a connection of its own to the same database (none in
        memory)."""
        made = []
        for label, factory in self._others:
            tracker, close = factory()
            self._closers.append(close)
            made.append((label, tracker))
        return made


def _database_tracker(db):
    tracker = es.DatabaseTracker(es.open_database(db))
    return tracker, tracker.database.close


def _other_store_tracker(url):
    other = es.open_store(url)
    return other.tracker(), other.close


def _sqlite_tracker_on_a_connection(path):
    conn = sqlite3.connect(path)
    tracker = es.SQLiteTracker(conn)

    def close():
        tracker.database.close()
        conn.close()

    return tracker, close


@pytest.fixture(params=["store", "own_database"])
def tracker_case(request, store, tmp_path):
    """The store's tracker, or a tracker of the same kind in a database of its own."""
    closers = []
    if request.param == "store":
        tracker = store.tracker()
        if isinstance(store, es.MemoryEventStore):
            others = []
        elif isinstance(store, es.SQLiteEventStore):
            path = store.path
            others = [("SQLiteTracker(path)", lambda: _sqlite_tracker(path)),
                      ("another store object", lambda: _other_store_tracker(path)),
                      ("DatabaseTracker(open_database(path))", lambda: _database_tracker(path))]
        else:
            import eventsourcery_pg as es_pg

            url, schema = store.conninfo, store.schema
            others = [("PostgresTracker(conninfo, schema=)",
                       lambda: _pg_tracker(es_pg, url, schema)),
                      ("another store object", lambda: _other_store_tracker(store_url(store))),
                      ("DatabaseTracker(open_database(url))",
                       lambda: _database_tracker(store_url(store)))]
    elif isinstance(store, es.MemoryEventStore):
        tracker, others = es.MemoryTracker(), []
    elif isinstance(store, es.SQLiteEventStore):
        path = str(tmp_path / "positions.db")
        tracker, close = _sqlite_tracker(path)
        closers.append(close)
        others = [("SQLiteTracker(path)", lambda: _sqlite_tracker(path)),
                  ("SQLiteTracker(sqlite3.Connection)",
                   lambda: _sqlite_tracker_on_a_connection(path)),
                  ("DatabaseTracker(open_database(path))", lambda: _database_tracker(path))]
    else:
        import eventsourcery_pg as es_pg

        schema = pg.new_schema()
        tracker, close = _pg_tracker(es_pg, pg.require_postgres(), schema)
        closers.append(close)
        others = [("PostgresTracker(conninfo, schema=)",
                   lambda: _pg_tracker(es_pg, pg.require_postgres(), schema)),
                  ("PostgresTracker(url?schema=)",
                   lambda: _pg_tracker(es_pg, pg.store_url(schema), None)),
                  ("DatabaseTracker(open_database(url))",
                   lambda: _database_tracker(pg.store_url(schema)))]
    case = TrackerCase(tracker, others, closers)
    yield case
    for close in reversed(closers):
        close()


def _sqlite_tracker(path):
    tracker = es.SQLiteTracker(path)
    return tracker, tracker.database.close


def _pg_tracker(es_pg, conninfo, schema):
    tracker = es_pg.PostgresTracker(conninfo, schema=schema)
    return tracker, tracker.database.close


def test_an_unknown_name_is_at_0_and_not_tracked(tracker_case):
    t = tracker_case.tracker
    assert t.last_processed_event_id("nobody") == 0
    assert t.positions() == {}  # asking created nothing


def test_setup_starts_at_0_and_keeps_an_existing_position(tracker_case):
    t = tracker_case.tracker
    t.setup("alpha")
    assert t.positions() == {"alpha": 0}
    assert t.last_processed_event_id("alpha") == 0
    t.processed_event("alpha", 5)
    t.setup("alpha")
    assert t.last_processed_event_id("alpha") == 5
    t.setup("beta")
    assert t.positions() == {"alpha": 5, "beta": 0}


def test_processed_event_records_a_position_with_or_without_setup(tracker_case):
    t = tracker_case.tracker
    t.processed_event("x", 5)
    t.processed_event("y", 2)  # never set up
    assert t.positions() == {"x": 5, "y": 2}
    t.processed_event("y", 9)
    t.processed_event("x", 3)  # the position is what was recorded last, even a smaller one
    assert (t.last_processed_event_id("x"), t.last_processed_event_id("y")) == (3, 9)
    snapshot = t.positions()
    snapshot["x"] = 1000  # positions() is a copy
    assert t.positions() == {"x": 3, "y": 9}


def test_reset_sets_one_position_back_to_0_and_keeps_it_tracked(tracker_case):
    t = tracker_case.tracker
    t.setup("a")
    t.processed_event("a", 5)
    t.processed_event("b", 7)
    t.reset("a")
    assert t.last_processed_event_id("a") == 0
    assert t.positions() == {"a": 0, "b": 7}
    t.reset("never_seen")
    assert t.positions() == {"a": 0, "b": 7, "never_seen": 0}


@pytest.mark.parametrize("store_kind", SHARED_STORES)
def test_trackers_on_other_connections_see_committed_positions(tracker_case):
    t = tracker_case.tracker
    t.setup("alpha")
    t.processed_event("alpha", 41)
    t.processed_event("beta", 7)
    others = tracker_case.others()
    assert len(others) >= 2
    for label, other in others:
        assert other.last_processed_event_id("alpha") == 41, label
        assert other.last_processed_event_id("unknown") == 0, label
        other.setup("alpha")  # keeps the position
        other.setup("gamma")
        assert other.positions() == {"alpha": 41, "beta": 7, "gamma": 0}, label
    label, last = others[-1]
    last.reset("beta")
    last.processed_event("gamma", 3)
    for label, other in [("the first tracker", t), *tracker_case.others()]:
        assert other.positions() == {"alpha": 41, "beta": 0, "gamma": 3}, label


def test_a_processor_without_a_tracker_keeps_its_position_in_memory_of_its_own():
    one, two = es.EventStreamProcessor(), es.EventStreamProcessor()
    assert isinstance(one.tracker, es.MemoryTracker) and isinstance(two.tracker, es.MemoryTracker)
    assert one.tracker is not two.tracker
    one.tracker.processed_event(one.processor_name, 4)
    assert (one.last_processed_event_id, two.last_processed_event_id) == (4, 0)


def test_the_store_trackers_writes_commit_or_roll_back_with_the_store_transaction(store):
    tracker = store.tracker()
    tracker.setup("proc")
    with pytest.raises(RuntimeError, match="roll back"):
        with store.transaction():
            (event,) = store.sink(Tick(aggregate_id="t", n=1))
            tracker.processed_event("proc", event.id)
            # seen inside the transaction
            assert tracker.last_processed_event_id("proc") == event.id
            raise RuntimeError("roll back")
    assert store.latest_event_id() == 0
    assert tracker.positions() == {"proc": 0}
    with store.transaction():
        (event,) = store.sink(Tick(aggregate_id="t", n=2))
        tracker.processed_event("proc", event.id)
    assert store.latest_event_id() == event.id == 1
    assert tracker.positions() == {"proc": 1}


@pytest.mark.parametrize("store_kind", SHARED_STORES)
def test_a_position_in_an_open_transaction_is_not_seen_by_other_connections(store):
    tracker = store.tracker()
    tracker.processed_event("proc", 3)
    with es.open_store(store_url(store)) as other:
        # read once before the transaction: a DatabaseTracker's first use in a process opens a write
        # transaction (to create its table), which on SQLite waits for the open one (reported)
        assert other.tracker().last_processed_event_id("proc") == 3
        with store.transaction():
            tracker.processed_event("proc", 8)
            assert tracker.last_processed_event_id("proc") == 8
            assert other.tracker().last_processed_event_id("proc") == 3
        assert other.tracker().last_processed_event_id("proc") == 8


def test_a_new_processor_instance_resumes_from_the_trackers_position(store, tracker_case):
    ticks(store, 5)
    first = Recorder(tracker=tracker_case.tracker)
    run_until_caught_up(first, store)
    assert first.calls == [1, 2, 3, 4, 5]
    ticks(store, 2, start=6)
    trackers = [tracker_case.tracker] + [t for _label, t in tracker_case.others()]
    for tracker in trackers:
        assert Recorder(tracker=tracker).last_processed_event_id == 5
    second = Recorder(tracker=trackers[-1])
    second.setup()  # keeps the position
    assert second.last_processed_event_id == 5
    run_until_caught_up(second, store)
    assert second.calls == [6, 7]
    assert first.last_processed_event_id == 7  # the same position


# =================================================================================================
# the store's lock, in one process
# =================================================================================================


def test_a_second_lock_of_the_same_name_raises_naming_the_processor(store):
    with store.lock("projector_one"):
        for _attempt in range(2):  # a failed attempt leaves the holder's lock alone
            with pytest.raises(es.UnableToLockProcessorError) as info:
                with store.lock("projector_one"):
                    pytest.fail("a second holder got the lock")
            assert "projector_one" in str(info.value)
            assert isinstance(info.value, es.Error)
            assert store.is_running("projector_one")


def test_is_running_follows_the_lock_and_a_released_lock_can_be_taken_again(store):
    assert not store.is_running("proc")
    for _round in range(3):
        with store.lock("proc"):
            assert store.is_running("proc")
        assert not store.is_running("proc")


def test_the_lock_is_released_when_its_block_raises(store):
    with pytest.raises(KeyError):
        with store.lock("proc"):
            raise KeyError("boom")
    assert not store.is_running("proc")
    with store.lock("proc"):
        assert store.is_running("proc")


def test_locks_of_different_names_are_independent(store):
    names = [f"proc_{i}" for i in range(8)] + ["with space", "with/slash", "Proc_0", "ünïcode"]
    with contextlib.ExitStack() as held:
        for n, name in enumerate(names):
            held.enter_context(store.lock(name))
            assert [store.is_running(x) for x in names] == [i <= n for i in range(len(names))], name
    assert not any(store.is_running(x) for x in names)
    with store.lock("a"):
        with store.lock("b"):
            pass
        assert store.is_running("a") and not store.is_running("b")


def test_the_lock_is_per_store(store, make_store):
    other = make_store()
    with store.lock("proc"):
        assert not other.is_running("proc")
        with other.lock("proc"):  # the same name on another store is another processor
            assert other.is_running("proc") and store.is_running("proc")
        assert not other.is_running("proc")


@pytest.mark.parametrize("store_kind", SHARED_STORES)
def test_every_store_object_on_one_database_shares_its_locks(store):
    with es.open_store(store_url(store)) as other:
        with store.lock("proc"):
            assert other.is_running("proc")
            with pytest.raises(es.UnableToLockProcessorError, match="proc"):
                with other.lock("proc"):
                    pytest.fail("another store object on the same database got the lock")
        assert not other.is_running("proc")
        with other.lock("proc"):
            assert store.is_running("proc")
            with pytest.raises(es.UnableToLockProcessorError):
                with store.lock("proc"):
                    pass
        assert not store.is_running("proc")


@pytest.mark.parametrize("tracker", ["store_tracker", "memory_tracker"])
def test_subscribe_to_raises_while_the_lock_is_held_whatever_the_tracker(store, tracker):
    ticks(store, 3)

    def processor():
        return Recorder("locked_out",
                        tracker=store.tracker() if tracker == "store_tracker" else None)

    with store.lock("locked_out"):
        p = processor()
        with pytest.raises(es.UnableToLockProcessorError, match="locked_out"):
            p.subscribe_to(store, stop=lambda: True)
        assert p.calls == []
        assert "locked_out" not in store.tracker().positions()  # not even set up
    p = processor()
    run_until_caught_up(p, store)
    assert p.calls == [1, 2, 3]


def test_a_running_processor_holds_its_lock_until_subscribe_to_returns(store):
    ticks(store, 2)
    p = Recorder("runner", tracker=store.tracker())
    stop = threading.Event()
    errors = []

    def run():
        try:
            p.subscribe_to(store, stop=stop)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: p.calls == [1, 2] or not thread.is_alive()), p.calls
        assert store.is_running("runner")
        assert {s.name: s.running for s in es.processor_statuses(store)} == {"runner": True}
        with pytest.raises(es.UnableToLockProcessorError):
            Recorder("runner").subscribe_to(store, stop=lambda: True)
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive(), "subscribe_to did not return after stop"
    assert errors == []
    assert not store.is_running("runner")
    assert ([(s.name, s.position, s.running) for s in es.processor_statuses(store)]
            == [("runner", 2, False)])


def test_processor_statuses_report_position_lag_and_running(store, monkeypatch):
    monkeypatch.setattr(es.config, "subscription_batch_size", 3)
    ticks(store, 5)
    p = Recorder("lagging", tracker=store.tracker())
    run_until_caught_up(p, store, latest=3)
    store.tracker().setup("idle")
    assert [(s.name, s.position, s.lag, s.running) for s in es.processor_statuses(store)] == [
        ("idle", 0, 5, False), ("lagging", 3, 2, False)]
    with store.lock("lagging"):
        statuses = {s.name: s for s in es.processor_statuses(store)}
        assert (statuses["lagging"].running, statuses["idle"].running) == (True, False)
    assert not any(s.running for s in es.processor_statuses(store))
    # statuses of a tracker other than the store's; running is still the store's
    other = es.MemoryTracker()
    other.processed_event("lagging", 1)
    with store.lock("lagging"):
        (status,) = es.processor_statuses(store, other)
        assert (status.name, status.position, status.lag, status.running, status.state) == (
            "lagging", 1, 4, True, "running")


def test_probing_is_running_while_the_lock_is_taken_never_makes_it_fail(store):
    """processor_statuses() and the CLI probe locks while processors start: a start must still
    succeed."""
    stop = threading.Event()
    probes = []

    def probe():
        while not stop.is_set():
            probes.append(store.is_running("probed"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        for _round in range(100):
            with store.lock("probed"):
                pass
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert probes, "the probe never ran"
    assert not store.is_running("probed")


# =================================================================================================
# the store's lock across processes (a memory store cannot be shared by processes)
# =================================================================================================


def start_holder(url, name, workdir, how):
    proc = SPAWN.Process(target=ps.hold_lock, args=(url, name, workdir, how), daemon=True)
    proc.start()
    pid_file = os.path.join(workdir, f"{name}.pid")
    assert wait_until(lambda: ps.read_pid(pid_file) == proc.pid or not proc.is_alive(),
                      timeout=WAIT), ("the holder never took the lock")
    assert proc.is_alive(), f"the lock holder died with exit code {proc.exitcode}"
    return proc


@pytest.mark.parametrize("how", ps.HOLD_LOCK_WAYS)
@pytest.mark.parametrize("store_kind", SHARED_STORES)
def test_a_holder_in_another_process_has_the_lock_until_it_is_killed_with_sigkill(
        store, make_store, tmp_path, how):
    name = "held_elsewhere"
    ticks(store, 1)
    store.tracker().setup(name)  # so processor_statuses() lists it, whoever holds the lock
    holder = start_holder(store_url(store), name, str(tmp_path), how)
    try:
        assert store.is_running(name)
        assert not store.is_running("another_processor")
        with es.open_store(store_url(store)) as prober:  # as the CLI sees it
            assert prober.is_running(name)
        with pytest.raises(es.UnableToLockProcessorError, match=name):
            with store.lock(name):
                pytest.fail("got a lock another process holds")
        for tracker in (store.tracker(), None):
            second = Recorder(name, tracker=tracker)
            with pytest.raises(es.UnableToLockProcessorError, match=name):
                second.subscribe_to(store, stop=lambda: True)
            assert second.calls == []
        assert {s.name: s.running for s in es.processor_statuses(store)} == {name: True}
        with store.lock("another_processor"):
            assert store.is_running("another_processor")
        # the same name on another store (file, schema) is another processor
        other_store = make_store()
        assert not other_store.is_running(name)
        with other_store.lock(name):
            assert other_store.is_running(name)
    finally:
        ps.kill_quietly(holder.pid)
        holder.join(WAIT)
    assert not holder.is_alive(), "the holder survived SIGKILL"
    assert holder.exitcode == -9
    assert wait_until(lambda: not store.is_running(name),
                      timeout=WAIT), "the dead holder's lock was kept"
    assert {s.name: s.running for s in es.processor_statuses(store)} == {name: False}
    with store.lock(name):
        assert store.is_running(name)
    assert not store.is_running(name)
    # a holder with the store's tracker may have run
    left_at = store.tracker().last_processed_event_id(name)
    assert left_at in ((0, 1) if how == "store_tracker" else (0,))
    ticks(store, 1, start=2)
    after = Recorder(name, tracker=store.tracker())
    run_until_caught_up(after, store)  # the dead holder's lock is gone for processors too
    assert after.calls == list(range(left_at + 1, 3))
    assert store.tracker().last_processed_event_id(name) == 2


@pytest.mark.parametrize("a, b", [("\u03b1", ";1"), ("x" * 300, "x" * 301), ("a b", "a_b"),
                                  ("a%3b", "a;")])
def test_lock_names_that_look_alike_are_different_locks_and_long_ones_work(store, a, b):
    with store.lock(a):
        assert store.is_running(a) and not store.is_running(b)
        with store.lock(b):
            assert store.is_running(b)
        with pytest.raises(es.UnableToLockProcessorError):
            with store.lock(a):
                pass
    assert not store.is_running(a) and not store.is_running(b)


def test_a_pickled_memory_tracker_carries_its_records():
    import pickle

    tracker = es.MemoryTracker()
    tracker.setup("carried")
    generation = tracker.acquire("carried", "1@here", "projector")
    tracker.commit_position("carried", 7, generation)
    tracker.declare_tables("carried", ["rows", "totals"])
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.records() == tracker.records()
    assert copy.record("carried").tables == ("rows", "totals")
    copy.commit_position("carried", 8, generation)  # the copy's own: the original stays
    assert ((copy.last_processed_event_id("carried"),
             tracker.last_processed_event_id("carried")) == (8, 7))
