"""eventsourcery itself, used only through its public API (SPEC.md):
SQLiteEventStore / PostgresEventStore, Repository, Aggregate, es.on,
es.Projector, store.subscribe."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import uuid

import eventsourcery as es

from . import common as C


class BenchItemAdded(es.Event, type="bench_item_added"):
    title: str
    amount: int


class BenchCounter(es.Aggregate):
    count = 0

    @es.on(BenchItemAdded)
    def _added(self, event):
        self.count += event.amount

    def add(self, title: str, amount: int) -> None:
        self.apply_event(BenchItemAdded, title=title, amount=amount)


_snap_classes: dict[int, type] = {}


def snapshot_counter(every: int) -> type:
    """BenchCounter with ``snapshot_every = every`` (one class per interval, same events and
    handlers)."""
    cls = _snap_classes.get(every)
    if cls is None:
        cls = type(f"BenchCounterSnap{every}", (BenchCounter,),
                   {"snapshot_every": every, "__module__": __name__})
        _snap_classes[every] = cls
    return cls


class BenchProjector(es.Projector):
    """A trivial handler that sees every event; the library commits each batch's
    position (and the no-op projection) in one transaction."""

    processor_name = "bench_projector"
    schema = "CREATE TABLE IF NOT EXISTS bench_noop (x INTEGER)"
    handled = 0

    @es.on()
    def _any(self, event):
        self.handled += 1


class _Base:
    name = "eventsourcery"
    note = ""

    @staticmethod
    def fill_agg_id(k: int) -> str:
        return str(uuid.UUID(int=(0xF << 120) | (k + 1)))

    def write_sample(self, spec, agg_id) -> None:
        with self.open(spec) as store:
            store.sink(BenchItemAdded(aggregate_id=agg_id, title=C.TITLE, amount=0),
                       expected_version=0)

    # (a) load + one event + save, round-robin over the aggregates
    def a(self, spec, ids, n_cmd: int) -> float:
        with self.open(spec) as store:
            store.latest_event_id()  # connection + schema ready before timing
            repo = es.Repository(store)
            load, save = repo.load, repo.save
            n_agg = len(ids)
            t0 = time.perf_counter()
            for i in range(n_cmd):
                agg = load(BenchCounter, ids[i % n_agg])
                agg.add(C.TITLE, i)
                save(agg)
            dt = time.perf_counter() - t0
        return dt

    # (b) one aggregate held in memory, `batch` events per save
    def b(self, spec, agg_id: str, n: int, batch: int) -> float:
        with self.open(spec) as store:
            store.latest_event_id()
            repo = es.Repository(store)
            t0 = time.perf_counter()
            agg = repo.load(BenchCounter, agg_id)
            for start in range(0, n, batch):
                for j in range(start, min(start + batch, n)):
                    agg.add(C.TITLE, j)
                repo.save(agg)
            dt = time.perf_counter() - t0
            assert agg.version == n
        return dt

    def c_build(self, spec, agg_id: str, n: int) -> None:
        self.b(spec, agg_id, n, 1000)

    def c(self, spec, agg_id: str, repeats: int) -> list[float]:
        out = []
        with self.open(spec) as store:
            store.latest_event_id()
            repo = es.Repository(store)
            for _ in range(repeats):
                t0 = time.perf_counter()
                agg = repo.load(BenchCounter, agg_id)
                out.append(time.perf_counter() - t0)
                assert agg.version > 0
        return out

    # (h) one long history, saved `batch` events at a time by the class that keeps snapshots
    def open_for_build(self, spec):
        return self.open(spec)

    def h_build(self, spec, agg_id: str, n: int, batch: int, every: int) -> str:
        snap_cls = snapshot_counter(every)
        with self.open_for_build(spec) as store:
            repo = es.Repository(store)
            agg = repo.load(snap_cls, agg_id)
            for start in range(0, n, batch):
                for j in range(start, min(start + batch, n)):
                    agg.add(C.TITLE, j)
                repo.save(agg)
            kept = [s.version for s in store.snapshots(agg_id)]
        assert agg.version == n and kept == [n // every * every], (agg.version, kept)
        return agg_id

    def h(self, spec, agg_id: str, n: int, every: int, replays: int,
          snap_loads: int) -> tuple[list[float], list[float]]:
        """(snapshot load times, full replay times) on one open store: `replays` full replays
        (the class without snapshot_every), each followed by its share of `snap_loads` loads
        by the class that keeps snapshots."""
        snap_cls = snapshot_counter(every)
        snap, full = [], []
        expect = n * (n - 1) // 2
        with self.open(spec) as store:
            repo = es.Repository(store)
            load = repo.load
            assert load(snap_cls, agg_id).count == expect  # warm: connection and statements
            per = max(1, snap_loads // replays)
            for _ in range(replays):
                t0 = time.perf_counter()
                agg = load(BenchCounter, agg_id)
                full.append(time.perf_counter() - t0)
                assert agg.version == n
                for _ in range(per):
                    t0 = time.perf_counter()
                    agg = load(snap_cls, agg_id)
                    snap.append(time.perf_counter() - t0)
                assert agg.version == n and agg.count == expect
        return snap, full

    # (i) N threads share one store object; each runs load + 1 event + save on 10 aggregates of its
    # own
    def i(self, spec, n_threads: int, n_cmd: int, mode: str = "cmd",
          prefix: str = "") -> tuple[float, list[float]]:
        with self.open(spec) as store:
            store.latest_event_id()
            repo = es.Repository(store)
            per = n_cmd // n_threads

            def work(k):
                ids = [f"thread-{prefix}{k}-{j}" for j in range(10)]
                lat = []
                clock = time.perf_counter
                if mode == "sink":  # the write path alone: one event per sink, no load
                    sink = store.sink
                    for i in range(per):
                        t0 = clock()
                        sink(BenchItemAdded(aggregate_id=ids[i % 10], title=C.TITLE, amount=i))
                        lat.append(clock() - t0)
                    return lat
                for i in range(per):
                    t0 = clock()
                    agg = repo.load(BenchCounter, ids[i % 10])
                    agg.add(C.TITLE, i)
                    repo.save(agg)
                    lat.append(clock() - t0)
                return lat

            return C.run_threads(n_threads, work)

    # (j) load of a 10-event aggregate while another thread of the process sinks without pause
    def j(self, spec, n_reads: int, writer=None) -> tuple[list[float], int]:
        with self.open(spec) as store:
            repo = es.Repository(store)
            agg = repo.load(BenchCounter, "read-me")
            for i in range(10):
                agg.add(C.TITLE, i)
            repo.save(agg)

            def write_once(i):
                store.sink(BenchItemAdded(aggregate_id=f"written-{i}", title=C.TITLE, amount=i))

            def read_once():
                assert repo.load(BenchCounter, "read-me").version == 10

            return C.read_under_writer(write_once, read_once, n_reads, writer)

    # (d) projector catch-up via subscribe_to, stopped once every event was handled
    def d(self, spec, n: int, workdir: str, page: int, tag: str = "") -> float:
        p = self.projector(workdir, spec)
        p.processor_name = f"bench_projector{tag}"  # a new position per run
        with self.open(spec) as store:
            store.latest_event_id()
            stop = lambda: p.handled >= n  # noqa: E731
            t0 = time.perf_counter()
            p.subscribe_to(store, stop=stop)
            dt = time.perf_counter() - t0
        assert p.handled >= n, (p.handled, n)
        return dt

    # (e)
    def e_unsupported(self):
        return None

    def e_append(self, spec, n: int, lo: float, hi: float) -> list[int]:
        rnd = random.Random(7)
        stamps = []
        with self.open(spec) as store:
            for i in range(n):
                store.sink(BenchItemAdded(aggregate_id="latency", title=C.TITLE, amount=i))
                stamps.append(time.monotonic_ns())
                time.sleep(rnd.uniform(lo, hi))
        return stamps

    def e_subscribe(self, spec, n: int, on_event, stop: threading.Event) -> None:
        with self.open(spec) as store:
            for batch in store.subscribe(1, stop=stop):
                for ev in batch:
                    if ev.type == "bench_item_added":
                        on_event(ev.amount)


class ESSQLite(_Base):
    backend = "sqlite"

    def __init__(self, tmpdir: str):
        self.tmpdir = tmpdir
        self.n = 0

    def open(self, path):
        try:
            return es.SQLiteEventStore(path, synchronous="FULL")
        except TypeError:  # the keyword is an internal extra, not in SPEC
            return es.SQLiteEventStore(path)

    def projector(self, workdir, spec):
        return BenchProjector(os.path.join(workdir, f"es_projection_{time.time_ns()}.db"))

    def open_for_build(self, path):
        """Setup, not measurement: no fsync per commit (WAL, synchronous=OFF)."""
        return es.SQLiteEventStore(path, synchronous="OFF")

    def new_store(self) -> str:
        self.n += 1
        path = os.path.join(self.tmpdir, f"es_{self.n}.db")
        with self.open(path) as store:
            store.latest_event_id()
        return path

    def drop_store(self, path: str) -> None:
        for s in ("", "-wal", "-shm"):
            if os.path.exists(path + s):
                os.remove(path + s)

    def settings(self, path: str) -> dict:
        with self.open(path) as store:
            store.latest_event_id()
            con = getattr(store, "connection", None)
            if isinstance(con, sqlite3.Connection):
                return C.sqlite_pragmas(con)
        return {"note": "store.connection not exposed; settings not verified"}

    def schema_table_roles(self, path: str) -> dict:
        """Find the events table of a library-created store and its columns."""
        con = sqlite3.connect(path)
        try:
            for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                cols = [r[1] for r in con.execute(f"PRAGMA table_info({name})")]
                if {"aggregate_id", "version"} <= set(cols):
                    pk = [r[1] for r in con.execute(f"PRAGMA table_info({name})") if r[5]]
                    return dict(table=name, agg_col="aggregate_id", ver_col="version",
                                uuid_col="uuid" if "uuid" in cols else None,
                                id_col=pk[0] if len(pk) == 1 else None, columns=cols)
        finally:
            con.close()
        raise RuntimeError(f"no events table found in {path}")


class ESPostgres(_Base):
    backend = "postgres"

    def __init__(self, dbs: C.PGDatabases):
        import eventsourcery_pg
        self.es_pg = eventsourcery_pg
        self.dbs = dbs

    def open(self, ci):
        return self.es_pg.PostgresEventStore(ci)

    def projector(self, workdir, spec):
        cls = getattr(self.es_pg, "Projector", None)
        if cls is None:
            raise RuntimeError("eventsourcery_pg has no Projector")

        class PGBenchProjector(cls):
            processor_name = "bench_projector"
            schema = "CREATE TABLE IF NOT EXISTS bench_noop (x INTEGER)"
            handled = 0

            @es.on()
            def _any(self, event):
                self.handled += 1

        return PGBenchProjector(spec)  # projection tables and position in the store's database

    def new_store(self) -> str:
        ci = self.dbs.fresh()
        with self.open(ci) as store:
            store.latest_event_id()
        return ci

    def drop_store(self, ci):
        self.dbs.drop(ci)

    def settings(self, ci) -> dict:
        import psycopg
        with psycopg.connect(ci) as con:
            return {"synchronous_commit": con.execute("SHOW synchronous_commit").fetchone()[0]}

    def d_build(self, ci, n: int, n_aggs: int) -> None:
        ids = C.agg_ids(n_aggs, prefix=0xD)
        per = n // n_aggs
        with self.open(ci) as store:
            for aid in ids:
                for start in range(0, per, 1000):
                    store.sink([BenchItemAdded(aggregate_id=aid, title=C.TITLE, amount=j)
                                for j in range(start, min(start + 1000, per))])
