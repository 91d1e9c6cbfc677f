"""The raw ceiling: hand-written stdlib sqlite3 (and psycopg) doing the same
reads and writes as the library, with the same schema and indexes and the same
durability (WAL + synchronous=FULL, BEGIN IMMEDIATE, one fsync per commit).

It still does the per-event work any appender must do: a time-ordered uuid, a
created_at timestamp, json.dumps of the body; and on reads json.loads of every
body.  It builds no objects beyond tuples and dicts."""

from __future__ import annotations

import json
import os
import random
import threading
import time

from . import common as C

EVENT_TYPE = "bench_item_added"
INSERT_COLS = "uuid, aggregate_id, type, version, created_at, correlation_id, causation_id, body"
SELECT_COLS = (
    "id, uuid, aggregate_id, type, version, created_at, correlation_id, causation_id, body")

_dumps = json.dumps
_loads = json.loads

# (h): the smallest snapshot table that does the job, one row per aggregate (the latest snapshot)
SNAP_DDL = ("CREATE TABLE IF NOT EXISTS snapshots (aggregate_id TEXT PRIMARY KEY, version INTEGER "
            "NOT NULL, last_event_uuid TEXT NOT NULL, state TEXT NOT NULL)")
SNAP_UPSERT = ("INSERT INTO snapshots VALUES ({0}, {0}, {0}, {0}) ON CONFLICT (aggregate_id) DO "
               "UPDATE SET version = excluded.version, last_event_uuid = excluded.last_event_uuid, "
               "state = excluded.state")
SNAP_SELECT = "SELECT version, last_event_uuid, state FROM snapshots WHERE aggregate_id = {0}"


