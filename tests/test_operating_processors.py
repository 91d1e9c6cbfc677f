"""Processors that keep their promises when things go wrong (SPEC §4): fenced ownership, short write
locks, failing events, replay and start position, children that die with the runner, truthful
status, read-your-writes. Every wait is bounded; no test depends on how fast the machine is."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import threading
import time

import pytest

import eventsourcery as es
from tests import processing_support as ps
from tests._util import WAIT, everything_in, wait_until
from tests.processing_support import Ping, Pong, Tick
from tests.test_runner import RunnerProcess, read_text


class CountingPonger(es.Reactor):
    """Answers each Ping with one Pong; counts its outside effects per ping in ``effects``."""

    processor_name = "counting_ponger"
    emits_events = (Pong,)

    def __init__(self, store, *, fail_on=None, fail_times=0, pause=0.0, effects=None):
        super().__init__(store)
        self.fail_on, self.fail_times, self.pause = fail_on, fail_times, pause
        self.effects = effects if effects is not None else collections.Counter()
        self.replays: list[int] = []

    @es.on(Ping)
    def _ping(self, event):
        if self.pause:
            time.sleep(self.pause)
        if event.n == self.fail_on and self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError(f"failing on ping {event.n}")
        if self.replaying:
            self.replays.append(event.n)
        else:
            self.effects[event.n] += 1  # the outside effect (a mail, say)
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id))


def pongs_per_ping(store) -> collections.Counter:
    """How many Pongs answer each Ping, by the ping's ``n``."""
    events = everything_in(store)
    n_of = {e.id: e.n for e in events if isinstance(e, Ping)}
    return collections.Counter(n_of[e.ping_id] for e in events if isinstance(e, Pong))


def sink_pings(store, first, last):
    for n in range(first, last + 1):
        store.sink(Ping(aggregate_id=f"p{n % 3}", n=n))


class Background:
    """run_processor in a thread until ``stop`` is set; keeps what it raised."""

    def __init__(self, processor, store, handler=None):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.processor = processor

        def run():
            try:
                es.run_processor(processor, store, stop=self.stop,
                                 error_handler=handler or es.ConstantRetry(0.02))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture(params=["sqlite", "postgres"])
def db_store(request, tmp_path):
    """A store with a database of its own (the memory store has no second connection to fence)."""
    from tests.conftest import STORE_FACTORIES

    s = STORE_FACTORIES[request.param](tmp_path / "events.db")
    yield s
    s.close()


# --- 8. ESPRunner refuses a memory store ----------------------------------------------------------


def test_esp_runner_refuses_a_memory_store_with_a_clear_error():
    with pytest.raises(TypeError, match="MemoryEventStore"):
        es.ESPRunner([CountingPonger(es.MemoryEventStore())], es.MemoryEventStore())


def test_esp_runner_refuses_an_sqlite_store_in_memory_too():
    store = es.SQLiteEventStore(":memory:")  # this process's own: a child would see nothing
    assert not store.shared_between_processes
    with pytest.raises(TypeError, match="SQLiteEventStore"):
        es.ESPRunner([CountingPonger(store)], store)


# --- 3. a failing event commits the work before it ------------------------------------------------


def test_a_failing_event_commits_the_events_before_it_and_only_it_is_retried(store):
    sink_pings(store, 1, 20)
    reactor = CountingPonger(store, fail_on=15, fail_times=5)
    reported = []
    es.configure(on_event_processor_error=lambda exc, name: reported.append(exc))
    es.run_processor(reactor, store, stop=lambda: reactor.last_processed_event_id >= 20,
                     error_handler=es.ConstantRetry(0))
    assert len(reported) == 5
    assert reactor.effects == {n: 1 for n in range(1, 21)}  # 1-14 once each, not once per retry
    assert pongs_per_ping(store) == {n: 1 for n in range(1, 21)}


# --- 1. fenced ownership --------------------------------------------------------------------------


def test_a_stale_instance_cannot_commit_once_another_has_taken_the_name(db_store):
    sink_pings(db_store, 1, 3)
    old = CountingPonger(db_store)
    old.setup()
    old._generation = old.tracker.acquire(old.processor_name, "1@old")
    new = CountingPonger(db_store)
    new._generation = new.tracker.acquire(new.processor_name, "2@new")
    with pytest.raises(es.ProcessorFencedError):
        old.process_batch(db_store.get_next_from(1))
    # the stale instance's emissions rolled back with its position
    assert pongs_per_ping(db_store) == {}
    assert old.last_processed_event_id == 0


