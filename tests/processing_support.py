"""Events, processors and process entry points for test_processing.py and test_runner.py.

Everything is at module level so that children started with the "spawn"
method can import it. Children report through files in a work directory
(pid files, JSON lines, logs) instead of asserting: the tests read them.

Type names carry a ``proctest.`` prefix so they never clash with the other
test modules' events.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import signal
import sys
import time
import traceback
import uuid

import eventsourcery as es

# --- events ---------------------------------------------------------------------------------------


class Tick(es.Event, type="proctest.tick"):
    n: int = 0


class Ping(es.Event, type="proctest.ping"):
    n: int = 0


class Pong(es.Event, type="proctest.pong"):
    ping_id: int


class Poison(es.Event, type="proctest.poison"):
    pass


class Slow(es.Event, type="proctest.slow"):
    seconds: float


EVENT_KINDS = {"tick": Tick, "ping": Ping}


# --- files written by children --------------------------------------------------------------------


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def append_json_line(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_json_lines(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


# --- processors -----------------------------------------------------------------------------------


class Instrumented:
    """Mixin: ``setup()`` (called by subscribe_to once the lock is held) writes ``<name>.pid`` in
    ``workdir``."""

    workdir: str | None = None
    error_handler_name: str | None = None

    def _announce(self) -> None:
        if self.workdir:
            name = self.processor_name  # type: ignore[attr-defined]
            write_atomically(os.path.join(self.workdir, f"{name}.pid"), str(os.getpid()))
            append_json_line(os.path.join(self.workdir, f"{name}.starts.jsonl"),
                             {"pid": os.getpid()})

    def _marker(self, suffix: str) -> None:
        if self.workdir:
            name = self.processor_name  # type: ignore[attr-defined]
            append_json_line(os.path.join(self.workdir, f"{name}.{suffix}.jsonl"),
                             {"pid": os.getpid()})


class CountingProjector(Instrumented, es.Projector):
    """Counts every event per aggregate and records each event id it applied (to catch repeats)."""

    processor_name = "event_counter"
    schema = """
        CREATE TABLE IF NOT EXISTS counts (aggregate_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS seen (event_id INTEGER NOT NULL)
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
        self.db.execute("INSERT INTO counts (aggregate_id, n) VALUES (?, 1) "
                        "ON CONFLICT (aggregate_id) DO UPDATE SET n = n + 1", (event.aggregate_id,))
        self.db.execute("INSERT INTO seen (event_id) VALUES (?)", (event.id,))


class OtherCounter(CountingProjector):
    processor_name = "other_counter"


def projection_of(db_path: str) -> dict:
    """The counting projection and its position, read through a new connection (committed data
    only)."""
    import sqlite3

    if db_path.startswith("postgresql://"):  # the Postgres runs of test_runner.py
        from tests import pg_support
        return pg_support.projection_of(db_path)

    conn = sqlite3.connect(db_path)
    try:
        counts = dict(conn.execute("SELECT aggregate_id, n FROM counts ORDER BY aggregate_id"))
        seen = [r[0] for r in conn.execute("SELECT event_id FROM seen ORDER BY rowid")]
        row = conn.execute("SELECT position FROM eventsourcery_trackers WHERE name = ?",
                           (CountingProjector.processor_name,)).fetchone()
    finally:
        conn.close()
    return {"counts": counts, "seen": seen, "position": row[0] if row else 0}


def projection_position(db_path: str) -> int:
    import sqlite3

    if db_path.startswith("postgresql://"):
        from tests import pg_support
        return pg_support.projection_position(db_path)

    if not os.path.exists(db_path):
        return 0
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        row = conn.execute("SELECT position FROM eventsourcery_trackers WHERE name = ?",
                           (CountingProjector.processor_name,)).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()
    return row[0] if row else 0


class PingReactor(Instrumented, es.Reactor):
    """Answers every Ping with one Pong; its position lives in the event store (db=None)."""

    processor_name = "ping_reactor"
    emits_events = (Pong,)
    # 20,000 pings under kill -9 (test_runner): grouped commits, as reactors made them before each
    # event got a unit of its own (tests/test_reactor_crash.py runs the default under kill -9)
    commit_interval = 0.005

    def __init__(self, store, *, workdir=None, error_handler_name=None):
        super().__init__(store)
        self.workdir = workdir
        self.error_handler_name = error_handler_name

    def setup(self):
        super().setup()
        self._announce()

    @es.on(Ping)
    def _ping(self, event):
        if self.workdir:  # an effect outside the database: at-least-once
            with open(os.path.join(self.workdir, "effects.txt"), "a") as f:
                f.write(f"{event.id}\n")
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id))