def _h_batches(agg_id: str, n: int, batch: int, every: int):
    """(rows, snapshot or None) per save: the events of `batch` amounts, and when the save takes
    the version to or past a multiple of `every`, the snapshot row of the state after it."""
    count = 0
    for start in range(0, n, batch):
        rows = []
        for j in range(start, min(start + batch, n)):
            rows.append((C.uuid7_str(), agg_id, EVENT_TYPE, j + 1, C.now_iso(), None, None,
                         _dumps({"title": C.TITLE, "amount": j})))
            count += j
        end = start + len(rows)
        snap = ((agg_id, end, rows[-1][0], _dumps({"count": count}))
                if end // every > start // every else None)
        yield start, rows, snap


def _h_fold_after_snapshot(snap, rows) -> tuple[int, int]:
    """(version, count) from a snapshot row and the event rows from its version on; the first row
    must be the event the snapshot was taken at."""
    version, last_uuid, state = snap
    if not rows or rows[0][4] != version or str(rows[0][1]) != last_uuid:
        raise RuntimeError("snapshot does not match the history")
    count = _loads(state)["count"]
    for row in rows[1:]:
        count += _loads(row[8])["amount"]
        version = row[4]
    return version, count


def _h_loop(full_load, snap_load, n: int, replays: int, snap_loads: int):
    expect = n * (n - 1) // 2
    assert snap_load() == (n, expect)  # warm: connection and statements
    snap, full = [], []
    per = max(1, snap_loads // replays)
    for _ in range(replays):
        t0 = time.perf_counter()
        got = full_load()
        full.append(time.perf_counter() - t0)
        assert got == (n, expect)
        for _ in range(per):
            t0 = time.perf_counter()
            got = snap_load()
            snap.append(time.perf_counter() - t0)
        assert got == (n, expect)
    return snap, full


class RawSQLite:
    name = "raw"
    backend = "sqlite"
    note = ""

    def __init__(self, tmpdir: str, ddl: list[str] | None = None):
        self.tmpdir = tmpdir
        self.n = 0
        # DDL copied from a store the library created (sqlite_master), when it has the
        # expected columns; else the schema of the design notes.
        self.ddl = ddl or C.RAW_SQLITE_DDL

    # -- stores
    def new_store(self) -> str:
        self.n += 1
        path = os.path.join(self.tmpdir, f"raw_{self.n}.db")
        con = C.sqlite_connect(path)
        for stmt in self.ddl:
            con.execute(stmt)
        con.close()
        return path

    def drop_store(self, path: str) -> None:
        for s in ("", "-wal", "-shm"):
            if os.path.exists(path + s):
                os.remove(path + s)

    def settings(self, path: str) -> dict:
        con = C.sqlite_connect(path)
        try:
            return C.sqlite_pragmas(con)
        finally:
            con.close()

    def write_sample(self, path: str, agg_id: str) -> None:
        con = C.sqlite_connect(path)
        con.execute(f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                    (C.uuid7_str(), agg_id, EVENT_TYPE, 1, C.now_iso(), None, None,
                     _dumps({"title": C.TITLE, "amount": 0})))
        con.close()

    @staticmethod
    def fill_agg_id(k: int) -> str:
        return str(C.uuid.UUID(int=(0xF << 120) | (k + 1)))

    clone_roles = dict(table="events", agg_col="aggregate_id", ver_col="version",
                       uuid_col="uuid", id_col="id")

    # -- (a)
    def a(self, path: str, ids: list[str], n_cmd: int) -> float:
        con = C.sqlite_connect(path)
        ex = con.execute
        n_agg = len(ids)
        load = f"SELECT {SELECT_COLS} FROM events WHERE aggregate_id = ? ORDER BY version"
        ins = f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)"
        t0 = time.perf_counter()
        for i in range(n_cmd):
            aid = ids[i % n_agg]
            # load: replay the aggregate's events
            count = 0
            version = 0
            for row in ex(load, (aid,)):
                count += _loads(row[8])["amount"]
                version = row[4]
            # one new event, written with an expected-version check
            ex("BEGIN IMMEDIATE")
            cur = ex("SELECT max(version) FROM events WHERE aggregate_id = ?",
                     (aid,)).fetchone()[0] or 0
            if cur != version:
                ex("ROLLBACK")
                raise RuntimeError("concurrency error")
            ex(ins, (C.uuid7_str(), aid, EVENT_TYPE, version + 1, C.now_iso(), None, None,
                     _dumps({"title": C.TITLE, "amount": i})))
            ex("COMMIT")
        dt = time.perf_counter() - t0
        con.close()
        return dt

    # -- (i): a connection per thread (SQLite's busy handler arbitrates the writers)
    def i(self, path: str, n_threads: int, n_cmd: int, mode: str = "cmd", prefix: str = ""):
        per = n_cmd // n_threads
        load = f"SELECT {SELECT_COLS} FROM events WHERE aggregate_id = ? ORDER BY version"
        ins = f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)"

        def work(k):
            con = C.sqlite_connect(path)
            ex = con.execute
            ids = [f"thread-{prefix}{k}-{j}" for j in range(10)]
            known = [0] * 10  # versions written (sink mode keeps them instead of loading)
            lat = []
            clock = time.perf_counter
            try:
                for i in range(per):
                    t0 = clock()
                    aid = ids[i % 10]
                    version = 0
                    if mode == "sink":
                        version = known[i % 10]
                    else:
                        for row in ex(load, (aid,)):
                            _loads(row[8])
                            version = row[4]
                    ex("BEGIN IMMEDIATE")
                    cur = ex("SELECT max(version) FROM events WHERE aggregate_id = ?",
                             (aid,)).fetchone()[0] or 0
                    if cur != version:
                        ex("ROLLBACK")
                        raise RuntimeError("concurrency error")
                    ex(ins, (C.uuid7_str(), aid, EVENT_TYPE, version + 1, C.now_iso(), None, None,
                             _dumps({"title": C.TITLE, "amount": i})))
                    ex("COMMIT")
                    known[i % 10] = version + 1
                    lat.append(clock() - t0)
            finally:
                con.close()
            return lat

        return C.run_threads(n_threads, work)

    # -- (j): the writer and the reader on connections of their own
    def j(self, path: str, n_reads: int, writer=None):
        ins = f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)"
        load = f"SELECT {SELECT_COLS} FROM events WHERE aggregate_id = ? ORDER BY version"
        w, r = C.sqlite_connect(path), C.sqlite_connect(path)
        for v in range(1, 11):
            w.execute(ins, (C.uuid7_str(), "read-me", EVENT_TYPE, v, C.now_iso(), None, None,
                            _dumps({"title": C.TITLE, "amount": v})))

        def write_once(i):
            w.execute("BEGIN IMMEDIATE")
            w.execute(ins, (C.uuid7_str(), f"written-{i}", EVENT_TYPE, 1, C.now_iso(), None, None,
                            _dumps({"title": C.TITLE, "amount": i})))
            w.execute("COMMIT")

        def read_once():
            rows = r.execute(load, ("read-me",)).fetchall()
            assert len(rows) == 10 and all(_loads(row[8]) for row in rows)

        try:
            return C.read_under_writer(write_once, read_once, n_reads, writer)
        finally:
            w.close()
            r.close()

    # -- (b)
    def b(self, path: str, agg_id: str, n: int, batch: int) -> float:
        con = C.sqlite_connect(path)
        ex = con.execute
        ins = f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)"
        version = 0
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            rows = []
            for j in range(start, min(start + batch, n)):
                rows.append((C.uuid7_str(), agg_id, EVENT_TYPE, j + 1, C.now_iso(), None, None,
                             _dumps({"title": C.TITLE, "amount": j})))
            ex("BEGIN IMMEDIATE")
            cur = ex("SELECT max(version) FROM events WHERE aggregate_id = ?",
                     (agg_id,)).fetchone()[0] or 0
            if cur != version:
                ex("ROLLBACK")
                raise RuntimeError("concurrency error")
            con.executemany(ins, rows)
            ex("COMMIT")
            version += len(rows)
        dt = time.perf_counter() - t0
        con.close()
        return dt

    # -- (c)
    def c_build(self, path: str, agg_id: str, n: int) -> None:
        self.b(path, agg_id, n, 1000)

    def c(self, path: str, agg_id: str, repeats: int) -> list[float]:
        con = C.sqlite_connect(path)
        load = f"SELECT {SELECT_COLS} FROM events WHERE aggregate_id = ? ORDER BY version"
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            count = 0
            version = 0
            for row in con.execute(load, (agg_id,)):
                count += _loads(row[8])["amount"]
                version = row[4]
            out.append(time.perf_counter() - t0)
            assert version > 0
        con.close()
        return out

    # -- (h)
    def h_build(self, path: str, agg_id: str, n: int, batch: int, every: int) -> str:
        con = C.sqlite_connect(path, "OFF")  # setup, not measurement
        ex = con.execute
        ex(SNAP_DDL)
        ins = f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)"
        for version, rows, snap in _h_batches(agg_id, n, batch, every):
            ex("BEGIN IMMEDIATE")
            cur = ex("SELECT max(version) FROM events WHERE aggregate_id = ?",
                     (agg_id,)).fetchone()[0] or 0
            if cur != version:
                ex("ROLLBACK")
                raise RuntimeError("concurrency error")
            con.executemany(ins, rows)
            if snap:
                ex(SNAP_UPSERT.format("?"), snap)
            ex("COMMIT")
        con.close()
        return agg_id

    def h(self, path: str, agg_id: str, n: int, every: int, replays: int, snap_loads: int):
        """Full replay: (c)'s SELECT + json.loads + fold.  Snapshot load: the snapshot row, then the
        events from its version on (the first one checks the snapshot's uuid, as the library does),
        json.loads of the state and of each later body, fold."""
        con = C.sqlite_connect(path)
        ex = con.execute
        load = f"SELECT {SELECT_COLS} FROM events WHERE aggregate_id = ? ORDER BY version"
        after = (f"SELECT {SELECT_COLS} FROM events WHERE aggregate_id = ? AND version >= ? ORDER "
                 "BY version")
        snap_sql = SNAP_SELECT.format("?")

        def full_load():
            count = version = 0
            for row in ex(load, (agg_id,)):
                count += _loads(row[8])["amount"]
                version = row[4]
            return version, count

        def snap_load():
            snap = ex(snap_sql, (agg_id,)).fetchone()
            return _h_fold_after_snapshot(snap, ex(after, (agg_id, snap[0])).fetchall())

        try:
            return _h_loop(full_load, snap_load, n, replays, snap_loads)
        finally:
            con.close()

    # -- (d)
    def d(self, path: str, n: int, workdir: str, page: int, tag: str = "") -> float:
        proj = C.sqlite_connect(os.path.join(workdir, f"raw_projection_{time.time_ns()}.db"))
        proj.execute(C.RAW_TRACKER_DDL)
        proj.execute("INSERT OR IGNORE INTO trackers VALUES (?, 0)", ("bench" + tag,))
        name = "bench" + tag
        con = C.sqlite_connect(path)
        sel = f"SELECT {SELECT_COLS} FROM events WHERE id > ? ORDER BY id LIMIT ?"
        handled = 0
        t0 = time.perf_counter()
        pos = proj.execute("SELECT position FROM trackers WHERE name = ?", (name,)).fetchone()[0]
        while handled < n:
            rows = con.execute(sel, (pos, page)).fetchall()
            if not rows:
                time.sleep(0.001)
                continue
            for row in rows:
                body = _loads(row[8])
                handled += 1  # the trivial handler
            pos = rows[-1][0]
            proj.execute("BEGIN IMMEDIATE")
            proj.execute("UPDATE trackers SET position = ? WHERE name = ?", (pos, name))
            proj.execute("COMMIT")
        dt = time.perf_counter() - t0
        con.close()
        proj.close()
        del body
        return dt

    # -- (e): run in child processes
    def e_append(self, path: str, n: int, lo: float, hi: float) -> list[int]:
        con = C.sqlite_connect(path)
        ex = con.execute
        ins = f"INSERT INTO events ({INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)"
        rnd = random.Random(7)
        stamps = []
        for i in range(n):
            ex("BEGIN IMMEDIATE")
            ex(ins, (C.uuid7_str(), "latency", EVENT_TYPE, i + 1, C.now_iso(), None, None,
                     _dumps({"title": C.TITLE, "amount": i})))
            ex("COMMIT")
            stamps.append(time.monotonic_ns())
            time.sleep(rnd.uniform(lo, hi))
        con.close()
        return stamps

    def e_subscribe(self, path: str, n: int, on_event, stop: threading.Event) -> None:
        """Poll PRAGMA data_version every 1 ms (the anchors' 1 ms point), read new rows."""
        con = C.sqlite_connect(path)
        sel = f"SELECT {SELECT_COLS} FROM events WHERE id > ? ORDER BY id LIMIT 1000"
        pos = 0
        last_dv = None
        while not stop.is_set():
            dv = con.execute("PRAGMA data_version").fetchone()[0]
            if dv != last_dv:
                last_dv = dv
                rows = con.execute(sel, (pos,)).fetchall()
                while rows:
                    for row in rows:
                        on_event(_loads(row[8])["amount"])
                    pos = rows[-1][0]
                    rows = con.execute(sel, (pos,)).fetchall()
                continue
            time.sleep(0.001)
        con.close()


