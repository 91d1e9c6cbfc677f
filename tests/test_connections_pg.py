"""Bounded connections on Postgres (SPEC 5), on a private server started with ``max_connections =
100`` (never the shared one): one store object shared by 120 threads, or by the ``eventsourcing``
peer's 100-thread contention test, stays within its ``max_connections`` (counted in pg_stat_activity
while the threads run) and every thread's work succeeds; threads that get no connection in time get
es.StoreError, and no connection leaks.
"""

from __future__ import annotations

import threading
import time
import unittest

import pytest

import eventsourcery as es
from tests.events import ItemAdded
from tests.pg_cluster import PrivateCluster, in_ci, require_server_binaries

if in_ci():
    import psycopg
else:
    psycopg = pytest.importorskip("psycopg")

import eventsourcery_pg as es_pg  # noqa: E402

BOUND = 60.0  # seconds any one wait may take; reached only when something hangs
# the server's default, which 120 threads of one store object used to exceed
SERVER_MAX_CONNECTIONS = 100


@pytest.fixture(scope="module")
def cluster():
    bindir = require_server_binaries()
    with PrivateCluster(bindir, settings={"max_connections": SERVER_MAX_CONNECTIONS}) as private:
        yield private


_schemas = iter(range(10**6))


class _Sampler:
    """Counts, every few milliseconds until stopped, the client sessions on the private server other
    than its own (the store's: nothing else connects to it meanwhile); ``most`` is the highest count
    seen."""

    def __init__(self, cluster: PrivateCluster) -> None:
        self.conn = psycopg.connect(cluster.url, autocommit=True,
                                    application_name="es test sampler")
        self.most = 0
        self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                     "'client backend' AND pid <> pg_backend_pid()").fetchone()[0])

    def _run(self) -> None:
        while not self.done.is_set():
            self.most = max(self.most, self.count())
            self.samples += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(BOUND)
        assert not self.thread.is_alive()

    def close(self) -> None:
        self.stop()
        self.conn.close()

    def settled_count(self) -> int:
        """The count once the sessions of closed connections have ended on the server (their
        backends exit a moment after the client hangs up): 0 as soon as it is, else the count after
        a while."""
        deadline = time.monotonic() + 10
        while (count := self.count()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return count


def _run_threads(count: int, work) -> list[BaseException]:
    """``work(i)`` in ``count`` threads started together; the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count, timeout=BOUND)

    def run(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 2)
        assert not thread.is_alive()
    return errors


@pytest.mark.parametrize("max_connections", [None, 4])
def test_120_threads_on_one_store_object_stay_within_max_connections(cluster, max_connections):
    cluster.ensure_running()
    url = f"{cluster.url}?schema=bound_{next(_schemas)}"
    if max_connections is None:  # the default, 10
        store, bound = es_pg.PostgresEventStore(url), 10
    else:
        store, bound = es.open_store(url, max_connections=max_connections), max_connections
    threads, rounds = 120, 4
    sampler = _Sampler(cluster)
    try:
        def work(i: int) -> None:
            aggregate = f"agg-{i}"
            for k in range(rounds):
                store.sink(ItemAdded(aggregate_id=aggregate, title=f"{i}.{k}"),
                           expected_version=2 * k)
                with store.transaction():  # a transaction keeps its connection throughout
                    assert store.aggregate_version(aggregate) == 2 * k + 1
                    store.sink(ItemAdded(aggregate_id=aggregate, title=f"{i}.{k}b"),
                               expected_version=2 * k + 1)
                titles = [e.title for e in store.get_events_for_aggregate_id(aggregate)]
                assert titles[-2:] == [f"{i}.{k}", f"{i}.{k}b"]
                store.get_next_from(max(store.latest_event_id() - 20, 1), limit=20)
                store.tracker().processed_event(f"reader-{i}", k + 1)

        errors = _run_threads(threads, work)
        sampler.stop()
        assert errors == []
        events = store.get_next_from(1, limit=10_000)
        expected = sorted(f"{i}.{k}{b}" for i in range(threads) for k in range(rounds)
                          for b in ("", "b"))
        assert sorted(e.title for e in events) == expected  # all stored, none twice
        assert [e.id for e in events] == list(range(1, len(expected) + 1))
        assert store.tracker().positions() == {f"reader-{i}": rounds for i in range(threads)}
        assert sampler.samples > 10
        assert 2 <= sampler.most <= bound, f"{sampler.most} connections seen, bound {bound}"
        store.close()
        assert sampler.settled_count() == 0
    finally:
        sampler.close()
        store.close()


def test_threads_that_get_no_connection_in_time_get_a_store_error_and_nothing_leaks(cluster):
    cluster.ensure_running()
    store = es_pg.PostgresEventStore(f"{cluster.url}?schema=bound_{next(_schemas)}",
                                     max_connections=3, connection_timeout=0.2)
    sampler = _Sampler(cluster)
    stored: list[str] = []
    timed_out: list[es.StoreError] = []
    lock = threading.Lock()
    try:
        def work(i: int) -> None:
            for k in range(3):
                title = f"{i}.{k}"
                try:
                    # holds its connection while it sleeps: others run out
                    with store.transaction():
                        store.sink(ItemAdded(aggregate_id=f"agg-{i}", title=title))
                        time.sleep(0.1)
                except es.StoreError as exc:
                    with lock:
                        timed_out.append(exc)
                else:
                    with lock:
                        stored.append(title)

        errors = _run_threads(20, work)
        sampler.stop()
        assert errors == []
        assert timed_out, "no thread ever waited out connection_timeout: the test shows nothing"
        for exc in timed_out:
            assert "max_connections=3" in str(exc) and "connection_timeout=0.2" in str(exc)
            assert "all 3 connections" in str(exc)
        assert sorted(e.title for e in store.get_next_from(1, limit=1000)) == sorted(stored)
        assert len(stored) + len(timed_out) == 60
        assert sampler.most <= 3
        assert sampler.count() <= 3  # the pool's, idle now
        store.close()
        assert sampler.settled_count() == 0  # no connection leaked
    finally:
        sampler.close()
        store.close()


def test_a_thread_keeps_its_connection_for_its_whole_transaction(cluster):
    cluster.ensure_running()
    store = es_pg.PostgresEventStore(f"{cluster.url}?schema=bound_{next(_schemas)}",
                                     max_connections=1, connection_timeout=0.3)
    in_transaction = threading.Event()
    done = threading.Event()
    seen: list[object] = []

    def other_thread() -> None:
        assert in_transaction.wait(BOUND)
        try:  # the one connection is the transaction's, between its statements too
            seen.append(store.get_next_from(1))
        except es.StoreError as exc:
            seen.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        with store.transaction() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            store.sink(ItemAdded(aggregate_id="a", title="inside"))
            in_transaction.set()
            assert done.wait(BOUND)
            # its own uncommitted write
            assert [e.title for e in store.get_next_from(1)] == ["inside"]
            assert store.connection.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    finally:
        in_transaction.set()
        thread.join(BOUND)
    assert len(seen) == 1 and isinstance(seen[0], es.StoreError), seen
    assert "max_connections=1" in str(seen[0])
    # committed, and the connection lent again
    assert [e.title for e in store.get_next_from(1)] == ["inside"]
    store.close()


# --- the `eventsourcing` peer's contention test, through our store --------------------------------

persistence = pytest.importorskip("eventsourcing.persistence")
peer_application_tests = pytest.importorskip("eventsourcing.tests.application")


class _OnOurStore(persistence.InfrastructureFactory):  # type: ignore[misc]
    """The peer's infrastructure factory whose recorders all record in ``store`` (set by the
    test)."""

    store: es.EventStore | None = None

    def _recorder(self):
        from tests.test_peer_process_recorder import EventsourceryProcessRecorder

        assert self.store is not None
        return EventsourceryProcessRecorder(self.store)

    def aggregate_recorder(self, purpose: str = "events"):
        assert purpose == "events"  # (no snapshots in the test)
        return self._recorder()

    def application_recorder(self):
        return self._recorder()

    def tracking_recorder(self, tracking_recorder_class=None):
        return self._recorder()

    def process_recorder(self):
        return self._recorder()


def test_the_eventsourcing_peers_100_thread_contention_test_passes_through_one_store(
        cluster, monkeypatch):
    from eventsourcing.utils import get_topic

    cluster.ensure_running()
    store = es_pg.PostgresEventStore(f"{cluster.url}?schema=bound_{next(_schemas)}")
    monkeypatch.setattr(_OnOurStore, "store", store)
    monkeypatch.setenv("PERSISTENCE_MODULE", get_topic(_OnOurStore))
    sampler = _Sampler(cluster)
    try:
        case = peer_application_tests.ApplicationTestCase(
            "test_check_aggregate_fastforwarding_blocking")
        result = unittest.TestResult()
        case.run(result)
        sampler.stop()
        assert result.testsRun == 1
        assert result.errors == [] and result.failures == [], result.errors + result.failures
        assert len(store.get_events_for_aggregate_id(store.get_next_from(1, limit=1)[0]
                                                     .aggregate_id)) >= 25
        assert sampler.most <= 10
    finally:
        sampler.close()
        store.close()
