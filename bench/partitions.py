"""Workload (p): partitioned processors (``partitions = 8``) run by k instances
(``es.ESPRunner(..., instances=k)``), eventsourcery only (the peer has no partitioned processors,
the raw ceiling no processors at all). Each runner is a child process of its own
(``python -m bench.child p-runner ...``), so that an instance can be killed and another runner can
join, as on another host.

  p.react{k}  a reactor whose handler sleeps 20 ms, k = 1, 2, 4 instances, on a backlog of 2,000
              events sunk before the runner starts. events/s = handled events / (last handler end
              - first handler start), from the handlers' own time stamps; the note's drain is the
              time from starting the runner until the reactor's wait_for(latest) is True.
  p.proj{k}   a projector catching up on 100,000 events (Postgres), k = 1, 4, with a CPU-bound
              handler: WORK_ITERS rounds of pure-Python arithmetic (~250 us) and one INSERT;
              the time from starting the runner until wait_for(latest) is True.
  p.join{k}   an idle partitioned reactor: the time from starting another runner until
              processor_statuses shows k instances, each owning at most ceil(8 / k) partitions, and
              every partition owned.
  p.kill{k}   after a kill -9 of one instance of k + 1: the time until every partition is owned
              by one of the k survivors (the note adds when they were balanced again).

Aggregate ids are chosen so that every partition holds the same number of events (the hash's luck
would otherwise decide how well 4 instances can share 8 partitions)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import eventsourcery as es

from . import common as C
from .sys_es import BenchItemAdded

try:
    import eventsourcery_pg as es_pg
except ImportError:  # the Postgres rows are skipped then
    es_pg = None  # type: ignore[assignment]

PARTITIONS = 8
HANDLER_S = 0.02  # the reactor's handler: time.sleep(HANDLER_S)
WORK_ITERS = 3_000  # the projector's handler: this many rounds of arithmetic (~250 us here)
POLL_S = 0.02  # how often the parent reads processor_statuses while it waits for a rebalance


# ------------------------------------------------------------------------------------ processors

_log_fds: dict[tuple[int, str], int] = {}


def _log(log_dir: str, line: str) -> None:
    """Append a line to this process's log file in log_dir (one file per process: no locking)."""
    key = (os.getpid(), log_dir)
    fd = _log_fds.get(key)
    if fd is None:
        fd = _log_fds[key] = os.open(os.path.join(log_dir, f"{os.getpid()}.log"),
                                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, line.encode())


class SlowReactor(es.Reactor):
    """A handler that waits 20 ms (a call to a slow service), then logs the event's id and when
    it started and ended (monotonic clock: one clock for every process of the machine)."""

    processor_name = "bench_slow_reactor"
    partitions = PARTITIONS
    log_dir: str | None = None

    @es.on(BenchItemAdded)
    def _slow(self, event):
        t0 = time.monotonic()
        time.sleep(HANDLER_S)
        if self.log_dir:
            _log(self.log_dir, f"{event.id} {t0:.6f} {time.monotonic():.6f}\n")


class IdleReactor(es.Reactor):
    """A handler that does nothing: (p.join) and (p.kill) time the rebalancing alone."""

    processor_name = "bench_idle_reactor"
    partitions = PARTITIONS

    @es.on(BenchItemAdded)
    def _noop(self, event):
        pass


def cpu_work(n: int = WORK_ITERS) -> int:
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1_000_003
    return x


if es_pg is not None:
    class CPUProjector(es_pg.Projector):
        """Pure-Python work per event, then one INSERT (keyed by the event's id: a second
        insert of one event would fail)."""

        processor_name = "bench_cpu_projector"
        partitions = PARTITIONS
        schema = ("CREATE TABLE IF NOT EXISTS bench_cpu_projection ("
                  "event_id BIGINT PRIMARY KEY, aggregate_id TEXT NOT NULL, x BIGINT NOT NULL)")

        @es.on(BenchItemAdded)
        def _project(self, event):
            self.db.execute("INSERT INTO bench_cpu_projection VALUES (%s, %s, %s)",
                            (event.id, event.aggregate_id, cpu_work()))


    class WholeCPUProjector(CPUProjector):
        """The same projector not split (partitions = 1): (p.whole1), the cost of the split."""

        processor_name = "bench_cpu_projector_whole"
        partitions = 1