class LockHolder(Instrumented, es.EventStreamProcessor):
    """Does nothing; used to hold a processor's lock from another process."""

    processor_name = "lock_holder"

    def setup(self):
        super().setup()
        self._announce()

    @es.on()
    def _any(self, event):
        pass


# --- partitioned processors (tests/test_partitions_faults.py) -------------------------------------

#: how many partitions the partitioned processors below have
PARTITIONS = 6


class PartitionedRecorder(Instrumented, es.Projector):
    """A partitioned projector (SQLite or Postgres): one row per committed handling of a Tick or
    Slow event, in commit order (``seq``), with who handled it (``pid/label``) and a token of that
    handling. A Slow event first appends its token to ``<workdir>/slow.jsonl``, then
    sleeps. ``name`` overrides the processor name (a Postgres lock session is found by it)."""

    processor_name = "pf_recorder"
    partitions = PARTITIONS
    schema = """CREATE TABLE IF NOT EXISTS pf_handled (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id INTEGER NOT NULL,
                    aggregate_id TEXT NOT NULL, who TEXT NOT NULL, token TEXT NOT NULL)"""
    pg_schema = """CREATE TABLE IF NOT EXISTS pf_handled (
                       seq BIGSERIAL PRIMARY KEY, event_id BIGINT NOT NULL,
                       aggregate_id TEXT NOT NULL, who TEXT NOT NULL, token TEXT NOT NULL)"""

    def __init__(self, db, *, workdir=None, error_handler_name=None, name=None, label=""):
        if name is not None:
            self.processor_name = name  # type: ignore[misc]
        super().__init__(db)
        if self.placeholder == "%s":
            self.schema = self.pg_schema  # type: ignore[misc]
        self.workdir = workdir
        self.error_handler_name = error_handler_name
        self.label = label

    def setup(self):
        super().setup()
        self._announce()

    @es.on(Tick, Slow)
    def _record(self, event):
        token = uuid.uuid4().hex
        if isinstance(event, Slow):
            append_json_line(os.path.join(self.workdir, "slow.jsonl"),
                             {"event_id": event.id, "token": token, "who": self._who(),
                              "at": time.time()})
            time.sleep(event.seconds)
        p = self.placeholder
        self.db.execute(f"INSERT INTO pf_handled (event_id, aggregate_id, who, token) "
                        f"VALUES ({p}, {p}, {p}, {p})",
                        (event.id, event.aggregate_id, self._who(), token))

    def _who(self) -> str:
        return f"{os.getpid()}/{self.label}"


def run_recorder(store_url: str, projection: str, workdir: str, name: str, label: str,
                 parent_pid: int) -> None:
    """A process running one instance of PartitionedRecorder (``name``, ``label``) with
    run_processor until ``<workdir>/stop`` exists or its parent is gone; it logs to
    ``<workdir>/<label>.log``, and an error it raises goes to ``<workdir>/<label>.error``."""
    try:
        handler = logging.FileHandler(os.path.join(workdir, f"{label}.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(message)s"))
        logger = logging.getLogger("eventsourcery")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        store = es.open_store(store_url)
        recorder = PartitionedRecorder(projection, workdir=workdir, name=name, label=label)
        stop_path = os.path.join(workdir, "stop")
        es.run_processor(recorder, store, error_handler=es.ConstantRetry(0.02),
                         stop=lambda: os.path.exists(stop_path) or os.getppid() != parent_pid)
        store.close()
    except BaseException:
        write_atomically(os.path.join(workdir, f"{label}.error"), traceback.format_exc())
        raise


def recorded_rows(db: str) -> list[tuple[int, int, str, str, str]]:
    """PartitionedRecorder's committed rows (seq, event_id, aggregate_id, who, token), in commit
    order."""
    import sqlite3

    sql = "SELECT seq, event_id, aggregate_id, who, token FROM {s}pf_handled ORDER BY seq"
    if db.startswith("postgresql://"):
        from tests import pg_support
        return [tuple(r) for r in pg_support._query(db, sql.replace("{s}", "{s}."))]
    conn = sqlite3.connect(db, timeout=30)
    try:
        return [tuple(r) for r in conn.execute(sql.format(s=""))]
    finally:
        conn.close()


