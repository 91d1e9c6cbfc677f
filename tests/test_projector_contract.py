"""The projector contract: one projector class, written once, run on SQLite and on Postgres.

``TickProjector`` below is a plain ``es.Projector`` whose handlers write with
``self.db`` and ``self.placeholder`` only. The ``projection_db`` fixture gives
it each kind of database ``es.Projector(db)`` takes: an SQLite file path, an
open ``sqlite3.Connection``, and a ``postgresql://...?schema=<fresh schema>``
URL. The events come from every store (the ``store`` fixture). What is
specific to one database (Postgres schemas, the ``es_pg.Projector`` alias)
stays in test_postgres.py; processes killed under ESPRunner are in
test_runner.py. Every wait is bounded (tests._util.WAIT).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import traceback

import pytest

import eventsourcery as es
from tests import pg_support as pg
from tests._util import WAIT, join_all
from tests.processing_support import Tick

SPAWN = multiprocessing.get_context("spawn")
TOTALS = {"t0": 30, "t1": 25}  # tick_store's totals per aggregate: n = 1..10 on t(n % 2)


class TickProjector(es.Projector):
    """Each Tick's id and n, and a total per aggregate; fails on (or once on) the n's it is told
    to."""

    processor_name = "tick_projector"
    schema = """CREATE TABLE IF NOT EXISTS ticks (event_id INTEGER PRIMARY KEY,
                                                  n INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS tick_totals (aggregate_id TEXT PRIMARY KEY,
                                                        total INTEGER NOT NULL)"""

    def __init__(self, db, *, batch_size=None, fail_on=(), fail_once=()):
        super().__init__(db, batch_size=batch_size)
        self.fail_on = set(fail_on)
        self.fail_once = set(fail_once)

    @es.on(Tick)
    def _tick(self, event):
        p = self.placeholder
        self.db.execute(f"INSERT INTO ticks (event_id, n) VALUES ({p}, {p})", (event.id, event.n))
        self.db.execute(f"INSERT INTO tick_totals (aggregate_id, total) VALUES ({p}, {p}) ON "
                        "CONFLICT (aggregate_id) DO UPDATE SET total = tick_totals.total + "
                        "excluded.total", (event.aggregate_id, event.n))
        if event.n in self.fail_once:
            self.fail_once.discard(event.n)
            raise RuntimeError(f"fails once after writing n={event.n}")
        if event.n in self.fail_on:
            raise RuntimeError(f"fails after writing n={event.n}")


class OtherProjector(TickProjector):
    processor_name = "other_projector"
    schema = "CREATE TABLE IF NOT EXISTS other_ticks (event_id INTEGER PRIMARY KEY)"

    @es.on(Tick)
    def _tick(self, event):
        self.db.execute(f"INSERT INTO other_ticks (event_id) VALUES ({self.placeholder})",
                        (event.id,))


# =================================================================================================
# the databases
# =================================================================================================


class ProjectionDB:
    """One projection database: what to give ``es.Projector``, and its committed contents."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self._closers = []
        if kind.startswith("sqlite"):
            self.path = str(tmp_path / "projection.db")
            self.placeholder = "?"
            self.target = self.path if kind == "sqlite_path" else self._connection()
        else:
            self.schema = pg.new_schema()
            self.placeholder = "%s"
            self.target = pg.store_url(self.schema)

    @property
    def owns_connection(self):
        """Whether the projector opened (and so closes) its connection itself."""
        return self.kind != "sqlite_connection"

    def _connection(self):
        conn = sqlite3.connect(self.path)
        self._closers.append(conn.close)
        return conn

    def again(self):
        """A target for another projector instance on the same database (an open connection: a new
        one)."""
        return self._connection() if self.kind == "sqlite_connection" else self.target

    def projector(self, cls=TickProjector, target=None, **options):
        p = cls(self.target if target is None else target, **options)
        self._closers.append(p.close)
        return p

    def committed(self, sql):
        """Rows of ``sql`` read through a new connection: committed data only."""
        if self.kind.startswith("sqlite"):
            conn = sqlite3.connect(self.path)
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        with pg.connect() as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            return [tuple(r) for r in conn.execute(sql).fetchall()]

    def tables(self):
        if self.kind.startswith("sqlite"):
            rows = self.committed("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = self.committed(f"SELECT table_name FROM information_schema.tables "
                                  f"WHERE table_schema = '{self.schema}'")
        return sorted(r[0] for r in rows)

    def is_closed(self, conn):
        if self.kind.startswith("sqlite"):
            try:
                conn.execute("SELECT 1")
            except sqlite3.ProgrammingError:
                return True
            return False
        return conn.closed

    def close(self):
        for close in reversed(self._closers):
            close()


PROJECTION_DBS = ["sqlite_path", "sqlite_connection", "postgres_url"]


@pytest.fixture(params=PROJECTION_DBS)
def projection_kind(request):
    return request.param


@pytest.fixture
def projection_db(projection_kind, tmp_path):
    db = ProjectionDB(projection_kind, tmp_path)
    yield db
    db.close()


def ticks_in(db):
    return [r[0] for r in db.committed("SELECT event_id FROM ticks ORDER BY event_id")]


def totals_in(db):
    return dict(db.committed("SELECT aggregate_id, total FROM tick_totals"))


def position_in(db, name="tick_projector"):
    rows = db.committed(f"SELECT position FROM eventsourcery_trackers WHERE name = '{name}'")
    return rows[0][0] if rows else None


def run_until_caught_up(processor, store, latest=None):
    """subscribe_to in this thread until the processor's position reaches ``latest`` (default: the
    store's)."""
    target = store.latest_event_id() if latest is None else latest
    processor.subscribe_to(store, stop=lambda: processor.last_processed_event_id >= target)


@pytest.fixture
def tick_store(store):
    """The parametrised store with 10 Tick events (n = 1..10) on two aggregates."""
    for n in range(1, 11):
        store.sink(Tick(aggregate_id=f"t{n % 2}", n=n))
    return store


# =================================================================================================
# the contract
# =================================================================================================


def test_setup_creates_the_tables_and_the_tracker_row(projection_db):
    p = projection_db.projector()
    assert not {"ticks", "tick_totals"} & set(projection_db.tables())  # nothing before setup
    p.setup()
    assert {"ticks", "tick_totals", "eventsourcery_trackers"} <= set(projection_db.tables())
    assert ticks_in(projection_db) == [] and totals_in(projection_db) == {}
    assert (projection_db.committed("SELECT name, position FROM eventsourcery_trackers")
            == [("tick_projector", 0)])
    assert p.last_processed_event_id == 0


def test_setup_keeps_an_existing_position_and_rows(tick_store, projection_db, monkeypatch):
    monkeypatch.setattr(es.config, "subscription_batch_size", 4)
    p = projection_db.projector()
    run_until_caught_up(p, tick_store, latest=4)
    p.setup()
    # a new instance on the same database
    again = projection_db.projector(target=projection_db.again())
    again.setup()
    assert (p.last_processed_event_id, again.last_processed_event_id) == (4, 4)
    assert position_in(projection_db) == 4
    assert ticks_in(projection_db) == [1, 2, 3, 4]
    run_until_caught_up(again, tick_store)  # it goes on from there
    assert ticks_in(projection_db) == list(range(1, 11))
    assert p.last_processed_event_id == 10


def test_every_event_is_applied_once(tick_store, projection_db):
    p = projection_db.projector()
    run_until_caught_up(p, tick_store)
    assert ticks_in(projection_db) == list(range(1, 11))
    assert totals_in(projection_db) == TOTALS
    assert position_in(projection_db) == 10
    run_until_caught_up(p, tick_store)  # caught up: nothing again
    tick_store.sink(Tick(aggregate_id="t0", n=100))
    run_until_caught_up(p, tick_store)
    assert ticks_in(projection_db) == list(range(1, 12))
    assert totals_in(projection_db) == {"t0": 130, "t1": 25}
    assert position_in(projection_db) == 11


def test_a_failing_event_commits_the_events_before_it_and_rolls_back_its_own_writes(
        tick_store, projection_db):
    p = projection_db.projector(fail_on={7})
    with pytest.raises(es.EventProcessingError) as info:
        run_until_caught_up(p, tick_store)
    assert info.value.event.n == 7 and isinstance(info.value.__cause__, RuntimeError)
    # one batch of 10: the events before 7 committed ...
    assert ticks_in(projection_db) == [1, 2, 3, 4, 5, 6]
    assert totals_in(projection_db) == {"t0": 2 + 4 + 6, "t1": 1 + 3 + 5}
    assert position_in(projection_db) == 6  # ... with their position; 7 left nothing
    assert p.last_processed_event_id == 6
    p.fail_on = set()
    run_until_caught_up(p, tick_store)
    assert ticks_in(projection_db) == list(range(1, 11))
    assert totals_in(projection_db) == TOTALS


def test_a_batch_whose_position_cannot_be_recorded_leaves_no_writes(
        tick_store, projection_db, monkeypatch):
    """The writes and the position commit in one transaction: no writes without their position."""
    p = projection_db.projector()
    p.setup()

    def position_fails(name, event_id, generation):
        raise RuntimeError("the position could not be recorded")

    monkeypatch.setattr(p.tracker, "commit_position", position_fails)
    with pytest.raises(RuntimeError, match="position could not be recorded"):
        run_until_caught_up(p, tick_store)
    assert ticks_in(projection_db) == [] and totals_in(projection_db) == {}
    assert position_in(projection_db) == 0
    monkeypatch.undo()
    run_until_caught_up(p, tick_store)
    assert ticks_in(projection_db) == list(range(1, 11))


def test_batch_size_commits_in_smaller_transactions(tick_store, projection_db):
    p = projection_db.projector(batch_size=3, fail_on={7})
    assert p.batch_size == 3
    with pytest.raises(es.EventProcessingError):
        run_until_caught_up(p, tick_store)
    # [1-3] and [4-6] committed, [7-9] rolled back
    assert ticks_in(projection_db) == [1, 2, 3, 4, 5, 6]
    assert position_in(projection_db) == 6
    assert totals_in(projection_db) == {"t0": 2 + 4 + 6, "t1": 1 + 3 + 5}
    p.fail_on = set()
    run_until_caught_up(p, tick_store)
    assert ticks_in(projection_db) == list(range(1, 11))
    assert position_in(projection_db) == 10


def test_the_default_batch_is_the_subscriptions_batch(tick_store, projection_db, monkeypatch):
    monkeypatch.setattr(es.config, "subscription_batch_size", 4)
    p = projection_db.projector(fail_on={7})
    assert p.batch_size is None
    with pytest.raises(es.EventProcessingError):
        run_until_caught_up(p, tick_store)
    # batch [5-8]: 5 and 6 committed before 7 failed
    assert ticks_in(projection_db) == [1, 2, 3, 4, 5, 6]
    assert position_in(projection_db) == 6


def test_a_projector_retried_after_failures_applies_every_event_exactly_once(
        tick_store, projection_db):
    p = projection_db.projector(batch_size=3, fail_once={5, 8})
    with pytest.raises(es.EventProcessingError):
        run_until_caught_up(p, tick_store)
    assert (ticks_in(projection_db), position_in(projection_db)) == ([1, 2, 3, 4], 4)
    assert p.last_processed_event_id == 4
    es.run_processor(p, tick_store, stop=lambda: p.last_processed_event_id >= 10,
                     error_handler=es.ConstantRetry(0, sleep=lambda seconds: None))
    assert p.fail_once == set()  # it failed on 8 too
    assert ticks_in(projection_db) == list(range(1, 11))
    assert totals_in(projection_db) == TOTALS
    assert position_in(projection_db) == 10


def test_reset_drops_the_tables_and_the_position_and_sets_up_again(tick_store, projection_db):
    p = projection_db.projector()
    run_until_caught_up(p, tick_store)
    p.db.execute("CREATE TABLE unrelated (x INTEGER)")
    p.db.execute("INSERT INTO unrelated (x) VALUES (1)")
    p.reset()
    assert ticks_in(projection_db) == []  # the tables exist again, empty
    assert totals_in(projection_db) == {}
    assert position_in(projection_db) == 0
    assert p.last_processed_event_id == 0
    assert projection_db.committed("SELECT x FROM unrelated") == [(1,)]  # not the projector's: kept
    run_until_caught_up(p, tick_store)  # a full replay
    assert ticks_in(projection_db) == list(range(1, 11))
    assert totals_in(projection_db) == TOTALS


def test_two_projectors_share_one_database(tick_store, projection_db, monkeypatch):
    monkeypatch.setattr(es.config, "subscription_batch_size", 4)
    one = projection_db.projector()
    other = projection_db.projector(OtherProjector)
    run_until_caught_up(one, tick_store, latest=4)
    run_until_caught_up(other, tick_store)
    assert (position_in(projection_db), position_in(projection_db, "other_projector")) == (4, 10)
    assert ticks_in(projection_db) == [1, 2, 3, 4]
    assert len(projection_db.committed("SELECT event_id FROM other_ticks")) == 10
    other.reset()
    assert projection_db.committed("SELECT event_id FROM other_ticks") == []
    assert position_in(projection_db, "other_projector") == 0
    assert position_in(projection_db) == 4 and ticks_in(projection_db) == [1, 2, 3, 4]  # untouched
    run_until_caught_up(one, tick_store)
    assert ticks_in(projection_db) == list(range(1, 11))
    assert position_in(projection_db, "other_projector") == 0


def test_placeholder_and_db_are_those_of_the_database(projection_db):
    p = projection_db.projector()
    assert p.placeholder == projection_db.placeholder == p.database.placeholder
    assert p.db is p.database.connection
    if projection_db.kind == "sqlite_connection":
        assert p.db is projection_db.target
    expected_driver = "sqlite3" if projection_db.kind.startswith("sqlite") else "psycopg"
    assert type(p.db).__module__.split(".")[0] == expected_driver
    assert p.db.execute(f"SELECT 1 WHERE 1 = {p.placeholder}", (1,)).fetchone() == (1,)
    assert p.db.execute(f"SELECT 1 WHERE 1 = {p.placeholder}", (2,)).fetchone() is None


def test_close_then_use_again_reopens(tick_store, projection_db, monkeypatch):
    monkeypatch.setattr(es.config, "subscription_batch_size", 5)
    p = projection_db.projector()
    run_until_caught_up(p, tick_store, latest=5)
    first = p.db
    p.close()
    if projection_db.owns_connection:
        assert projection_db.is_closed(first)
    else:  # an open connection given to the projector stays the caller's
        assert not projection_db.is_closed(first)
    p.close()  # twice: harmless
    assert p.last_processed_event_id == 5
    run_until_caught_up(p, tick_store)
    assert (p.db is first) is not projection_db.owns_connection
    assert ticks_in(projection_db) == list(range(1, 11))
    assert totals_in(projection_db) == TOTALS


@pytest.mark.parametrize("projection_kind", ["sqlite_path", "postgres_url"])
def test_a_projector_pickles_without_its_connection(tick_store, projection_db, monkeypatch):
    monkeypatch.setattr(es.config, "subscription_batch_size", 4)
    p = projection_db.projector()
    run_until_caught_up(p, tick_store, latest=4)  # its connection is open now
    copy = pickle.loads(pickle.dumps(p))
    try:
        assert copy.db is not p.db
        assert (copy.placeholder, copy.last_processed_event_id) == (p.placeholder, 4)
        run_until_caught_up(copy, tick_store)
        assert p.last_processed_event_id == 10  # the copy's commits, seen by the original
        assert ticks_in(projection_db) == list(range(1, 11))
    finally:
        copy.close()


@pytest.mark.parametrize("projection_kind", ["sqlite_connection"])
def test_a_projector_on_an_open_connection_refuses_to_be_pickled(projection_db):
    p = projection_db.projector()
    with pytest.raises(TypeError, match="file path"):
        pickle.dumps(p)


def run_in_child(projector, store_url, latest, out_q):
    """In a spawned child: run the projector against the store until it reaches ``latest``;
    report."""
    try:
        store = es.open_store(store_url)
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= latest)
        out_q.put(("ok", os.getpid(), projector.last_processed_event_id))
        projector.close()
        store.close()
    except BaseException:
        out_q.put(("error", os.getpid(), traceback.format_exc()))