def make_processor(kind: str, store, spec: str, log_dir: str | None):
    if kind == "react":
        p = SlowReactor(store)
        p.log_dir = log_dir
        return p
    if kind == "idle":
        return IdleReactor(store)
    if kind == "proj":
        return CPUProjector(spec)
    if kind == "projwhole":
        return WholeCPUProjector(spec)
    raise ValueError(f"unknown processor kind {kind!r}")


def run_runner(backend: str, spec: str, kind: str, instances: str, log_dir: str,
               restart: str) -> None:
    """The child: one ESPRunner with `instances` instances of one processor, until SIGTERM."""
    from .child import make_target
    t = make_target("eventsourcery", backend, tempfile.gettempdir())
    store = t.open(spec)
    processor = make_processor(kind, store, spec, None if log_dir == "-" else log_dir)
    runner = es.ESPRunner([processor], store, instances=int(instances), restart=restart == "1")
    sys.exit(0 if runner.start() else 1)


# ------------------------------------------------------------------------------------ parent side

def balanced_ids(per_partition: int, prefix: int) -> list[str]:
    """per_partition aggregate ids for each of the PARTITIONS partitions (deterministic)."""
    by_part: list[list[str]] = [[] for _ in range(PARTITIONS)]
    i = 0
    while min(len(ids) for ids in by_part) < per_partition:
        i += 1
        aid = str(uuid.UUID(int=(prefix << 120) | i))
        ids = by_part[es.partition_of(aid, PARTITIONS)]
        if len(ids) < per_partition:
            ids.append(aid)
    return [aid for ids in zip(*by_part, strict=True) for aid in ids]  # partitions interleaved


def fill(store, n_events: int, per_agg: int, prefix: int) -> int:
    """n_events events, per_agg per aggregate, in blocks of 10 round-robin over the aggregates
    (so every partition's events are spread over the whole log); returns the latest id."""
    n_aggs = n_events // per_agg
    if n_aggs % PARTITIONS or n_events % per_agg or per_agg % 10:
        raise ValueError("sizes must split evenly over partitions and blocks of 10")
    ids = balanced_ids(n_aggs // PARTITIONS, prefix)
    for block in range(per_agg // 10):
        for aid in ids:
            store.sink([BenchItemAdded(aggregate_id=aid, title=C.TITLE, amount=block * 10 + j)
                        for j in range(10)])
    return store.latest_event_id()


class Runner:
    """A runner child process (python -m bench.child p-runner ...), its stderr in a file."""

    def __init__(self, workdir: str, backend: str, spec: str, kind: str, instances: int,
                 log_dir: str = "-", restart: bool = True):
        self.args = ["p-runner", backend, spec, kind, str(instances), log_dir,
                     "1" if restart else "0"]
        self.instances = instances
        self.err_path = os.path.join(workdir, f"runner-{time.time_ns()}.err")
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> float:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        with open(self.err_path, "w") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(C.child_cmd(*self.args), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root)
        return self.started

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.err_path) as f:
            return f.read()[-1500:]
        return ""

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"runner {self.args[3:5]} ended (rc={self.proc.returncode}): "
                               f"{self.stderr_tail()}")

    def instance_pids(self) -> set[int]:
        """The pids of this runner's children (its instances), from /proc."""
        if self.proc is None:
            return set()
        out = set()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{tid}/children") as f:
                    out.update(int(x) for x in f.read().split())
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def quiet_wait_warning():
    """Leave out wait_for's warning that no instance runs the processor (yet)."""
    def keep(record: logging.LogRecord) -> bool:
        return "wait_for(" not in record.getMessage()

    es.config.logger.addFilter(keep)
    try:
        yield
    finally:
        es.config.logger.removeFilter(keep)


