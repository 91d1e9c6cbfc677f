"""The peer: `eventsourcing` 9.x (pyeventsourcing) with its own Application,
Aggregate, SQLite / Postgres persistence, run with default settings (no cache,
no snapshots; (h) alone turns its snapshotting on, `snapshotting_intervals`)
except durability, which is forced to match: on SQLite WAL (which it sets
itself) and synchronous=FULL (its connections inherit SQLite's default, FULL,
and we set it explicitly on every connection it opens); on Postgres the
server's synchronous_commit (on)."""

from __future__ import annotations

import os
import threading
import time
import uuid

from eventsourcing import sqlite as _es_sqlite
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from . import common as C

# ---- force synchronous=FULL (+ WAL, which eventsourcing sets itself) on every connection
_orig_create = _es_sqlite.SQLiteConnectionPool._create_connection
_synchronous = ["FULL"]  # OFF only while (h) builds its store: setup, not measurement


def _create_connection_full(self):
    conn = _orig_create(self)
    raw = conn._sqlite_conn
    if not self.is_sqlite_memory_mode:
        raw.execute(f"PRAGMA synchronous={_synchronous[0]}")
    return conn


_es_sqlite.SQLiteConnectionPool._create_connection = _create_connection_full


class Counter(Aggregate):
    def __init__(self):
        self.count = 0

    @event("Incremented")
    def increment(self, title: str, amount: int):
        self.count += amount


class BenchApp(Application):
    name = "BenchApp"


_snap_apps: dict[int, type] = {}


def snapshot_app(every: int) -> type:
    """BenchApp with eventsourcing's own automatic snapshotting of Counter every `every` versions
    (`snapshotting_intervals`); the same name, so the same tables on Postgres too."""
    cls = _snap_apps.get(every)
    if cls is None:
        cls = type(f"BenchSnapApp{every}", (BenchApp,), {"name": BenchApp.name,
                                                           "snapshotting_intervals": {
                                                               Counter: every}})
        _snap_apps[every] = cls
    return cls


def _sqlite_env(path):
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}


