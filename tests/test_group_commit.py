"""Group commit: sinks of many threads of one process share the writer's transaction (SQLite).

A sink that finds the writer busy queues; whichever thread gets the writer
next commits every queued sink with its own in one transaction, a savepoint
each. What must hold whatever the grouping:

* writers racing on shared aggregates with ``expected_version``: exactly one
  winner per version, the losers get ConcurrencyError, nothing is lost;
  on distinct aggregates every sink is stored, ids gapless, each caller's
  returned copies as stored (SQLite and Postgres);
* in one group a conflicting sink (ConcurrencyError, DuplicateEventError)
  fails alone and the others commit; a failed COMMIT fails every sink of the
  group, and nothing of it is stored; an error that ends the transaction
  fails the group too;
* a sink inside a ``transaction()`` stays in that transaction, and a thread
  that holds the writer's lock commits the queued sinks instead of waiting
  for them (no deadlock);
* a tailing subscriber sees every id once, in order;
* kill -9 of a process in the middle of group commits leaves only whole
  sinks, and every acknowledged one; a forked child sinks with a queue of
  its own.

The grouping tests are deterministic: the test holds the writer's lock
while the sinks queue (it waits, bounded, until they have), then lets go.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import eventsourcery as es
from tests._util import WAIT, everything_in, wait_until
from tests.events import Numbered
from tests.test_threads import Tail, assert_log_is_whole, run_threads

THREADS = 16


@pytest.fixture
def sqlite_store(db_path):
    store = es.SQLiteEventStore(db_path)
    try:
        yield store
    finally:
        store.close()


def queued(store: es.SQLiteEventStore) -> int:
    """How many sinks wait in the store's writer queue (behind a leader)."""
    return len(store.database._group._writers.waiting)


class Sinks:
    """Sinks started in threads of their own while the test holds the writer; outcomes by name."""

    def __init__(self, store: es.SQLiteEventStore) -> None:
        self.store = store
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[str, object] = {}

    def start(self, name: str, events, expected_version=None) -> None:
        """Start one sink and wait (bounded) until it is queued for the writer."""
        before = queued(self.store)

        def run():
            try:
                self.outcomes[name] = self.store.sink(events, expected_version=expected_version)
            except BaseException as exc:  # the outcome the test looks at
                self.outcomes[name] = exc

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        assert wait_until(lambda: queued(self.store) == before + 1,
                          interval=0.001), f"sink {name} never queued"

    def finish(self) -> dict[str, object]:
        for thread in self.threads:
            thread.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "a sink hung"
        return self.outcomes


def events_of(store, aggregate_id: str) -> list:
    return store.get_events_for_aggregate_id(aggregate_id)


# --- racing threads (SQLite groups them; Postgres gives each thread its own connection) ----------


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_threads_racing_on_shared_aggregates_one_winner_per_version_losers_get_concurrency_errors(
        store):
    shared = [f"shared-{k}" for k in range(3)]
    attempts = 15

    def writer(i):
        won, lost = [], 0
        for n in range(attempts):
            aggregate_id = shared[(i + n) % len(shared)]
            version = store.aggregate_version(aggregate_id)
            try:
                won.extend(store.sink(Numbered(aggregate_id=aggregate_id, e=i * 1000 + n),
                                      expected_version=version))
            except es.ConcurrencyError:
                lost += 1
        return won, lost

    results = run_threads(writer, THREADS)
    stored = everything_in(store)
    assert_log_is_whole(stored)
    returned = sorted((e for won, _ in results for e in won), key=lambda e: e.id)
    assert returned == stored  # every winner stored as returned, and nothing else
    # each sink won or lost
    assert len(stored) + sum(lost for _, lost in results) == THREADS * attempts
    for aggregate_id in shared:  # one winner per version: versions 1..k, each written once
        versions = [e.version for e in stored if e.aggregate_id == aggregate_id]
        assert versions == list(range(1, len(versions) + 1))


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_threads_on_distinct_aggregates_all_stored_ids_gapless_returned_as_stored(store):
    sinks_each = 20

    def writer(i):
        out = []
        for n in range(sinks_each):
            size = 1 + (i + n) % 3
            out.append(store.sink([Numbered(aggregate_id=f"own-{i}", e=n * 10 + k)
                                   for k in range(size)],
                                  expected_version=sum(1 + (i + m) % 3 for m in range(n))))
        return out

    results = run_threads(writer, THREADS)
    stored = everything_in(store)
    total = sum(1 + (i + n) % 3 for i in range(THREADS) for n in range(sinks_each))
    assert [e.id for e in stored] == list(range(1, total + 1))
    assert_log_is_whole(stored)
    by_id = {e.id: e for e in stored}
    for copies in (c for out in results for c in out):
        ids = [e.id for e in copies]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # a sink's ids are contiguous
        assert [by_id[e.id] for e in copies] == copies  # what the caller got is what is stored


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_tailing_subscriber_sees_every_id_once_in_order_under_many_writer_threads(store):
    sinks_each = 25
    tail = Tail(store, THREADS * sum(1 if n % 3 else 2 for n in range(sinks_each)))

    def writer(i):
        for n in range(sinks_each):
            store.sink([Numbered(aggregate_id=f"t{i}-{n}", e=k) for k in range(1 if n % 3 else 2)])

    run_threads(writer, THREADS)
    tail.assert_saw_every_id_once_in_order()