def wait_drained(processor, latest: int, runners: list[Runner], timeout: float) -> float:
    """Wait until processor.wait_for(latest) is True (checking the runners are alive each second);
    returns the monotonic time it was."""
    deadline = time.monotonic() + timeout
    while True:
        for r in runners:
            r.check()
        with quiet_wait_warning():  # the runner has just been started: its instances come soon
            if processor.wait_for(latest, timeout=1.0):
                return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{processor.processor_name} not at {latest} after {timeout:.0f}s "
                               f"(position {processor.last_processed_event_id})")


def partition_owners(store, name: str) -> list[str | None]:
    """The owner of each partition of processor `name`, as processor_statuses shows them."""
    for st in es.processor_statuses(store):
        if st.name == name:
            parts = sorted(st.partitions, key=lambda p: p.partition)
            return [p.owner for p in parts]
    return []


def balanced(owners: list[str | None], k: int) -> bool:
    """Every partition owned, by exactly k instances, none owning more than ceil(N / k)."""
    if len(owners) != PARTITIONS or None in owners:
        return False
    counts: dict[str, int] = {}
    for o in owners:
        counts[o] = counts.get(o, 0) + 1  # type: ignore[index]
    return len(counts) == k and max(counts.values()) <= math.ceil(PARTITIONS / k)


def wait_owners(store, name: str, ok, runners: list[Runner], timeout: float = 60.0,
                what: str = "") -> tuple[float, list[str | None]]:
    """Poll processor_statuses until ok(owners); returns (monotonic time, owners)."""
    deadline = time.monotonic() + timeout
    owners: list[str | None] = []
    while time.monotonic() < deadline:
        owners = partition_owners(store, name)
        if ok(owners):
            return time.monotonic(), owners
        for r in runners:
            r.check()
        time.sleep(POLL_S)
    raise RuntimeError(f"{name}: not {what} after {timeout:.0f}s; owners {owners}")


def owner_pid(owner: str) -> int:
    pid, _, host = owner.partition("@")
    if host and host != socket.gethostname():
        raise RuntimeError(f"owner {owner!r} is not on this host")
    return int(pid)


def read_logs(log_dir: str) -> tuple[int, int, list[float], float]:
    """(handler calls, distinct events, each instance's first start (sorted), last end) from the
    reactor's logs (a file per instance)."""
    calls, ids, firsts, last = 0, set(), [], -math.inf
    for name in os.listdir(log_dir):
        first = math.inf
        with open(os.path.join(log_dir, name)) as f:
            for line in f:
                eid, t0, t1 = line.split()
                calls += 1
                ids.add(int(eid))
                first, last = min(first, float(t0)), max(last, float(t1))
        firsts.append(first)
    return calls, len(ids), sorted(firsts), last


# ------------------------------------------------------------------------------------ workload

def workload(harness, backend: str) -> None:
    t = next((t for t in harness.targets.get(backend, []) if t.name == "eventsourcery"), None)
    if t is None:
        harness.skip("p", backend, "eventsourcery", "no eventsourcery target")
        return
    if not hasattr(es, "partition_of"):
        harness.skip("p", backend, "eventsourcery", "this eventsourcery has no partitions")
        return
    for part, fn in (("react", react), ("proj", proj), ("rebalance", rebalance)):
        try:
            fn(harness, t, backend)
        except Exception as e:  # noqa: BLE001
            harness.error(f"p.{part}/{backend}", e)


def built_store(harness, t, backend: str, n: int, per_agg: int, prefix: int):
    """A store holding n events (sunk with synchronous=OFF / synchronous_commit=off: setup);
    returns (spec, latest id)."""
    spec = t.new_store()
    t0 = time.perf_counter()
    with (harness.pg_dbs.unsynced(spec) if backend == "postgres" else contextlib.nullcontext()):
        with t.open_for_build(spec) as store:
            latest = fill(store, n, per_agg, prefix)
    if backend == "sqlite":
        C.sqlite_checkpoint(spec)
    harness.log(f"  built a {n:,}-event store for (p) in {time.perf_counter() - t0:.1f}s")
    return spec, latest


