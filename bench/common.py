"""Shared helpers for the benchmark harness: sizes, timing, fast ids, SQLite and
Postgres plumbing, bulk prefill of stores.  Nothing in here is timed itself."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid

DEFAULT_PG = "host=127.0.0.1 port=5432 dbname=test user=postgres"
PG_ENV = "EVENTSOURCERY_TEST_POSTGRES"

SYSTEMS = ("eventsourcery", "eventsourcing", "raw")
WORKLOADS = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "web", "aio", "p")

TITLE = "benchmark item"  # the payload every event carries: {"title": TITLE, "amount": i}


class Sizes:
    """Workload sizes.  Full sizes are the ones BENCHMARKS.md describes; quick sizes keep the whole
    `--quick` run under a minute on 2 cores."""

    def __init__(self, quick: bool, runs: int | None = None):
        self.quick = quick
        if quick:
            self.runs = runs or 2
            self.a_commands, self.a_aggregates = 1_000, 100
            self.b_events, self.b_batch = 10_000, 100
            self.c_events, self.c_repeats = 10_000, 2
            self.d_events = 20_000
            self.e_events, self.e_idle_s, self.e_settle_s = 40, 0.5, 0.3
            self.f_sizes = (10_000, 100_000)
            self.f_runs = 1
            self.g_events = 100_000
            self.h_replays, self.h_snap_loads = 1, 20
            self.i_threads, self.i_commands = (1, 4, 16), 400
            self.j_reads = 200
            self.k_processes, self.k_commands = (1, 4), 400
            # (p): a smoke run of each partition row, small backlogs, one run each
            self.p_react_events, self.p_react_instances = 80, (1, 4)
            self.p_proj_events, self.p_proj_instances = 800, (1, 4)
            self.p_join_instances = (1,)
            self.p_load_events = 0  # no join under load
            self.p_runs = runs or 1
        else:
            self.runs = runs or 5
            self.a_commands, self.a_aggregates = 20_000, 1_000
            self.b_events, self.b_batch = 10_000, 100
            self.c_events, self.c_repeats = 10_000, 5
            self.d_events = 100_000
            self.e_events, self.e_idle_s, self.e_settle_s = 400, 3.0, 1.0
            self.f_sizes = (10_000, 1_000_000)
            self.f_runs = runs or 5
            self.g_events = 1_000_000
            self.h_replays, self.h_snap_loads = 5, 100
            self.i_threads, self.i_commands = (1, 2, 4, 8, 16), 2_000
            self.j_reads = 1_000
            self.k_processes, self.k_commands = (1, 2, 4, 8), 2_000
            self.p_react_events, self.p_react_instances = 2_000, (1, 2, 4)
            self.p_proj_events, self.p_proj_instances = 100_000, (1, 4)
            self.p_join_instances = (1, 2)  # runners joining the first: 2, then 4 instances
            self.p_load_events = 8_000  # (p.join2busy) the backlog the first instance works on
            self.p_runs = runs or 1  # (p) takes minutes a run: one run unless --runs says more
        self.d_page = 1_000  # page size for every system's catch-up read
        self.e_interval = (0.005, 0.025)  # appender sleeps uniform(lo, hi) between events
        # (h): one aggregate of 10,050 events saved 100 at a time, snapshot_every=100: the latest
        # snapshot is at 10,000 and a snapshot load replays the 50 events after it
        self.h_events, self.h_batch, self.h_every = 10_050, 100, 100

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


# ----------------------------------------------------------------------------- ids

_last_ms = 0
_seq = 0


def uuid7_str() -> str:
    """A time-ordered (version 7 layout) lower-case uuid string; what a careful
    hand-written appender would use so the UNIQUE(uuid) index stays append-only."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        _seq += 1
        ms = _last_ms
    else:
        _seq = 0
        _last_ms = ms
    rnd = int.from_bytes(os.urandom(8), "big")
    v = (ms << 80) | (0x7 << 76) | ((_seq & 0xFFF) << 64) | (0b10 << 62) | (rnd >> 2)
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def agg_ids(n: int, prefix: int = 0xB) -> list[str]:
    """n distinct aggregate ids (uuid strings), deterministic per prefix."""
    return [str(uuid.UUID(int=(prefix << 120) | (i + 1))) for i in range(n)]


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


# ----------------------------------------------------------------------------- timing


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def median(xs):
    s = sorted(xs)
    n = len(s)
    if not n:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs, p):
    s = sorted(xs)
    if not s:
        return None
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_fields(lat):
    """The p50_ms / p99_ms / max_ms fields of a row, from latencies in seconds (None when there are
    none)."""
    return {"p50_ms": percentile(lat, 50) * 1e3 if lat else None,
            "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
            "max_ms": max(lat) * 1e3 if lat else None}


# ----------------------------------------------------------------------------- sqlite