class RawPostgres:
    """psycopg 3, same table shape, jsonb body read back as text + json.loads,
    synchronous_commit as the server has it (on by default)."""

    name = "raw"
    backend = "postgres"
    note = ""

    DDL = [
        """CREATE TABLE IF NOT EXISTS events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            uuid UUID NOT NULL UNIQUE,
            aggregate_id TEXT NOT NULL,
            type TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            correlation_id TEXT,
            causation_id TEXT,
            body JSONB NOT NULL,
            UNIQUE (aggregate_id, version))""",
        "CREATE INDEX IF NOT EXISTS events_type_id ON events (type, id)",
        "CREATE TABLE IF NOT EXISTS trackers (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    ]

    def __init__(self, dbs: C.PGDatabases):
        import psycopg
        self.psycopg = psycopg
        self.dbs = dbs

    def connect(self, conninfo):
        return self.psycopg.connect(conninfo, autocommit=True)

    def new_store(self) -> str:
        ci = self.dbs.fresh()
        with self.connect(ci) as con:
            for s in self.DDL:
                con.execute(s)
        return ci

    def drop_store(self, ci: str) -> None:
        self.dbs.drop(ci)

    def settings(self, ci: str) -> dict:
        with self.connect(ci) as con:
            return {"synchronous_commit": con.execute("SHOW synchronous_commit").fetchone()[0],
                    "fsync": con.execute("SHOW fsync").fetchone()[0]}

    INS = (f"INSERT INTO events ({INSERT_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)")
    LOAD = ("SELECT id, uuid, aggregate_id, type, version, created_at, correlation_id, "
            "causation_id, body::text FROM events WHERE aggregate_id = %s ORDER BY version")

    def _row(self, aid, version, amount):
        return (C.uuid7_str(), aid, EVENT_TYPE, version, C.now_iso(), None, None,
                _dumps({"title": C.TITLE, "amount": amount}))

    def a(self, ci: str, ids: list[str], n_cmd: int) -> float:
        con = self.connect(ci)
        cur = con.cursor()
        n_agg = len(ids)
        t0 = time.perf_counter()
        for i in range(n_cmd):
            aid = ids[i % n_agg]
            version = 0
            count = 0
            for row in cur.execute(self.LOAD, (aid,), prepare=True).fetchall():
                count += _loads(row[8])["amount"]
                version = row[4]
            with con.transaction():
                got = cur.execute("SELECT max(version) FROM events WHERE aggregate_id = %s", (aid,),
                                  prepare=True).fetchone()[0] or 0
                if got != version:
                    raise RuntimeError("concurrency error")
                cur.execute(self.INS, self._row(aid, version + 1, i), prepare=True)
        dt = time.perf_counter() - t0
        con.close()
        return dt

    # (i): a connection per thread; the write takes a transaction-scoped advisory lock, as
    # eventsourcery's does (gapless ids need one writer at a time between "take ids" and commit)
    def i(self, ci: str, n_threads: int, n_cmd: int, mode: str = "cmd", prefix: str = ""):
        per = n_cmd // n_threads

        def work(k):
            con = self.connect(ci)
            cur = con.cursor()
            ids = [f"thread-{prefix}{k}-{j}" for j in range(10)]
            known = [0] * 10  # versions written (sink mode keeps them instead of loading)
            lat = []
            clock = time.perf_counter
            try:
                for i in range(per):
                    t0 = clock()
                    aid = ids[i % 10]
                    version = 0
                    if mode == "sink":
                        version = known[i % 10]
                    else:
                        for row in cur.execute(self.LOAD, (aid,), prepare=True).fetchall():
                            _loads(row[8])
                            version = row[4]
                    with con.transaction():
                        cur.execute("SELECT pg_advisory_xact_lock(42)", prepare=True)
                        got = cur.execute("SELECT max(version) FROM events WHERE aggregate_id = %s",
                                          (aid,), prepare=True).fetchone()[0] or 0
                        if got != version:
                            raise RuntimeError("concurrency error")
                        cur.execute(self.INS, self._row(aid, version + 1, i), prepare=True)
                    known[i % 10] = version + 1
                    lat.append(clock() - t0)
            finally:
                con.close()
            return lat

        return C.run_threads(n_threads, work)

    # (j): the writer and the reader on connections of their own
    def j(self, ci: str, n_reads: int, writer=None):
        w, r = self.connect(ci), self.connect(ci)
        for v in range(1, 11):
            w.execute(self.INS, self._row("read-me", v, v))

        def write_once(i):
            w.execute(self.INS, self._row(f"written-{i}", 1, i), prepare=True)

        def read_once():
            rows = r.execute(self.LOAD, ("read-me",), prepare=True).fetchall()
            assert len(rows) == 10 and all(_loads(row[8]) for row in rows)

        try:
            return C.read_under_writer(write_once, read_once, n_reads, writer)
        finally:
            w.close()
            r.close()

    def b(self, ci: str, agg_id: str, n: int, batch: int) -> float:
        con = self.connect(ci)
        cur = con.cursor()
        version = 0
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            rows = [self._row(agg_id, j + 1, j) for j in range(start, min(start + batch, n))]
            with con.transaction():
                got = cur.execute("SELECT max(version) FROM events WHERE aggregate_id = %s",
                                  (agg_id,), prepare=True).fetchone()[0] or 0
                if got != version:
                    raise RuntimeError("concurrency error")
                cur.executemany(self.INS, rows)
            version += len(rows)
        dt = time.perf_counter() - t0
        con.close()
        return dt

    def c_build(self, ci, agg_id, n):
        self.b(ci, agg_id, n, 1000)

    def c(self, ci: str, agg_id: str, repeats: int) -> list[float]:
        con = self.connect(ci)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            count = 0
            for row in con.execute(self.LOAD, (agg_id,), prepare=True).fetchall():
                count += _loads(row[8])["amount"]
            out.append(time.perf_counter() - t0)
        con.close()
        return out

    def h_build(self, ci: str, agg_id: str, n: int, batch: int, every: int) -> str:
        con = self.connect(ci)
        cur = con.cursor()
        cur.execute(SNAP_DDL)
        for version, rows, snap in _h_batches(agg_id, n, batch, every):
            with con.transaction():
                got = cur.execute("SELECT max(version) FROM events WHERE aggregate_id = %s",
                                  (agg_id,), prepare=True).fetchone()[0] or 0
                if got != version:
                    raise RuntimeError("concurrency error")
                cur.executemany(self.INS, rows)
                if snap:
                    cur.execute(SNAP_UPSERT.format("%s"), snap)
        con.close()
        return agg_id

    def h(self, ci: str, agg_id: str, n: int, every: int, replays: int, snap_loads: int):
        """As RawSQLite.h, with prepared statements."""
        con = self.connect(ci)
        after = ("SELECT id, uuid, aggregate_id, type, version, created_at, correlation_id, "
                 "causation_id, body::text FROM events WHERE aggregate_id = %s AND version >= %s "
                 "ORDER BY version")
        snap_sql = SNAP_SELECT.format("%s")

        def full_load():
            count = version = 0
            for row in con.execute(self.LOAD, (agg_id,), prepare=True).fetchall():
                count += _loads(row[8])["amount"]
                version = row[4]
            return version, count

        def snap_load():
            snap = con.execute(snap_sql, (agg_id,), prepare=True).fetchone()
            return _h_fold_after_snapshot(
                snap, con.execute(after, (agg_id, snap[0]), prepare=True).fetchall())

        try:
            return _h_loop(full_load, snap_load, n, replays, snap_loads)
        finally:
            con.close()

    def d_build(self, ci: str, n: int, n_aggs: int) -> None:
        ids = C.agg_ids(n_aggs, prefix=0xD)
        per = n // n_aggs
        with self.connect(ci) as con:
            with con.cursor().copy(f"COPY events ({INSERT_COLS}) FROM STDIN") as cp:
                for k in range(n):
                    cp.write_row(self._row(ids[k // per], k % per + 1, k))

    def d(self, ci: str, n: int, workdir: str, page: int, tag: str = "") -> float:
        con = self.connect(ci)
        name = "bench" + tag
        con.execute("INSERT INTO trackers VALUES (%s, 0) ON CONFLICT DO NOTHING", (name,))
        sel = ("SELECT id, uuid, aggregate_id, type, version, created_at, correlation_id, "
               "causation_id, body::text FROM events WHERE id > %s ORDER BY id LIMIT %s")
        handled = 0
        t0 = time.perf_counter()
        pos = con.execute("SELECT position FROM trackers WHERE name = %s", (name,)).fetchone()[0]
        while handled < n:
            rows = con.execute(sel, (pos, page), prepare=True).fetchall()
            if not rows:
                time.sleep(0.001)
                continue
            for row in rows:
                _loads(row[8])
                handled += 1
            pos = rows[-1][0]
            with con.transaction():
                con.execute("UPDATE trackers SET position = %s WHERE name = %s", (pos, name),
                            prepare=True)
        dt = time.perf_counter() - t0
        con.close()
        return dt

    def e_append(self, ci: str, n: int, lo: float, hi: float) -> list[int]:
        con = self.connect(ci)
        rnd = random.Random(7)
        stamps = []
        for i in range(n):
            with con.transaction():
                con.execute(self.INS, self._row("latency", i + 1, i), prepare=True)
                con.execute("NOTIFY events")
            stamps.append(time.monotonic_ns())
            time.sleep(rnd.uniform(lo, hi))
        con.close()
        return stamps

    def e_subscribe(self, ci: str, n: int, on_event, stop: threading.Event) -> None:
        con = self.connect(ci)
        con.execute("LISTEN events")
        sel = "SELECT id, body::text FROM events WHERE id > %s ORDER BY id LIMIT 1000"
        pos = 0
        while not stop.is_set():
            rows = con.execute(sel, (pos,), prepare=True).fetchall()
            if rows:
                for row in rows:
                    on_event(_loads(row[1])["amount"])
                pos = rows[-1][0]
                continue
            for _ in con.notifies(timeout=0.5, stop_after=1):
                pass
        con.close()