class PartitionedPonger(Instrumented, es.Reactor):
    """A partitioned reactor (its positions in the event store): answers every Ping with one Pong
    whose metadata names the pid that handled it. A Ping with ``n < 0`` is poison: its handler
    fails until ``<workdir>/healed`` exists."""

    processor_name = "pf_ponger"
    partitions = PARTITIONS
    emits_events = (Pong,)

    def __init__(self, store, *, workdir=None, error_handler_name=None):
        super().__init__(store)
        self.workdir = workdir
        self.error_handler_name = error_handler_name

    def setup(self):
        super().setup()
        self._announce()

    @es.on(Ping)
    def _ping(self, event):
        if event.n < 0 and not os.path.exists(os.path.join(self.workdir or ".", "healed")):
            raise RuntimeError(f"poison event {event.id}")
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id,
                             metadata={"pid": os.getpid()}))


# --- child configuration (ESPRunner after_fork) ---------------------------------------------------

ERROR_HANDLERS = {
    None: None,
    "none": es.NoRetry,
    "constant": lambda: es.ConstantRetry(0.05),
    "parking": lambda: es.ConstantRetry(interval=0.01, park_after=2),
}


def _record_error(path, exc, processor_name):
    append_json_line(path, {"name": processor_name, "type": type(exc).__name__, "message": str(exc),
                            "pid": os.getpid()})


def _record_critical(path, exc, processor_name):
    cause = exc.__cause__
    append_json_line(path, {"name": processor_name, "type": type(exc).__name__, "message": str(exc),
                            "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
                            "pid": os.getpid()})


def configure_child(processor) -> None:
    """after_fork: log to ``<workdir>/<name>.log``, record errors and critical errors, pick the
    error handler."""
    workdir = processor.workdir
    name = processor.processor_name
    logger = logging.getLogger("eventsourcery")
    handler = logging.FileHandler(os.path.join(workdir, f"{name}.log"))
    handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    options = {
        "logger": logger,
        "on_event_processor_error": functools.partial(_record_error,
                                                      os.path.join(workdir, "errors.jsonl")),
        "on_event_processor_critical_error": functools.partial(_record_critical,
                                                               os.path.join(
                                                                   workdir, "critical.jsonl")),
    }
    factory = ERROR_HANDLERS[processor.error_handler_name]
    if factory is not None:
        options["error_handler"] = factory
    es.configure(**options)


# --- other processes ------------------------------------------------------------------------------


def append_events(store_path: str, kind: str, total: int, n_aggregates: int, seed: int,
                  done_path: str, pause: float = 0.0, max_batch: int = 100) -> None:
    """Append ``total`` events in batches of random sizes (up to ``max_batch``) to random
    aggregates; then write ``done_path``. ``kind``: one of EVENT_KINDS, or several joined by ``+``
    (each batch is of one of them, at random)."""
    try:
        classes = [EVENT_KINDS[k] for k in kind.split("+")]
        rng = random.Random(seed)
        store = (es.open_store(store_path) if store_path.startswith("postgresql://")
                 else es.SQLiteEventStore(store_path, synchronous="NORMAL"))
        aggregates = [f"{kind}-agg-{i}" for i in range(n_aggregates)]
        written = 0
        while written < total:
            size = min(rng.randint(1, max_batch), total - written)
            aggregate_id = rng.choice(aggregates)
            cls = rng.choice(classes) if len(classes) > 1 else classes[0]
            store.sink([cls(aggregate_id=aggregate_id, n=written + i) for i in range(size)])
            written += size
            if pause:
                time.sleep(rng.uniform(0, pause))
        store.close()
        write_atomically(done_path, str(written))
    except BaseException:
        write_atomically(done_path + ".error", traceback.format_exc())
        raise


#: how hold_lock() holds a processor's lock: the store's lock() alone, or a LockHolder's
#: subscribe_to() with its position in the store's tracker or in memory (the lock is the store's
#: either way)
HOLD_LOCK_WAYS = ("lock", "store_tracker", "memory_tracker")