RAW_SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        aggregate_id TEXT NOT NULL,
        type TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        correlation_id TEXT,
        causation_id TEXT,
        body TEXT NOT NULL,
        UNIQUE (aggregate_id, version))""",
    "CREATE INDEX IF NOT EXISTS events_type_id ON events (type, id)",
]
RAW_TRACKER_DDL = (
    "CREATE TABLE IF NOT EXISTS trackers (name TEXT PRIMARY KEY, position INTEGER NOT NULL)")
EVENT_COLUMNS = ("id", "uuid", "aggregate_id", "type", "version", "created_at",
                 "correlation_id", "causation_id", "body")


def sqlite_connect(path: str, synchronous: str = "FULL") -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    return con


def sqlite_pragmas(con: sqlite3.Connection) -> dict:
    return {
        "journal_mode": con.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            con.execute("PRAGMA synchronous").fetchone()[0]),
    }


def sqlite_schema(path: str) -> list[tuple[str, str, str]]:
    """(type, name, sql) of every user object in a SQLite file, as sqlite_master has it."""
    con = sqlite3.connect(path)
    try:
        return [tuple(r) for r in con.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
    finally:
        con.close()


def sqlite_copy(src: str, dst: str) -> None:
    """Copy a (checkpointed, closed) SQLite file, and its -wal if any."""
    shutil.copyfile(src, dst)
    for suffix in ("-wal",):
        if os.path.exists(src + suffix):
            shutil.copyfile(src + suffix, dst + suffix)


def sqlite_checkpoint(path: str) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def sqlite_clone_fill(path: str, table: str, *, agg_col: str, ver_col: str,
                      uuid_col: str | None, id_col: str | None, n_events: int,
                      events_per_agg: int, agg_id_fn, tail_aggregate: tuple[str, int] | None = None,
                      amount_json: bool = False) -> None:
    """Bulk-insert n_events rows into `table` of an existing store, each a clone of
    the newest row already there (one event the library itself wrote), with new
    aggregate ids / versions / uuids.  `tail_aggregate=(id, n)` appends one more
    aggregate with n events at the end.  Builds run with synchronous=OFF; they are
    setup, not measurement."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        cur = con.execute(f"SELECT * FROM {table} ORDER BY rowid DESC LIMIT 1")
        cols = [d[0] for d in cur.description]
        sample = cur.fetchone()
        if sample is None:
            raise RuntimeError(f"no sample row in {table} of {path}")
        keep = [c for c in cols if c != id_col]
        idx = {c: keep.index(c) for c in keep}
        base = [sample[cols.index(c)] for c in keep]
        sql = f"INSERT INTO {table} ({', '.join(keep)}) VALUES ({', '.join('?' * len(keep))})"
        ai, vi = idx[agg_col], idx[ver_col]
        ui = idx[uuid_col] if uuid_col else None
        counter = [0]

        def rows(agg_id_of, versions):
            for k in range(versions[0], versions[1]):
                r = list(base)
                r[ai] = agg_id_of(k)
                r[vi] = versions[2](k)
                if ui is not None:
                    counter[0] += 1
                    c = counter[0]
                    r[ui] = (f"00000000-{(c >> 60) & 0xFFFF:04x}-7{(c >> 48) & 0xFFF:03x}-8000-"
                             f"{c & 0xFFFFFFFFFFFF:012x}")
                yield r

        con.execute("BEGIN")
        con.executemany(sql, rows(lambda k: agg_id_fn(k // events_per_agg),
                                  (0, n_events, lambda k: k % events_per_agg + 1)))
        if tail_aggregate:
            tid, tn = tail_aggregate
            con.executemany(sql, rows(lambda k: tid, (0, tn, lambda k: k + 1)))
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def probe_commits(tmpdir: str, seconds: float) -> dict:
    """Bare durable-commit rate of this disk right now: 1-row `BEGIN IMMEDIATE;
    INSERT; COMMIT` transactions, WAL, synchronous=FULL vs NORMAL.  The floor
    under every per-command workload; it drifts on shared VMs, so it is
    measured in the same run."""
    out = {}
    for sync in ("FULL", "NORMAL"):
        path = os.path.join(tmpdir, f"probe_{sync}.db")
        con = sqlite_connect(path, sync)
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL, v INTEGER NOT NULL)")
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (a, v) VALUES (?, ?)", ("x", n))
            con.execute("COMMIT")
            n += 1
        dt = time.perf_counter() - t0
        con.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.remove(path + suffix)
        out[f"commits_per_s_{sync.lower()}"] = n / dt
        out[f"us_per_commit_{sync.lower()}"] = dt / n * 1e6
    return out


def on_tmpfs(path: str) -> bool:
    try:
        best, fstype = "", ""
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if os.path.realpath(path).startswith(mnt) and len(mnt) > len(best):
                    best, fstype = mnt, parts[2]
        return fstype in ("tmpfs", "ramfs")
    except OSError:
        return False


# ----------------------------------------------------------------------------- postgres


def pg_conninfo() -> str:
    return os.environ.get(PG_ENV) or DEFAULT_PG


