"""Many threads, one store object: the guarantees hold on every backend.

* writers racing on shared aggregates: exactly one winner per version, no
  sink lost, ids gapless and in commit order;
* a tailing subscriber in another thread sees every id once, in order;
* each thread's ``transaction()`` is its own: its atomicity, its
  read-your-own-writes, and (SQLite, Postgres) other threads' reads do not
  wait for it nor see its uncommitted writes;
* Postgres: connections of ended threads are handed to new ones;
* kill -9 of a process with writer threads leaves only whole sinks, and
  every acknowledged one.

Every wait is bounded (``WAIT``); nothing here depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import eventsourcery as es
from tests._util import WAIT, everything_in
from tests.events import Numbered

THREADS = 8


def run_threads(target, n: int = THREADS) -> list:
    """Run ``target(i)`` in n threads started together; returns their results (re-raises the first
    error)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i):
        try:
            barrier.wait(WAIT)
            results[i] = target(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


class Tail:
    """A subscriber thread reading the store from id 1 until it has seen ``total`` events: ``seen``
    holds their ids in the order it got them, ``failed`` what it raised."""

    def __init__(self, store, total: int) -> None:
        self.total = total
        self.stop = threading.Event()
        self.seen: list[int] = []
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._tail, args=(store,), daemon=True)
        self.thread.start()

    def _tail(self, store) -> None:
        try:
            for batch in store.subscribe(1, stop=self.stop):
                self.seen.extend(e.id for e in batch)
                if len(self.seen) >= self.total:
                    return
        except BaseException as exc:
            self.failed.append(exc)

    def assert_saw_every_id_once_in_order(self) -> None:
        """Wait (bounded) for the subscriber, then check it saw ids 1..total, each once, in
        order."""
        self.thread.join(WAIT)
        self.stop.set()
        assert not self.thread.is_alive(), (
            f"the subscriber saw {len(self.seen)} of {self.total} events")
        assert not self.failed, self.failed
        assert self.seen == list(range(1, self.total + 1))