def test_an_instance_retrying_after_an_error_stops_if_another_took_the_name_meanwhile(store):
    sink_pings(store, 1, 3)
    reactor = CountingPonger(store, fail_on=3, fail_times=1)
    name = reactor.processor_name

    def another_instance_takes_over_and_finishes(interval):
        generation = reactor.tracker.acquire(name, "2@elsewhere")
        # nothing left to commit
        reactor.tracker.commit_position(name, store.latest_event_id(), generation)

    deadline = time.monotonic() + WAIT
    with pytest.raises(es.ProcessorFencedError):
        es.run_processor(reactor, store, stop=lambda: time.monotonic() > deadline,
                         error_handler=es.ConstantRetry(
                             0, sleep=another_instance_takes_over_and_finishes))
    assert reactor.effects == {1: 1, 2: 1}
    assert pongs_per_ping(store) == {1: 1, 2: 1}
    assert reactor.tracker.record(name).generation == 2


def test_removing_the_sqlite_lock_directory_lets_a_second_instance_in_but_never_twice(
        tmp_path, caplog):
    path = tmp_path / "events.db"
    writer = es.SQLiteEventStore(path)
    sink_pings(writer, 1, 10)
    first = Background(CountingPonger(es.SQLiteEventStore(path)), es.SQLiteEventStore(path))
    # past its own pongs too: idle, it commits nothing (a commit would see its lock gone, and it
    # would take the name again itself: the next test)
    assert wait_until(lambda: first.processor.last_processed_event_id >= writer.latest_event_id())
    shutil.rmtree(f"{path}.locks")  # a tmp cleaner does this
    with caplog.at_level(logging.ERROR, logger="eventsourcery"):
        second = Background(CountingPonger(es.SQLiteEventStore(path)), es.SQLiteEventStore(path))
        assert wait_until(lambda: first.processor.tracker.record("counting_ponger").generation == 2)
        sink_pings(writer, 11, 40)
        # the old one stopped at its next commit
        assert wait_until(lambda: not first.thread.is_alive())
    assert isinstance(first.error, es.ProcessorFencedError)
    assert sum("another instance has taken over" in r.getMessage() for r in caplog.records) == 1
    assert wait_until(lambda: second.processor.last_processed_event_id
                      >= writer.latest_event_id([Ping]))
    second.finish()
    assert pongs_per_ping(writer) == {n: 1 for n in range(1, 41)}


def test_an_instance_whose_lock_file_was_removed_writes_nothing_under_it_and_takes_it_again(
        tmp_path, caplog):
    """Alone, an instance that finds at a commit that its lock file was removed rolls that commit
    back and takes the name again (a new lock file, a new generation), then redoes the work: each
    ping answered once."""
    path = tmp_path / "events.db"
    writer = es.SQLiteEventStore(path)
    sink_pings(writer, 1, 10)
    first = Background(CountingPonger(es.SQLiteEventStore(path)), es.SQLiteEventStore(path))
    assert wait_until(lambda: first.processor.last_processed_event_id >= writer.latest_event_id())
    shutil.rmtree(f"{path}.locks")
    with caplog.at_level(logging.WARNING, logger="eventsourcery"):
        sink_pings(writer, 11, 40)
        assert wait_until(lambda: first.processor.last_processed_event_id
                          >= writer.latest_event_id([Ping]))
    assert first.thread.is_alive() and first.error is None
    assert first.processor.tracker.record("counting_ponger").generation == 2
    assert any("lost the store's lock" in r.getMessage() for r in caplog.records)
    assert writer.is_running("counting_ponger")  # under the new lock file
    first.finish()
    assert pongs_per_ping(writer) == {n: 1 for n in range(1, 41)}


