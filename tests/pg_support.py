"""Postgres plumbing for the tests: where the server is, fresh schemas, and skipping (not a test
module).

The server is ``$EVENTSOURCERY_TEST_POSTGRES`` or
``postgresql://postgres@127.0.0.1:5432/test``. When it is unreachable the
Postgres tests are skipped, except in CI (``CI=true``), where that is a
failure. Every store gets a schema of its own, named after this run, and the
schemas this process made are dropped when it exits.
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import time
import traceback
import uuid

import pytest

import eventsourcery as es
from tests.events import CounterIncremented, Numbered, RaceStarted

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
URL = os.environ.get("EVENTSOURCERY_TEST_POSTGRES") or DEFAULT_URL
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

_RUN = f"es_test_{time.strftime('%H%M%S')}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
_counter = itertools.count()
_created: list[tuple[int, str]] = []
_reachable: tuple[bool, str] | None = None


def _check() -> tuple[bool, str]:
    global _reachable
    if _reachable is None:
        try:
            import psycopg
        except ImportError as exc:
            _reachable = (False, f"psycopg is not installed ({exc})")
        else:
            try:
                with psycopg.connect(URL, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                _reachable = (True, "")
            except Exception as exc:
                _reachable = (False, f"Postgres at {URL} is unreachable: {exc}")
    return _reachable


def require_postgres() -> str:
    """The server's URL; skips the test when it is unreachable (fails instead when CI=true)."""
    ok, why = _check()
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    return URL


def new_schema() -> str:
    """A schema name no other store, test or run uses (the schema is created by the store)."""
    require_postgres()
    # the pid as of now: a forked child inherits _RUN and the counter, and must not reuse (nor, at
    # its exit, drop) a name its parent is about to use
    name = f"{_RUN}_{os.getpid()}_{next(_counter)}"
    _created.append((os.getpid(), name))
    return name


def postgres_store(path=None, **options):
    """A new, empty PostgresEventStore in a schema of its own (the STORE_FACTORIES signature)."""
    import eventsourcery_pg as es_pg

    return es_pg.PostgresEventStore(require_postgres(), schema=new_schema(), **options)


def connect():
    """A plain autocommit connection to the test server."""
    import psycopg

    return psycopg.connect(require_postgres(), autocommit=True)