class _Base:
    name = "eventsourcing"
    note = ""

    def app(self, spec) -> BenchApp:
        return BenchApp(env=self.env(spec))

    # (e) the appender; also (j.proc)'s writer in another process
    def e_append(self, spec, n, lo, hi):
        import random
        app = self.app(spec)
        rnd = random.Random(7)
        c = Counter()
        app.save(c)
        stamps = []
        for i in range(n):
            c.increment(title=C.TITLE, amount=i)
            app.save(c)
            stamps.append(time.monotonic_ns())
            time.sleep(rnd.uniform(lo, hi))
        app.close()
        return stamps

    def write_sample(self, spec, agg_id=None) -> None:
        app = self.app(spec)
        c = Counter()
        c.increment(title=C.TITLE, amount=0)
        app.save(c)
        app.close()

    @staticmethod
    def fill_agg_id(k: int) -> str:
        return uuid.UUID(int=(0xF << 120) | (k + 1)).hex

    # (a) each command: get (full replay) or create, one event, save
    def a(self, spec, ids, n_cmd: int) -> float:
        app = self.app(spec)
        n_agg = len(ids)
        real = [None] * n_agg
        get = app.repository.get
        save = app.save
        t0 = time.perf_counter()
        for i in range(n_cmd):
            k = i % n_agg
            aid = real[k]
            if aid is None:
                c = Counter()  # the Created event is this command's one event
                save(c)
                real[k] = c.id
            else:
                c = get(aid)
                c.increment(title=C.TITLE, amount=i)
                save(c)
        dt = time.perf_counter() - t0
        app.close()
        return dt

    # (i) N threads share one application; each: get + 1 event + save on 10 aggregates of its own
    def i(self, spec, n_threads: int, n_cmd: int, mode: str = "cmd", prefix: str = ""):
        app = self.app(spec)
        per = n_cmd // n_threads

        def work(k):
            real = [None] * 10
            lat = []
            clock = time.perf_counter
            for i in range(per):
                t0 = clock()
                aid = real[i % 10]
                if mode == "sink":  # a new aggregate per save: one event, no load
                    app.save(Counter())
                elif aid is None:
                    c = Counter()
                    app.save(c)
                    real[i % 10] = c.id
                else:
                    c = app.repository.get(aid)
                    c.increment(title=C.TITLE, amount=i)
                    app.save(c)
                lat.append(clock() - t0)
            return lat

        try:
            return C.run_threads(n_threads, work)
        finally:
            app.close()

    # (j) get of a 10-event aggregate while another thread saves without pause
    def j(self, spec, n_reads: int, writer=None):
        app = self.app(spec)
        try:
            c = Counter()
            for i in range(9):
                c.increment(title=C.TITLE, amount=i)
            app.save(c)
            aid = c.id

            def write_once(i):
                app.save(Counter())

            def read_once():
                assert app.repository.get(aid).version == 10

            return C.read_under_writer(write_once, read_once, n_reads, writer)
        finally:
            app.close()

    # (b) one aggregate, batches of `batch` events per save (the first batch holds Created)
    def b(self, spec, agg_id, n: int, batch: int) -> float:
        app = self.app(spec)
        t0 = time.perf_counter()
        c = Counter()
        done = 1
        while True:
            while done < n and len(c.pending_events) < batch:
                c.increment(title=C.TITLE, amount=done)
                done += 1
            app.save(c)
            if done >= n:
                break
        dt = time.perf_counter() - t0
        self._last_id = c.id
        app.close()
        assert c.version == n, (c.version, n)
        return dt

    def c_build(self, spec, agg_id, n: int) -> None:
        self.b(spec, agg_id, n, 1000)
        self._c_id = self._last_id

    def c(self, spec, agg_id, repeats: int) -> list[float]:
        app = self.app(spec)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            c = app.repository.get(self._c_id)
            out.append(time.perf_counter() - t0)
            assert c.version >= 1
        app.close()
        return out

    # (h) one long history saved `batch` events at a time by an app that snapshots every `every`
    def h_build(self, spec, agg_id, n: int, batch: int, every: int):
        _synchronous[0] = "OFF" if self.backend == "sqlite" else "FULL"
        try:
            app = snapshot_app(every)(env=self.env(spec))
            c = Counter()
            done = 1
            while True:
                while done < n and len(c.pending_events) < batch:
                    c.increment(title=C.TITLE, amount=done)
                    done += 1
                app.save(c)
                if done >= n:
                    break
            latest = list(app.snapshots.get(c.id, desc=True, limit=1))
            app.close()
        finally:
            _synchronous[0] = "FULL"
        assert c.version == n and latest and latest[0].originator_version == n // every * every, (
            c.version, latest)
        return c.id

    def h(self, spec, agg_id, n: int, every: int, replays: int, snap_loads: int):
        """As eventsourcery's: `repository.get` of the snapshotting app (latest snapshot + the
        events after it) and of a plain app (no snapshot store: full replay), same database."""
        sapp = snapshot_app(every)(env=self.env(spec))
        plain = BenchApp(env={**self.env(spec), "IS_SNAPSHOTTING_ENABLED": "n"})
        assert sapp.snapshots is not None and plain.snapshots is None
        sget, pget = sapp.repository.get, plain.repository.get
        expect = n * (n - 1) // 2
        snap, full = [], []
        try:
            # warm: connections (a 1-event read for the plain app)
            assert sget(agg_id).count == expect
            assert pget(agg_id, version=1).version == 1
            per = max(1, snap_loads // replays)
            for _ in range(replays):
                t0 = time.perf_counter()
                c = pget(agg_id)
                full.append(time.perf_counter() - t0)
                assert c.version == n
                for _ in range(per):
                    t0 = time.perf_counter()
                    c = sget(agg_id)
                    snap.append(time.perf_counter() - t0)
                assert c.version == n and c.count == expect
        finally:
            sapp.close()
            plain.close()
        return snap, full

    # (d) read + decode its notifications in pages (python_peers.md section 4, d2)
    def d(self, spec, n: int, workdir: str, page: int, tag: str = "") -> float:
        app = self.app(spec)
        select = app.recorder.select_notifications
        to_event = app.mapper.to_domain_event
        handled = 0
        pos = 0
        t0 = time.perf_counter()
        while handled < n:
            ns = select(start=pos + 1, limit=page)
            if not ns:
                time.sleep(0.001)
                continue
            for nt in ns:
                to_event(nt)
                handled += 1  # the trivial handler
            pos = ns[-1].id
        dt = time.perf_counter() - t0
        app.close()
        return dt


class PeerSQLite(_Base):
    backend = "sqlite"
    clone_roles = dict(table="stored_events", agg_col="originator_id", ver_col="originator_version",
                       uuid_col=None, id_col=None)

    def __init__(self, tmpdir: str):
        self.tmpdir = tmpdir
        self.n = 0

    def env(self, path):
        return _sqlite_env(path)

    def new_store(self) -> str:
        self.n += 1
        path = os.path.join(self.tmpdir, f"peer_{self.n}.db")
        app = self.app(path)  # creates the table
        app.close()
        return path

    def drop_store(self, path: str) -> None:
        for s in ("", "-wal", "-shm"):
            if os.path.exists(path + s):
                os.remove(path + s)

    def settings(self, path: str) -> dict:
        app = self.app(path)
        try:
            with app.recorder.datastore.get_connection(commit=False) as conn:
                return C.sqlite_pragmas(conn._sqlite_conn)
        finally:
            app.close()

    def e_unsupported(self):
        return "eventsourcing's SQLite recorder has no subscribe() (NotImplementedError)"


class PeerPostgres(_Base):
    backend = "postgres"

    def __init__(self, dbs: C.PGDatabases):
        try:
            import eventsourcing.postgres  # noqa: F401
        except ImportError as e:
            raise ImportError(f"eventsourcing.postgres needs psycopg_pool ({e}); install "
                              "'eventsourcing[postgres]' or 'psycopg[binary,pool]'") from e
        self.dbs = dbs

    def env(self, ci):
        from psycopg.conninfo import conninfo_to_dict
        p = conninfo_to_dict(ci)
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": p["dbname"],
                "POSTGRES_HOST": p.get("host", "127.0.0.1"),
                "POSTGRES_PORT": str(p.get("port", 5432)),
                "POSTGRES_USER": p.get("user", "postgres"),
                "POSTGRES_PASSWORD": p.get("password", "")}

    def new_store(self) -> str:
        ci = self.dbs.fresh()
        self.app(ci).close()
        return ci

    def drop_store(self, ci):
        self.dbs.drop(ci)

    def settings(self, ci) -> dict:
        import psycopg
        with psycopg.connect(ci) as con:
            return {"synchronous_commit": con.execute("SHOW synchronous_commit").fetchone()[0]}

    def d_build(self, ci, n: int, n_aggs: int) -> None:
        app = self.app(ci)
        per = n // n_aggs
        for _ in range(n_aggs):
            c = Counter()
            for j in range(per - 1):
                c.increment(title=C.TITLE, amount=j)
            app.save(c)
        app.close()

    def e_unsupported(self):
        return None

    def e_subscribe(self, ci, n, on_event, stop: threading.Event):
        app = self.app(ci)
        to_event = app.mapper.to_domain_event
        with app.recorder.subscribe(gt=0) as sub:
            def watcher():
                stop.wait()
                sub.stop()
            threading.Thread(target=watcher, daemon=True).start()
            for nt in sub:
                ev = to_event(nt)
                amount = getattr(ev, "amount", None)
                if amount is not None:
                    on_event(amount)
                if stop.is_set():
                    break
        app.close()