def pg_reachable(conninfo: str) -> tuple[bool, str]:
    try:
        import psycopg
    except ImportError as e:
        return False, f"psycopg not importable ({e})"
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as con:
            v = con.execute("SHOW server_version").fetchone()[0]
        return True, v
    except Exception as e:  # noqa: BLE001
        return False, f"server not reachable at {conninfo!r}: {e}".strip()


class PGDatabases:
    """Creates a fresh database per run (CREATE DATABASE ... TEMPLATE template0),
    drops it afterwards."""

    def __init__(self, conninfo: str):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
        self.psycopg = psycopg
        self.base = conninfo
        self.params = conninfo_to_dict(conninfo)
        self.make = make_conninfo
        self.n = 0
        self.created: list[str] = []
        self.tag = f"esbench_{os.getpid()}"

    def fresh(self) -> str:
        self.n += 1
        name = f"{self.tag}_{self.n}"
        with self.psycopg.connect(self.base, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}"')
            con.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self.created.append(name)
        return self.make(self.base, dbname=name)

    @contextlib.contextmanager
    def unsynced(self, conninfo: str):
        """`synchronous_commit = off` for new connections to this database while building a store
        (setup, not measurement); back to the server's setting afterwards."""
        from psycopg.conninfo import conninfo_to_dict
        name = conninfo_to_dict(conninfo)["dbname"]
        with self.psycopg.connect(self.base, autocommit=True) as con:
            con.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        try:
            yield
        finally:
            with self.psycopg.connect(self.base, autocommit=True) as con:
                con.execute(f'ALTER DATABASE "{name}" RESET synchronous_commit')

    def clone(self, conninfo: str) -> str:
        """A fresh database copied from the one at conninfo (CREATE DATABASE ... TEMPLATE it; no
        session may be connected to it meanwhile)."""
        from psycopg.conninfo import conninfo_to_dict
        source = conninfo_to_dict(conninfo)["dbname"]
        self.n += 1
        name = f"{self.tag}_{self.n}"
        with self.psycopg.connect(self.base, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}"')
            con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        self.created.append(name)
        return self.make(self.base, dbname=name)

    def drop(self, conninfo: str) -> None:
        from psycopg.conninfo import conninfo_to_dict
        name = conninfo_to_dict(conninfo)["dbname"]
        with self.psycopg.connect(self.base, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            with contextlib.suppress(Exception):
                self.drop(self.make(self.base, dbname=name))


# ----------------------------------------------------------------------------- machine


def machine_info(pg_version: str | None) -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    mem = None
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = int(line.split()[1]) // 1024
    versions = {}
    for mod in ("eventsourcing", "psycopg"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_mb": mem,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "python_optimize": sys.flags.optimize,
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg_version,
        "packages": versions,
    }


def child_cmd(*args: str) -> list[str]:
    """`python [-O...] -m bench.child ARGS` with the same -O setting as this process."""
    flags = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
    return [sys.executable, *flags, "-m", "bench.child", *args]


def run_child(args: list[str], timeout: float = 600) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run(child_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=root)
    if p.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed (rc={p.returncode}): "
                           f"{p.stderr.strip()[-2000:]}")
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not last:
        raise RuntimeError(f"child {args[:2]} printed no JSON: {p.stdout[-500:]} {p.stderr[-500:]}")
    return json.loads(last[-1])


# --- (i), (j): many threads in one process ------------------------------------------------------

def run_threads(n: int, work) -> tuple[float, list[float]]:
    """Run ``work(k)`` in n threads started together; each returns its per-operation latencies (s).
    Returns (wall seconds from the common start to the last thread's end, all latencies)."""
    import threading as _threading

    barrier = _threading.Barrier(n + 1)
    out: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def run(k):
        try:
            barrier.wait()
            out[k] = work(k)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [_threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, [x for xs in out for x in xs]


def read_under_writer(write_once, read_once, n_reads: int,
                      writer=None) -> tuple[list[float], int | None]:
    """Latencies of n_reads calls of read_once() while a thread calls write_once() without pause;
    returns (latencies, writes made meanwhile). With ``writer`` (a context manager that runs a
    writer in another process while it is open) that process writes instead, and the writes are not
    counted."""
    import threading as _threading

    if writer is not None:
        with writer():
            return read_every_ms(read_once, n_reads), None
    stop = _threading.Event()
    writes = [0]
    errors: list[BaseException] = []

    def writer():
        try:
            while not stop.is_set():
                write_once(writes[0])
                writes[0] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = _threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while writes[0] < 3 and not errors:  # the writer is under way
            time.sleep(0.001)
        lat = read_every_ms(read_once, n_reads)
    finally:
        stop.set()
        t.join()
    if errors:
        raise errors[0]
    return lat, writes[0]


def read_every_ms(read_once, n_reads: int) -> list[float]:
    """Latencies of n_reads calls of read_once(), a millisecond apart."""
    lat = []
    for _ in range(n_reads):
        t0 = time.perf_counter()
        read_once()
        lat.append(time.perf_counter() - t0)
        time.sleep(0.001)  # a request now and then, not a read loop that starves the writer
    return lat