def drop_schema(name: str) -> None:
    import psycopg

    with psycopg.connect(URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@atexit.register
def _drop_created_schemas() -> None:
    mine = [name for pid, name in _created if pid == os.getpid()]
    if not mine or not _check()[0]:
        return
    for name in mine:
        try:
            drop_schema(name)
        except Exception:  # best effort: a leftover schema harms nobody
            pass


def store_url(schema: str) -> str:
    """One string naming the test server *and* a schema: ``postgresql://...?schema=NAME``."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    url = require_postgres()
    if url.startswith(("postgresql://", "postgres://")):
        return url + ("&" if "?" in url else "?") + f"schema={schema}"
    params = conninfo_to_dict(url)
    user = quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    host = str(params.pop("host", "localhost"))
    port = params.pop("port", None)
    dbname = quote(str(params.pop("dbname", "")), safe="")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    netloc = f"{auth}{host}" + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{dbname}?" + urlencode({**params, "schema": schema})


# --- worker processes (module level, so "spawn" can import them); they report, never assert -------


class Counter(es.Aggregate):
    count = 0

    @es.on(CounterIncremented)
    def _incremented(self, event):
        self.count += 1


def writer(conninfo, schema, worker, commands, aggregate_ids, start, out_q):
    """Commands on shared aggregates (load, apply, save, retry on conflict), and batches to its own
    aggregate."""
    import eventsourcery_pg as es_pg

    try:
        store = es_pg.PostgresEventStore(conninfo, schema=schema)
        repo = es.Repository(store)
        rng = random.Random(worker)
        own = f"writer-{worker}"
        start.wait(60)
        saves = conflicts = batches = batch_events = 0
        for seq in range(commands):
            if rng.random() < 0.3:
                size = rng.randint(1, 5)
                store.sink([Numbered(aggregate_id=own, e=seq * 10 + i) for i in range(size)])
                batches += 1
                batch_events += size
                continue
            agg_id = rng.choice(aggregate_ids)
            for _attempt in range(10_000):
                counter = repo.load(Counter, agg_id)
                counter.apply_event(CounterIncremented, worker=worker, seq=seq)
                try:
                    repo.save(counter)
                except es.ConcurrencyError:
                    conflicts += 1
                    continue
                saves += 1
                break
            else:
                raise AssertionError(f"command {seq} never saved")
        store.close()
        out_q.put(("writer", worker, saves, conflicts, batches, batch_events))
    except BaseException:
        out_q.put(("error", worker, traceback.format_exc()))


def first_writer(conninfo, schema, worker, aggregate_ids, barrier, out_q, lock_writes=True):
    """For each aggregate: wait for everyone, then try to write its first event with
    expected_version=0."""
    import eventsourcery_pg as es_pg

    try:
        store = es_pg.PostgresEventStore(conninfo, schema=schema, _lock_writes=lock_writes)
        results = []
        for agg_id in aggregate_ids:
            barrier.wait(60)
            try:
                store.sink(RaceStarted(aggregate_id=agg_id, worker=worker), expected_version=0)
                results.append("won")
            except es.ConcurrencyError as exc:
                results.append("conflict" if type(exc) is es.ConcurrencyError
                               else f"error: {exc!r}")
            except Exception as exc:  # a raw database error is what this test guards against
                results.append(f"error: {exc!r}")
        store.close()
        out_q.put(("racer", worker, results))
    except BaseException:
        out_q.put(("error", worker, traceback.format_exc()))


def open_store_at_once(conninfo, schema, barrier, out_q):
    """Open (and so create) a store in a schema at the same moment as other processes."""
    import eventsourcery_pg as es_pg

    try:
        barrier.wait(60)
        with es_pg.PostgresEventStore(conninfo, schema=schema) as store:
            store.sink(RaceStarted(aggregate_id=f"opener-{os.getpid()}", worker=0))
        out_q.put(("ok", os.getpid()))
    except BaseException:
        out_q.put(("error", os.getpid(), traceback.format_exc()))


# --- the kill -9 runner tests (tests/test_runner.py) on Postgres ----------------------------------

try:
    import eventsourcery_pg as _es_pg
except ImportError:  # pragma: no cover - psycopg missing: the Postgres tests skip
    _es_pg = None


def is_postgres(location: str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


if _es_pg is not None:
    from tests.processing_support import CountingProjector, Instrumented, Poison, Slow

    class PgCountingProjector(Instrumented, _es_pg.Projector):
        """processing_support.CountingProjector on Postgres (the same name, tables and handlers)."""

        processor_name = CountingProjector.processor_name
        schema = """
            CREATE TABLE IF NOT EXISTS counts (aggregate_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS seen (event_id BIGINT NOT NULL, seq BIGSERIAL)
        """

        def __init__(self, db, *, workdir=None, batch_size=None, error_handler_name=None):
            super().__init__(db, batch_size=batch_size)
            self.workdir = workdir
            self.error_handler_name = error_handler_name

        def setup(self):
            super().setup()
            self._announce()

        @es.on(Slow)
        def _slow(self, event):
            self._marker("in_batch")
            time.sleep(event.seconds)

        @es.on(Poison)
        def _poison(self, event):
            raise RuntimeError(f"poison event {event.id}")

        @es.on()
        def _count(self, event):
            self.db.execute("INSERT INTO counts (aggregate_id, n) VALUES (%s, 1) ON CONFLICT "
                            "(aggregate_id) DO UPDATE SET n = counts.n + 1", (event.aggregate_id,))
            self.db.execute("INSERT INTO seen (event_id) VALUES (%s)", (event.id,))


def _query(location: str, sql: str, params=()):
    """Rows of ``sql`` (``{s}`` = the location's schema), through a new connection: committed data
    only."""
    import psycopg

    conninfo, schema = _es_pg.split_schema(location)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(sql.format(s=f'"{schema}"'), params).fetchall()


def projection_of(location: str) -> dict:
    """The counting projection and its position (like processing_support.projection_of)."""
    name = CountingProjector.processor_name
    counts = dict(_query(location, "SELECT aggregate_id, n FROM {s}.counts ORDER BY aggregate_id"))
    seen = [r[0] for r in _query(location, "SELECT event_id FROM {s}.seen ORDER BY seq")]
    rows = _query(location, "SELECT position FROM {s}.eventsourcery_trackers WHERE name = %s",
                  (name,))
    return {"counts": counts, "seen": seen, "position": rows[0][0] if rows else 0}


def projection_position(location: str) -> int:
    import psycopg

    try:
        rows = _query(location, "SELECT position FROM {s}.eventsourcery_trackers WHERE name = %s",
                      (CountingProjector.processor_name,))
    except psycopg.errors.UndefinedTable:  # not created yet
        return 0
    return rows[0][0] if rows else 0