# --- one group, made deterministic by holding the writer while the sinks queue --------------------


def test_queued_sinks_commit_in_one_transaction_in_queue_order(sqlite_store):
    store = sqlite_store
    sinks = Sinks(store)
    commits = store.database.commits
    with store.database.lock:
        for n in range(6):
            sinks.start(f"s{n}", Numbered(aggregate_id=f"g-{n}", e=n))
        # the first waits for the lock
        assert queued(store) == 6 and store.database._group._writers.leader
    outcomes = sinks.finish()
    assert store.database.commits == commits + 1  # one COMMIT for the six
    assert [outcomes[f"s{n}"][0].id for n in range(6)] == [1, 2, 3, 4, 5, 6]  # in queue order
    assert [e.aggregate_id for e in everything_in(store)] == [f"g-{n}" for n in range(6)]
    assert queued(store) == 0 and not store.database._group._writers.leader


def test_a_conflicting_sink_in_a_group_fails_alone_and_the_others_commit(sqlite_store):
    store = sqlite_store
    first = store.sink(Numbered(aggregate_id="taken", e=0))[0]
    sinks = Sinks(store)
    commits = store.database.commits
    with store.database.lock:
        sinks.start("ok-1", Numbered(aggregate_id="a", e=1))
        sinks.start("stale", Numbered(aggregate_id="taken", e=2), expected_version=0)  # it is at 1
        sinks.start("ok-2", [Numbered(aggregate_id="b", e=3), Numbered(aggregate_id="b", e=4)])
        sinks.start("duplicate", [Numbered(aggregate_id="c", e=5),
                                  Numbered(aggregate_id="c", e=6, uuid=first.uuid)])
        sinks.start("ok-3", Numbered(aggregate_id="taken", e=7), expected_version=1)
        # ok-1 wrote it first
        sinks.start("first-write", Numbered(aggregate_id="a", e=8), expected_version=0)
    outcomes = sinks.finish()
    assert store.database.commits == commits + 1
    assert (isinstance(outcomes["stale"], es.ConcurrencyError)
            and "expected 0" in str(outcomes["stale"]))
    assert isinstance(outcomes["duplicate"], es.DuplicateEventError)
    assert isinstance(outcomes["first-write"], es.ConcurrencyError)
    stored = everything_in(store)
    assert_log_is_whole(stored)  # the failed ones left no gap: ids run on
    assert [(e.aggregate_id, e.e) for e in stored] == [("taken", 0), ("a", 1), ("b", 3), ("b", 4),
                                                       ("taken", 7)]
    assert [e.id for e in outcomes["ok-2"]] == [3, 4] and outcomes["ok-3"][0].version == 2
    assert events_of(store, "c") == []  # the duplicate's first event was undone with its savepoint