@pytest.mark.parametrize("projection_kind", ["sqlite_path", "postgres_url"])
def test_a_projector_works_in_a_spawned_child_process(tmp_path, projection_db, monkeypatch):
    # (here; the child has its own config)
    monkeypatch.setattr(es.config, "subscription_batch_size", 3)
    store_path = str(tmp_path / "events.db")
    with es.SQLiteEventStore(store_path) as store:
        for n in range(1, 11):
            store.sink(Tick(aggregate_id=f"t{n % 2}", n=n))
        p = projection_db.projector()
        run_until_caught_up(p, store, latest=3)  # the parent's connection is open
        assert (ticks_in(projection_db), position_in(projection_db)) == ([1, 2, 3], 3)
        out_q = SPAWN.Queue()
        child = SPAWN.Process(target=run_in_child, args=(p, store_path, 10, out_q), daemon=True)
        child.start()
        try:
            report = out_q.get(timeout=WAIT)
        finally:
            join_all([child], timeout=WAIT)
        assert report[0] == "ok", report[2] if report[0] == "error" else report
        assert report[1:] == (child.pid, 10)
        assert child.exitcode == 0
        # the child went on from the parent's 3
        assert ticks_in(projection_db) == list(range(1, 11))
        assert totals_in(projection_db) == TOTALS
        assert p.last_processed_event_id == 10  # the parent sees the child's commits
        # its connection still works
        assert p.db.execute("SELECT count(*) FROM ticks").fetchone() == (10,)