def test_a_postgres_lock_session_killed_by_the_server_fences_the_old_instance(tmp_path):
    from tests.pg_support import postgres_store

    store = postgres_store(tmp_path)

    class Ponger(CountingPonger):
        processor_name = f"ponger_{store.schema}"[:50]  # our own lock session, by application_name

    first = Background(Ponger(store), store)
    sink_pings(store, 1, 10)
    assert wait_until(lambda: first.processor.last_processed_event_id >= 10)
    assert wait_until(lambda: first.processor.last_processed_event_id >= store.latest_event_id())
    other = type(store)(store.conninfo, schema=store.schema)
    second = Background(Ponger(other), other)
    assert wait_until(lambda: first.processor.tracker.record(Ponger.processor_name).standby
                      is not None)
    admin = store.connection
    killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "application_name = %s",
                           (f"eventsourcery processor {Ponger.processor_name}"[:63],)).fetchall()
    assert killed == [(True,)]
    assert wait_until(lambda: first.processor.tracker.record(Ponger.processor_name).generation == 2)
    sink_pings(store, 11, 40)
    assert wait_until(lambda: not first.thread.is_alive())
    assert isinstance(first.error, es.ProcessorFencedError)
    assert wait_until(lambda: second.processor.last_processed_event_id
                      >= store.latest_event_id([Ping]))
    second.finish()
    other.close()
    assert pongs_per_ping(store) == {n: 1 for n in range(1, 41)}
    store.close()


# --- 2. short write locks -------------------------------------------------------------------------


def test_application_writes_interleave_with_a_slow_reactor_on_sqlite(tmp_path):
    path = tmp_path / "events.db"
    app = es.SQLiteEventStore(path, busy_timeout=3.0)
    sink_pings(app, 1, 200)
    reactor = CountingPonger(es.SQLiteEventStore(path, busy_timeout=3.0), pause=0.05)
    running = Background(reactor, reactor.store)
    assert wait_until(lambda: reactor.effects)  # busy with the backlog
    for n in range(10):
        # each would fail with "database is locked" after 3 s
        app.sink(Tick(aggregate_id=f"app-{n}", n=n))
    assert reactor.last_processed_event_id < 200  # the writes really happened during the backlog
    running.finish()
    assert running.error is None


# --- 4. replay and start position -----------------------------------------------------------------


def test_after_reset_a_reactor_replays_without_emitting_or_repeating_guarded_effects(store):
    sink_pings(store, 1, 5)
    reactor = CountingPonger(store)
    es.run_processor(reactor, store, stop=lambda: reactor.last_processed_event_id >= 5)
    reactor.reset()
    assert reactor.tracker.record(reactor.processor_name).horizon >= 5
    sink_pings(store, 6, 7)
    # a new instance: the horizon is in the tracker
    again = CountingPonger(store, effects=reactor.effects)
    es.run_processor(again, store,
                     stop=lambda: again.last_processed_event_id >= store.latest_event_id())
    assert again.replays == [1, 2, 3, 4, 5]
    assert reactor.effects == {n: 1 for n in range(1, 8)}
    assert pongs_per_ping(store) == {n: 1 for n in range(1, 8)}
    assert not again.replaying


def test_start_from_end_begins_after_the_latest_event_and_again_after_reset(store):
    class FromEnd(ps.Instrumented, es.EventStreamProcessor):
        processor_name = "from_end"
        start_from = "end"
        seen: list

        @es.on(Tick)
        def _tick(self, event):
            self.seen.append(event.n)

    for n in range(3):
        store.sink(Tick(aggregate_id="t", n=n))
    p = FromEnd(store.tracker())
    p.seen = []
    stop = threading.Event()
    thread = threading.Thread(target=p.subscribe_to, args=(store, stop), daemon=True)
    thread.start()
    assert wait_until(lambda: p.last_processed_event_id == 3)
    store.sink(Tick(aggregate_id="t", n=3))
    assert wait_until(lambda: p.seen == [3])
    stop.set()
    thread.join(WAIT)
    p.reset()
    store.sink(Tick(aggregate_id="t", n=4))
    es.run_processor(p, store, stop=lambda: p.last_processed_event_id >= 5)
    assert p.seen == [3]  # after reset it started after event 5 again: nothing old re-processed
    with pytest.raises(ValueError, match="start_from"):
        type("Bad", (es.EventStreamProcessor,), {"start_from": "middle"})


# --- 5. children die with the runner --------------------------------------------------------------


def test_children_stop_when_the_runner_is_killed_and_a_new_runner_takes_over(tmp_path):
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink(Ping(aggregate_id="p", n=1))
    spec = dict(store=store_path, start_method="fork", max_seconds=5,
                processors=[{"kind": "ping_reactor"}])
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = RunnerProcess(first_dir, **spec)
    try:
        assert wait_until(lambda: first.child_pid(ps.PingReactor.processor_name)), (
            first.diagnostics())
        child = first.child_pid(ps.PingReactor.processor_name)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(WAIT)
        assert wait_until(lambda: not os.path.exists(f"/proc/{child}") or
                          read_text(f"/proc/{child}/stat").rsplit(")", 1)[-1].split()[:1]
                              == ["Z"]), (f"child {child} outlived its runner\n"
                                          f"{first.diagnostics()}")
        assert not store.is_running(ps.PingReactor.processor_name)
    finally:
        first.cleanup()
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = RunnerProcess(second_dir, **spec)
    try:
        assert wait_until(lambda: second.child_pid(ps.PingReactor.processor_name)), (
            second.diagnostics())
        assert wait_until(lambda: store.is_running(ps.PingReactor.processor_name))
        assert second.stop() == 0, second.diagnostics()
    finally:
        second.cleanup()