def test_sinks_queued_while_a_group_commits_are_committed_next_by_one_of_their_threads(
        sqlite_store):
    store = sqlite_store
    entered, release = threading.Event(), threading.Event()

    def hold() -> int:  # called by the trigger below, in the thread that runs the group
        entered.set()
        assert release.wait(WAIT)
        return 1

    store.connection.create_function("hold", 0, hold)
    store.connection.execute("CREATE TRIGGER slow AFTER INSERT ON events WHEN NEW.aggregate_id = "
                             "'slow' BEGIN SELECT hold(); END")
    first, second = Sinks(store), Sinks(store)
    commits = store.database.commits
    with store.database.lock:
        first.start("slow", Numbered(aggregate_id="slow", e=0))
        first.start("a", Numbered(aggregate_id="a", e=1))
    assert entered.wait(WAIT)  # the first group is in its transaction, holding the writer
    for n in range(3):
        second.start(f"b{n}", Numbered(aggregate_id=f"b{n}", e=n))
    release.set()
    outcomes = {**first.finish(), **second.finish()}
    # the first group, then the second, led by b0's thread
    assert store.database.commits == commits + 2
    assert [outcomes[k][0].id for k in ("slow", "a", "b0", "b1", "b2")] == [1, 2, 3, 4, 5]
    assert queued(store) == 0 and not store.database._group._writers.leader


def _deferred_failure(store: es.SQLiteEventStore, *, poison: str) -> None:
    """A sink to aggregate ``poison`` makes the COMMIT of its transaction fail (a deferred foreign
    key)."""
    conn = store.connection
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE "
                 "INITIALLY DEFERRED)")
    conn.execute(f"CREATE TRIGGER poison AFTER INSERT ON events WHEN NEW.aggregate_id = '{poison}' "
                 "BEGIN INSERT INTO child VALUES (-1); END")


def test_a_failed_commit_fails_every_sink_of_the_group_and_stores_none(sqlite_store):
    store = sqlite_store
    _deferred_failure(store, poison="poison")
    with pytest.raises(es.StoreError) as alone:  # one sink alone: as it always was
        store.sink(Numbered(aggregate_id="poison", e=0))
    assert isinstance(alone.value.__cause__, sqlite3.Error)
    sinks = Sinks(store)
    with store.database.lock:
        for n in range(3):
            sinks.start(f"s{n}", Numbered(aggregate_id=f"innocent-{n}", e=n))
        sinks.start("poison", Numbered(aggregate_id="poison", e=9))
    outcomes = sinks.finish()
    errors = list(outcomes.values())
    assert all(type(e) is es.StoreError and "commit" in str(e) for e in errors), errors
    assert all(isinstance(e.__cause__, sqlite3.IntegrityError) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)  # an exception object of its own each
    assert everything_in(store) == []
    # the writer is fine afterwards
    assert store.sink(Numbered(aggregate_id="after", e=1))[0].id == 1


def test_an_error_that_ends_the_transaction_fails_the_whole_group(sqlite_store):
    store = sqlite_store
    store.connection.execute("CREATE TRIGGER doom AFTER INSERT ON events WHEN NEW.aggregate_id = "
                             "'doom' BEGIN SELECT RAISE(ROLLBACK, 'doomed'); END")
    sinks = Sinks(store)
    with store.database.lock:
        sinks.start("before", Numbered(aggregate_id="x", e=1))
        sinks.start("doom", Numbered(aggregate_id="doom", e=2))
        sinks.start("after", Numbered(aggregate_id="y", e=3))
    outcomes = sinks.finish()
    assert isinstance(outcomes["doom"], es.ConcurrencyError) and "doomed" in str(outcomes["doom"])
    for name in ("before", "after"):
        assert (type(outcomes[name]) is es.StoreError
                and "rolled back" in str(outcomes[name])), outcomes[name]
    assert everything_in(store) == []
    assert not store.database.in_transaction()
    assert store.sink(Numbered(aggregate_id="x", e=4))[0].id == 1


def test_a_sink_inside_a_transaction_stays_in_it_while_other_threads_sinks_wait(sqlite_store):
    store = sqlite_store
    sinks = Sinks(store)
    with pytest.raises(RuntimeError), store.transaction():
        store.sink(Numbered(aggregate_id="mine", e=0))
        for n in range(3):
            sinks.start(f"s{n}", Numbered(aggregate_id=f"theirs-{n}", e=n))
        # joins this transaction, takes no queued sink
        store.sink(Numbered(aggregate_id="mine", e=1))
        assert queued(store) == 3
        raise RuntimeError("roll back mine only")
    outcomes = sinks.finish()
    assert all(isinstance(v, list) for v in outcomes.values()), outcomes
    stored = everything_in(store)
    assert_log_is_whole(stored)
    assert sorted(e.aggregate_id for e in stored) == ["theirs-0", "theirs-1", "theirs-2"]