def assert_log_is_whole(events) -> None:
    """Ids 1..n without a gap, and every aggregate's versions 1..k without a gap, in id order."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, int] = {}
    for e in events:
        versions[e.aggregate_id] = versions.get(e.aggregate_id, 0) + 1
        assert e.version == versions[e.aggregate_id], e


def test_writer_threads_racing_on_shared_aggregates_one_winner_per_version(store):
    shared = ["shared-a", "shared-b"]
    attempts = 12

    def writer(i):
        won, own = [], f"own-{i}"
        for n in range(attempts):
            aggregate_id = shared[n % 2]
            version = store.aggregate_version(aggregate_id)
            try:
                won.extend(store.sink(Numbered(aggregate_id=aggregate_id, e=i * 1000 + n),
                                      expected_version=version))
            except es.ConcurrencyError:
                pass
            # and a batch to an aggregate of its own, which never conflicts
            won.extend(store.sink([Numbered(aggregate_id=own, e=i * 1000 + n * 10 + k)
                                   for k in range(2)], expected_version=2 * n))
        return won

    results = run_threads(writer)
    stored = everything_in(store)
    assert_log_is_whole(stored)
    returned = sorted((e for won in results for e in won), key=lambda e: e.id)
    assert returned == stored  # every acknowledged sink is stored as returned; nothing else is
    for aggregate_id in shared:  # exactly one winner per version
        versions = [e.version for e in stored if e.aggregate_id == aggregate_id]
        assert versions == list(range(1, len(versions) + 1)) and versions
    for i in range(THREADS):
        assert store.aggregate_version(f"own-{i}") == 2 * attempts


def test_threads_racing_for_the_first_version_of_new_aggregates(store):
    rounds = 10
    ids = [f"race-{r}" for r in range(rounds)]

    def racer(i):
        outcome = []
        for aggregate_id in ids:
            try:
                store.sink(Numbered(aggregate_id=aggregate_id, e=i), expected_version=0)
                outcome.append("won")
            except es.ConcurrencyError:
                outcome.append("lost")
        return outcome

    results = run_threads(racer)
    for r, aggregate_id in enumerate(ids):
        assert sorted(result[r] for result in results) == ["lost"] * (THREADS - 1) + ["won"]
        (event,) = store.get_events_for_aggregate_id(aggregate_id)
        assert results[event.e][r] == "won"
    assert_log_is_whole(everything_in(store))


def test_a_tailing_subscriber_thread_sees_every_id_once_in_order(store):
    writers, sinks_each = 4, 15
    # singles and batches of 3
    tail = Tail(store, writers * sum(1 if n % 2 else 3 for n in range(sinks_each)))

    def writer(i):
        for n in range(sinks_each):
            size = 1 if n % 2 else 3
            store.sink([Numbered(aggregate_id=f"w{i}-{n}", e=k) for k in range(size)])

    run_threads(writer, writers)
    tail.assert_saw_every_id_once_in_order()


def test_a_sink_in_a_threads_transaction_keeps_that_transactions_atomicity(store):
    def worker(i):
        if i % 2:
            with pytest.raises(RuntimeError), store.transaction():
                store.sink(Numbered(aggregate_id=f"atomic-{i}-a", e=1))
                store.sink(Numbered(aggregate_id=f"atomic-{i}-b", e=2))
                raise RuntimeError("roll back both")
        else:
            with store.transaction():
                store.sink(Numbered(aggregate_id=f"atomic-{i}-a", e=1))
                store.sink(Numbered(aggregate_id=f"atomic-{i}-b", e=2))

    run_threads(worker)
    stored = everything_in(store)
    assert_log_is_whole(stored)
    assert sorted(e.aggregate_id for e in stored) == sorted(
        f"atomic-{i}-{s}" for i in range(0, THREADS, 2) for s in "ab")
    for i in range(0, THREADS, 2):  # the two sinks of one transaction are neighbours
        a, b = (e.id for e in stored if e.aggregate_id.startswith(f"atomic-{i}-"))
        assert b == a + 1


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_reads_of_other_threads_do_not_wait_for_a_transaction_nor_see_it(store):
    store.sink(Numbered(aggregate_id="before", e=0))
    inside, release = threading.Event(), threading.Event()
    seen_inside: list = []

    def writer():
        with store.transaction():
            store.sink(Numbered(aggregate_id="pending", e=1))
            seen_inside.append(store.aggregate_version("pending"))  # read-your-own-writes
            seen_inside.append(len(store.get_next_from(1)))
            seen_inside.append(store.database.in_transaction())
            inside.set()
            release.wait(WAIT)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert inside.wait(WAIT)
        # The write is in progress and holds its locks; this thread reads beside it.
        assert not store.database.in_transaction()
        assert store.aggregate_version("pending") == 0
        assert [e.aggregate_id for e in store.get_next_from(1)] == ["before"]
        assert store.latest_event_id() == 1
        assert store.snapshots("pending") == []
        assert seen_inside == [1, 2, True]
    finally:
        release.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert store.aggregate_version("pending") == 1


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_thread_that_only_reads_never_holds_up_another_threads_write(store):
    def write_in_another_thread(aggregate_id):
        writer = threading.Thread(
            target=lambda: store.sink(Numbered(aggregate_id=aggregate_id, e=0)))
        writer.start()
        writer.join(WAIT)
        return not writer.is_alive()

    assert write_in_another_thread("a")
    for _ in range(2):
        with store.database.reading() as conn:  # a read in progress in this thread
            conn.execute("SELECT 1").fetchall()
            assert write_in_another_thread("b"), "a write waited for another thread's read"
    assert [e.aggregate_id for e in store.get_next_from(1)] == ["a", "b", "b"]


def test_on_sqlite_the_thread_that_last_wrote_reads_on_the_writer_and_others_on_their_own(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "events.db")
    store.sink(Numbered(aggregate_id="a", e=0))
    db = store.database
    with db.reading() as conn:
        assert conn is db.connection  # its pages are warm there: no other thread is using it
    lent: list = []

    def other_thread():
        with db.reading() as conn:
            lent.append(conn)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(WAIT)
    assert lent and lent[0] is not db.connection
    store.close()


@pytest.mark.parametrize("store_kind", ["postgres"])
def test_postgres_connections_of_ended_threads_are_handed_to_new_threads(store):
    together = threading.Barrier(4)

    def backend_pid(i):
        store.latest_event_id()
        pid = store.connection.info.backend_pid
        together.wait(WAIT)  # all four alive at once: none can take over another's connection
        return pid

    first = set(run_threads(backend_pid, 4))
    assert len(first) == 4  # a connection of its own per thread
    second = set(run_threads(backend_pid, 4))
    assert second == first  # the ended threads' connections, not new ones
    main = store.connection.info.backend_pid
    assert main not in first


KILLED_WRITER = r"""
import sys, threading
import eventsourcery as es
from tests.events import Numbered

store = es.open_store(sys.argv[1])
out_lock = threading.Lock()

def write(worker):
    n = 0
    while True:
        batch = [Numbered(aggregate_id=f"killed-{worker}", e=n * 10 + k) for k in range(3)]
        store.sink(batch)
        with out_lock:
            sys.stdout.write(f"{batch[0].uuid} {batch[1].uuid} {batch[2].uuid}\n")
            sys.stdout.flush()
        n += 1

threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_kill_9_of_a_process_with_writer_threads_leaves_only_whole_acknowledged_sinks(
        store, db_path):
    if isinstance(store, es.SQLiteEventStore):
        url = str(db_path)
    else:
        from tests import pg_support

        url = pg_support.store_url(store.schema)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    acked: list[list[str]] = []
    for _ in range(2):  # a second writer process continues the log the first one left
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, url], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": root}, cwd=root)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                acked.append(line.split())
                if len(acked) % 40 == 0:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate(timeout=WAIT)
            acked.extend(line.split() for line in rest.splitlines() if len(line.split()) == 3)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
        assert proc.returncode == -signal.SIGKILL
    stored = everything_in(store)
    assert_log_is_whole(stored)
    uuids = {e.uuid for e in stored}
    for batch in acked:  # every acknowledged sink is stored
        assert set(batch) <= uuids, batch
    by_aggregate: dict[str, list[int]] = {}
    for e in stored:
        by_aggregate.setdefault(e.aggregate_id, []).append(e.e)
    for values in by_aggregate.values():  # whole batches of three, nothing torn
        assert len(values) % 3 == 0
        assert all(values[k] % 10 == k % 3 and values[k] // 10 == values[k - k % 3] // 10
                   for k in range(len(values)))