def hold_lock(store_url: str, name: str, workdir: str, how: str = "lock") -> None:
    """Hold processor ``name``'s lock on the store at ``store_url`` (an SQLite path or a
    postgresql:// URL) until killed; ``<workdir>/<name>.pid`` is written once the lock is held."""
    store = es.open_store(store_url)
    if how == "lock":
        with store.lock(name):
            write_atomically(os.path.join(workdir, f"{name}.pid"), str(os.getpid()))
            while True:
                time.sleep(1)
    if how not in HOLD_LOCK_WAYS:
        raise ValueError(how)
    holder_class = type("NamedLockHolder", (LockHolder,), {"processor_name": name})
    holder = holder_class(tracker=store.tracker() if how == "store_tracker" else None)
    # its setup(), run once subscribe_to holds the lock, writes the pid file
    holder.workdir = workdir
    holder.subscribe_to(store)


def counting_projector_class(db: str) -> type:
    """CountingProjector, or its Postgres twin for a postgresql:// projection database."""
    if db.startswith("postgresql://"):
        from tests import pg_support
        return pg_support.PgCountingProjector
    return CountingProjector


def build_processor(spec: dict, store):
    kind = spec["kind"]
    if kind == "counter":
        return counting_projector_class(spec["db"])(spec["db"], workdir=spec["workdir"],
                                                    batch_size=spec.get("batch_size"),
                                                    error_handler_name=spec.get("error_handler"))
    if kind == "ping_reactor":
        return PingReactor(store, workdir=spec["workdir"],
                           error_handler_name=spec.get("error_handler"))
    if kind == "partitioned_recorder":
        return PartitionedRecorder(spec["db"], workdir=spec["workdir"],
                                   error_handler_name=spec.get("error_handler"))
    if kind == "partitioned_ponger":
        return PartitionedPonger(store, workdir=spec["workdir"],
                                 error_handler_name=spec.get("error_handler"))
    raise ValueError(kind)


def runner_main(spec_path: str) -> None:
    """Entry point of a runner subprocess: ``python -c 'from tests.processing_support import
    runner_main; ...'``.

    Runs ESPRunner as described by the JSON spec, records every child's end in
    ``terminations.jsonl`` and the result in ``runner.json``; exits 0 when
    start() returned True, else 3.
    """
    with open(spec_path) as f:
        spec = json.load(f)
    workdir = spec["workdir"]
    store = es.open_store(spec["store"])  # an SQLite path or a postgresql://...?schema= URL
    processors = [build_processor(dict(p, workdir=workdir), store) for p in spec["processors"]]

    def after_termination(processor, runner, status):
        append_json_line(os.path.join(workdir, "terminations.jsonl"),
                         {"name": processor.processor_name, "status": status,
                          "at": time.monotonic()})

    options = {}
    if spec.get("restart"):
        options.update(restart=True, restart_delay=spec.get("restart_delay", 0.05),
                       max_restart_delay=spec.get("max_restart_delay", 0.2))
    elif "restart" in spec:
        options.update(restart=False)
    if "instances" in spec:
        options.update(instances=spec["instances"])
    runner = es.ESPRunner(processors, store,
                          max_seconds_for_processes_to_terminate=spec["max_seconds"],
                          after_fork=configure_child,
                          after_subprocess_termination=after_termination,
                          start_method=spec["start_method"], **options)
    write_atomically(os.path.join(workdir, "runner.pid"), str(os.getpid()))
    ok = runner.start()
    write_atomically(os.path.join(workdir, "runner.json"),
                     json.dumps({"ok": ok, "exit_statuses": runner.exit_statuses,
                                 "ended": time.monotonic()}))
    sys.stdout.flush()
    sys.exit(0 if ok is True else 3)


def early_shutdown_main(store_path: str, workdir: str, start_method: str) -> None:
    """In a fresh interpreter: an ESPRunner whose shutdown() was called before start(); prints the
    result.

    With "fork", every forked child first sleeps 0.5 s in an at-fork hook, before any of ESPRunner's
    code runs in it, so that the runner's TERM arrives in that window.
    """
    if start_method == "fork":
        os.register_at_fork(after_in_child=lambda: time.sleep(0.5))
    projector = CountingProjector(os.path.join(workdir, "projection.db"), workdir=workdir)
    runner = es.ESPRunner([projector], es.SQLiteEventStore(store_path), start_method=start_method,
                          max_seconds_for_processes_to_terminate=2)
    runner.shutdown()
    ok = runner.start()
    print(json.dumps({"ok": ok, "exit_statuses": runner.exit_statuses}), flush=True)


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