def test_a_thread_holding_the_writers_lock_commits_the_queued_sinks_with_its_own(sqlite_store):
    store = sqlite_store
    sinks = Sinks(store)
    commits = store.database.commits
    with store.database.lock:
        for n in range(4):
            sinks.start(f"s{n}", Numbered(aggregate_id=f"q-{n}", e=n))
        # The leader waits for this lock; waiting for the queue here would never end.
        mine = store.sink(Numbered(aggregate_id="holder", e=9))
        assert queued(store) == 0 and store.database.commits == commits + 1
        assert mine[0].id == 1
        assert ([e.aggregate_id for e in everything_in(store)]
                == ["holder", "q-0", "q-1", "q-2", "q-3"])
    outcomes = sinks.finish()
    # the leader found its own sink committed: nothing left
    assert store.database.commits == commits + 1
    assert [outcomes[f"s{n}"][0].id for n in range(4)] == [2, 3, 4, 5]
    assert not store.database._group._writers.leader


# --- processes: kill -9 in the middle of group commits, fork -------------------------------------

KILLED_GROUP_WRITER = r"""
import sys, threading
import eventsourcery as es
from tests.events import Numbered

store = es.SQLiteEventStore(sys.argv[1])
threads = int(sys.argv[2])
out = open(sys.argv[3], "a", buffering=1)
out_lock = threading.Lock()

def write(worker):
    n = 0
    while True:
        size = 1 + n % 3
        batch = [Numbered(aggregate_id=f"killed-{worker}", e=n * 10 + k) for k in range(size)]
        store.sink(batch)
        with out_lock:  # acknowledged: written only after sink returned
            out.write(" ".join(e.uuid for e in batch) + "\n")
        n += 1

for w in range(threads):
    threading.Thread(target=write, args=(w,), daemon=True).start()
threading.Event().wait()
"""


def test_kill_9_in_the_middle_of_group_commits_leaves_only_whole_and_all_acknowledged_sinks(
        db_path, tmp_path):
    es.SQLiteEventStore(db_path).close()
    acks = tmp_path / "acks.txt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for round_ in range(3):  # each process continues the log the one before it left
        goal = (round_ + 1) * 300
        proc = subprocess.Popen([sys.executable, "-c", KILLED_GROUP_WRITER, str(db_path),
                                 str(THREADS), str(acks)], env={**os.environ, "PYTHONPATH": root},
                                cwd=root)
        try:
            assert wait_until(lambda goal=goal: acks.exists() and acks.read_text().count("\n")
                              >= goal, interval=0.01), "the writer process acknowledged too little"
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(WAIT) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
    acked = [line.split() for line in acks.read_text().splitlines() if line.strip()]
    store = es.SQLiteEventStore(db_path)
    try:
        stored = everything_in(store)
    finally:
        store.close()
    assert_log_is_whole(stored)
    uuids = {e.uuid for e in stored}
    assert all(set(batch) <= uuids for batch in acked)  # every acknowledged sink is stored
    by_aggregate: dict[str, list[int]] = {}
    for e in stored:
        by_aggregate.setdefault(e.aggregate_id, []).append(e.e)
    # whole sinks (of 1 + n % 3 events for the n-th), nothing torn
    for values in by_aggregate.values():
        k = 0
        while k < len(values):
            n = values[k] // 10
            size = 1 + n % 3
            assert values[k:k + size] == [n * 10 + j for j in range(size)], values[k:k + size]
            k += size


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_threads_sink_in_groups_sinks_with_a_queue_of_its_own(sqlite_store):
    store = sqlite_store
    stop = threading.Event()
    done: list[int] = []

    def writer(i):
        n = 0
        while not stop.is_set():
            store.sink(Numbered(aggregate_id=f"parent-{i}", e=n))
            n += 1
        done.append(n)

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: store.latest_event_id() >= 200, interval=0.001)
        pid = os.fork()
        if pid == 0:  # the child: its own threads sink, grouped on its own connection
            code = 1
            try:
                results = run_threads(
                    lambda i: store.sink(Numbered(aggregate_id=f"child-{i}", e=i)), 4)
                code = 0 if all(len(r) == 1 for r in results) else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + WAIT
        while True:
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not waited:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert len(done) == 8
    stored = everything_in(store)
    assert_log_is_whole(stored)
    assert sorted(e.aggregate_id for e in stored if e.aggregate_id.startswith("child-")) == [
        f"child-{i}" for i in range(4)]