def fresh_copy(harness, t, backend: str, spec: str) -> str:
    if backend == "sqlite":
        return harness.copy_of(spec, t)
    return harness.pg_dbs.clone(spec)


def react(harness, t, backend: str) -> None:
    """p.react{k}: drain a backlog of p_react_events with k instances of the 20 ms reactor."""
    s = harness.sizes
    n = s.p_react_events
    template, latest = built_store(harness, t, backend, n, 10, prefix=0x7)
    rows = {}
    try:
        for k in s.p_react_instances:
            spans, drains, firsts, calls_all = [], [], [], []
            for _ in range(s.p_runs):
                spec = fresh_copy(harness, t, backend, template)
                log_dir = tempfile.mkdtemp(dir=harness.tmp)
                runner = Runner(harness.tmp, backend, spec, "react", k, log_dir)
                try:
                    with t.open(spec) as store:
                        waiter = SlowReactor(store)
                        t0 = runner.start()
                        done = wait_drained(waiter, latest, [runner],
                                            timeout=n * HANDLER_S * 3 + 120)
                finally:
                    runner.stop()
                    t.drop_store(spec)
                calls, distinct, starts, last = read_logs(log_dir)
                if distinct != n:
                    raise RuntimeError(f"react{k}: {distinct} of {n} events handled")
                spans.append(last - starts[0])
                drains.append(done - t0)
                firsts.append([x - t0 for x in starts])
                calls_all.append(calls)
            row = harness.add("p", backend, "eventsourcery", n, spans, variant=f"react{k}",
                              rank=0, instances=k, partitions=PARTITIONS,
                              handler_ms=HANDLER_S * 1e3, drain_s=drains,
                              drain_median_s=C.median(drains),
                              first_handled_s=C.median([x[0] for x in firsts]),
                              instance_first_s=firsts, handler_calls=calls_all,
                              starts_s=firsts[sorted(range(len(drains)),
                                                     key=drains.__getitem__)[len(drains) // 2]])
            rows[k] = row
            harness.log(f"  p.react{k}: {row['events_per_s']:.1f} events/s, drained in "
                        f"{row['drain_median_s']:.2f}s")
    finally:
        t.drop_store(template)
    one = rows.get(1)
    for k, row in rows.items():
        if one and row.get("events_per_s") and one.get("events_per_s"):
            row["speedup_vs_1"] = row["events_per_s"] / one["events_per_s"]
            row["drain_speedup_vs_1"] = one["drain_median_s"] / row["drain_median_s"]
            if k > 1:
                harness.log(f"  p.react{k}: x{row['speedup_vs_1']:.2f} events/s of one instance, "
                            f"drain x{row['drain_speedup_vs_1']:.2f}")


def proj(harness, t, backend: str) -> None:
    """p.proj{k}: catch-up of p_proj_events with k instances of the CPU-bound projector
    (Postgres only)."""
    s = harness.sizes
    if backend != "postgres" or es_pg is None:
        harness.skip("p", backend, "eventsourcery",
                     "p.proj (CPU-bound projector catch-up) runs on Postgres only")
        return
    n = s.p_proj_events
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        cpu_work()
    work_us = (time.perf_counter() - t0) / reps * 1e6
    template, latest = built_store(harness, t, backend, n, 10, prefix=0x9)
    rows = {}
    try:
        for k, whole in [(1, True), *((k, False) for k in s.p_proj_instances)]:
            times = []
            for _ in range(s.p_runs):
                spec = fresh_copy(harness, t, backend, template)
                runner = Runner(harness.tmp, backend, spec, "projwhole" if whole else "proj", k)
                try:
                    waiter = WholeCPUProjector(spec) if whole else CPUProjector(spec)
                    t0 = runner.start()
                    done = wait_drained(waiter, latest, [runner], timeout=n * 0.003 + 120)
                    times.append(done - t0)
                    runner.stop()
                    import psycopg
                    with psycopg.connect(spec) as con:
                        rows_written = con.execute(
                            "SELECT count(*) FROM bench_cpu_projection").fetchone()[0]
                    if rows_written != n:
                        raise RuntimeError(f"proj{k}: {rows_written} rows for {n} events")
                finally:
                    runner.stop()
                    t.drop_store(spec)
            variant = "whole1" if whole else f"proj{k}"
            rows[variant] = harness.add(
                "p", backend, "eventsourcery", n, times, variant=variant, rank=1, instances=k,
                partitions=1 if whole else PARTITIONS, work_us=work_us, work_iters=WORK_ITERS)
            harness.log(f"  p.{variant}: {rows[variant]['events_per_s']:,.0f} events/s")
    finally:
        t.drop_store(template)
    one, whole = rows.get("proj1"), rows.get("whole1")
    for row in rows.values():
        if one and row.get("events_per_s") and one.get("events_per_s"):
            row["speedup_vs_1"] = row["events_per_s"] / one["events_per_s"]
        if whole and row.get("events_per_s") and whole.get("events_per_s"):
            row["vs_whole"] = row["events_per_s"] / whole["events_per_s"]


def rebalance(harness, t, backend: str) -> None:
    """p.join{k} and p.kill{k}: an idle partitioned reactor; runners join one after another
    (instances 1, then the counts in p_join_instances), then one instance is killed (kill -9)."""
    s = harness.sizes
    runs = [rebalance_once(harness, t, backend) for _ in range(s.p_runs)]

    def add(variant, key, xs=None, **extra):
        xs = xs if xs is not None else [r[key] for r in runs]
        row = harness.add("p", backend, "eventsourcery", PARTITIONS, xs, variant=variant,
                          rank=3 if variant.startswith("kill") else 2, partitions=PARTITIONS,
                          **extra)
        row["events_per_s"] = row["us_per_event"] = None  # a time, not a rate
        harness.log(f"  p.{variant}: {row['median_ms'] / 1e3:.2f}s")
        return row

    k = 1
    for more in s.p_join_instances:
        k += more
        add(f"join{k}", ("join", k), instances=k,
            first_owned_s=C.median([r[("first", k)] for r in runs]),
            start_s=C.median([r["start"] for r in runs]))
    add(f"kill{k - 1}", "kill", instances=k - 1,
        balanced_s=C.median([r["kill_balanced"] for r in runs]))
    if not s.p_load_events:
        harness.skip("p", backend, "eventsourcery", "p.busy2 (a join while the 20 ms reactor "
                     "works through a backlog) is not part of --quick")
        return
    busy = [join_busy_once(harness, t, backend) for _ in range(s.p_runs)]
    add("busy2", "join", instances=2, first_owned_s=C.median([r["first"] for r in busy]),
              backlog=s.p_load_events, xs=[r["join"] for r in busy])


def join_busy_once(harness, t, backend: str) -> dict:
    """A runner with 1 instance of the 20 ms reactor works through a backlog for 3 s; then a second
    runner (1 instance) joins: the time until they share the partitions 4 and 4."""
    name = SlowReactor.processor_name
    spec, _ = built_store(harness, t, backend, harness.sizes.p_load_events, 10, prefix=0x6)
    runners: list[Runner] = []
    try:
        with t.open(spec) as store:
            first = Runner(harness.tmp, backend, spec, "react", 1)
            runners.append(first)
            first.start()
            wait_owners(store, name, lambda o: balanced(o, 1), runners, what="owned by one")
            time.sleep(3.0)
            joining = Runner(harness.tmp, backend, spec, "react", 1)
            runners.append(joining)
            before = set(partition_owners(store, name))
            t0 = joining.start()
            t_any, _ = wait_owners(store, name, lambda o: bool(set(o) - before - {None}), runners,
                                   what="owned by the joining instance")
            t1, _ = wait_owners(store, name, lambda o: balanced(o, 2), runners,
                                what="balanced over 2 instances")
            return {"join": t1 - t0, "first": t_any - t0}
    finally:
        for r in reversed(runners):
            r.stop()
        t.drop_store(spec)


def rebalance_once(harness, t, backend: str) -> dict:
    """One run of the runners joining and the kill -9; the times by key."""
    name = IdleReactor.processor_name
    out: dict = {}
    spec, latest = built_store(harness, t, backend, PARTITIONS * 10, 10, prefix=0x5)
    runners: list[Runner] = []
    try:
        with t.open(spec) as store:
            k = 0
            for more in (1, *harness.sizes.p_join_instances):
                runner = Runner(harness.tmp, backend, spec, "idle", more, restart=False)
                runners.append(runner)
                before = set(partition_owners(store, name)) - {None}
                k += more
                t0 = runner.start()
                t_any, _ = wait_owners(store, name, lambda o, b=before: bool(set(o) - b - {None}),
                                       runners, what="owned by a new instance")
                t1, _ = wait_owners(store, name, lambda o, k=k: balanced(o, k), runners,
                                    what=f"balanced over {k} instances")
                if k == more:  # the first runner: it takes every partition
                    out["start"] = t1 - t0
                    wait_drained(IdleReactor(store), latest, runners, timeout=60)
                else:
                    out[("join", k)], out[("first", k)] = t1 - t0, t_any - t0
            # kill -9 the owner of partition 0: one of this run's instances
            owners = partition_owners(store, name)
            victim = owners[0]
            pid = owner_pid(victim)
            host = next((r for r in runners if pid in r.instance_pids()), None)
            if host is None:
                raise RuntimeError(f"owner {victim!r} is not an instance of this run")
            survivors = set(owners) - {victim}
            # (a runner whose only instance it was ends: restart=False)
            alive = [r for r in runners if r is not host or r.instances > 1]
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            t1, _ = wait_owners(store, name, lambda o: set(o) <= survivors, alive,
                                what="owned by the survivors")
            t2, _ = wait_owners(store, name,
                                lambda o: set(o) <= survivors and balanced(o, len(survivors)),
                                alive, what="balanced over the survivors")
            out["kill"], out["kill_balanced"] = t1 - t0, t2 - t0
    finally:
        for r in reversed(runners):
            r.stop()
        t.drop_store(spec)
    return out


def notes(row: dict) -> str:
    """The table's notes for a (p) row."""
    v = row["variant"]
    if row.get("median_ms") is None:
        return ""
    if v.startswith("react"):
        text = (f"drain {row['drain_median_s']:.2f} s (each instance's first event at "
                f"{', '.join(f'{x:.1f}' for x in row['starts_s'])} s)")
        if row.get("speedup_vs_1") and row["instances"] > 1:
            text += (f"  x{row['speedup_vs_1']:.2f} events/s of 1 instance, drain "
                     f"x{row['drain_speedup_vs_1']:.2f}")
        return text
    if v.startswith("proj") or v == "whole1":
        text = f"{row['median_ms'] / 1e3:.1f} s to catch up, {row['work_us']:.0f} us work/event"
        if v == "whole1":
            return text + "; partitions = 1"
        if row.get("speedup_vs_1") and row["instances"] > 1:
            text += f"  x{row['speedup_vs_1']:.2f} of 1 instance"
        if row.get("vs_whole"):
            text += f"  x{row['vs_whole']:.2f} of partitions = 1"
        return text
    if v == "busy2":
        return (f"balanced over 2 instances {row['median_ms'] / 1e3:.2f} s after the runner "
                f"started (its first partition at {row['first_owned_s']:.2f} s), while the first "
                f"instance worked through a backlog of {row['backlog']:,} 20 ms events")
    if v.startswith("join"):
        return (f"balanced over {row['instances']} instances {row['median_ms'] / 1e3:.2f} s after "
                f"the runner started (its first partition at {row['first_owned_s']:.2f} s; one "
                f"instance took all 8 in {row['start_s']:.2f} s)")
    if v.startswith("kill"):
        return (f"all partitions owned by the {row['instances']} survivor(s) "
                f"{row['median_ms'] / 1e3:.2f} s after kill -9, balanced at "
                f"{row['balanced_s']:.2f} s")
    return ""