# --- 6. status that tells the truth ---------------------------------------------------------------


def test_statuses_say_failing_with_the_error_while_a_processor_retries(db_store):
    sink_pings(db_store, 1, 5)
    reactor = CountingPonger(db_store, fail_on=3, fail_times=10**6)
    running = Background(reactor, db_store, es.ConstantRetry(0.02))
    assert wait_until(lambda: any(s.state == "failing" for s in es.processor_statuses(db_store)))
    status = {s.name: s for s in es.processor_statuses(db_store)}["counting_ponger"]
    assert (status.running and status.failing_event_id == 3
            and "failing on ping 3" in status.last_error)
    assert status.position == 2
    reactor.fail_times = 0
    assert wait_until(
        lambda: {s.name: s for s in es.processor_statuses(db_store)}["counting_ponger"].state
        == "running")
    running.finish()
    assert ({s.name: s for s in es.processor_statuses(db_store)}["counting_ponger"].state
            == "stopped")


def test_an_idle_filtered_processor_has_no_lag_and_a_projector_with_its_own_database_is_listed(
        db_store, tmp_path):
    sink_pings(db_store, 1, 3)
    projector = ps.CountingProjector(str(tmp_path / "projection.db"))
    projector_run = Background(projector, db_store)
    reactor = CountingPonger(db_store)
    reactor_run = Background(reactor, db_store)
    # no more events of its own to come
    assert wait_until(lambda: sum(pongs_per_ping(db_store).values()) == 3)
    for n in range(5):
        db_store.sink(Tick(aggregate_id="unhandled", n=n))  # the reactor does not handle ticks
    latest = db_store.latest_event_id()
    assert reactor.wait_for(latest, timeout=WAIT) and projector.wait_for(latest, timeout=WAIT)
    statuses = {s.name: s for s in es.processor_statuses(db_store)}
    assert statuses["counting_ponger"].lag == 0 and statuses["counting_ponger"].state == "running"
    assert statuses["event_counter"].lag == 0 and statuses["event_counter"].kind == "projector"
    assert statuses["event_counter"].running
    projector_run.finish()
    reactor_run.finish()


def test_a_standby_logs_once_naming_the_pid_and_host_holding_the_name(tmp_path, caplog):
    path = tmp_path / "events.db"
    holder = Background(CountingPonger(es.SQLiteEventStore(path)), es.SQLiteEventStore(path))
    assert wait_until(lambda: holder.processor.tracker.record("counting_ponger").owner)
    with caplog.at_level(logging.INFO, logger="eventsourcery"):
        standby = Background(CountingPonger(es.SQLiteEventStore(path)), es.SQLiteEventStore(path),
                             es.ConstantRetry(0.01))
        tracker = holder.processor.tracker
        assert wait_until(lambda: tracker.record("counting_ponger").standby is not None)
        first_try = tracker.record("counting_ponger").standby_at
        # it tried again
        assert wait_until(lambda: tracker.record("counting_ponger").standby_at != first_try)
        standby.finish()
    lines = [r.getMessage() for r in caplog.records if "standby" in r.getMessage()]
    assert len(lines) == 1 and f"pid {os.getpid()} on host" in lines[0]
    holder.finish()


# --- 7. read-your-writes --------------------------------------------------------------------------


def test_wait_for_returns_once_the_position_reaches_the_event_and_false_on_timeout(
        db_store, tmp_path):
    projector = ps.CountingProjector(str(tmp_path / "projection.db"))
    assert projector.wait_for(1, timeout=0.01) is False
    running = Background(projector, db_store)
    written = db_store.sink(Tick(aggregate_id="t", n=1))[0]
    # another instance: reads the tracker
    reader = ps.CountingProjector(str(tmp_path / "projection.db"))
    assert reader.wait_for(written.id, timeout=WAIT) is True
    assert ps.projection_of(str(tmp_path / "projection.db"))["counts"] == {"t": 1}
    running.finish()
