"""Child-process entry points (run as `python -m bench.child ...`, with the
parent's -O setting):

  e-sub SYSTEM BACKEND SPEC N IDLE SETTLE subscriber for (e): prints `IDLE <cpu%>` once
                                       idle CPU was measured, then JSON with the
                                       handler time stamps of N events
  e-append SYSTEM BACKEND SPEC N LO HI appender for (e): JSON with commit stamps
  g SYSTEM BACKEND SPEC N PAGE         catch-up (d) over N events; JSON with ru_maxrss
  baseline SYSTEM BACKEND              imports only; JSON with ru_maxrss
  writer SYSTEM BACKEND SPEC           (j)'s writer in another process: prints READY, then
                                       appends single events without pause until it is killed
  k SYSTEM BACKEND SPEC N PREFIX       one of (k)'s processes: prints READY, waits for a line on
                                       stdin, runs N commands on 10 aggregates of its own (ids
                                       start with PREFIX); JSON with its start, end and latencies
  p-runner BACKEND SPEC KIND K LOGDIR RESTART
                                       (p): an ESPRunner with K instances of one partitioned
                                       processor (KIND: react, idle or proj; see partitions.py),
                                       until SIGTERM
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time

from . import common as C


def make_target(system: str, backend: str, tmpdir: str):
    if backend == "sqlite":
        if system == "eventsourcery":
            from .sys_es import ESSQLite
            return ESSQLite(tmpdir)
        if system == "eventsourcing":
            from .sys_peer import PeerSQLite
            return PeerSQLite(tmpdir)
        from .sys_raw import RawSQLite
        return RawSQLite(tmpdir)
    dbs = C.PGDatabases(C.pg_conninfo())
    if system == "eventsourcery":
        from .sys_es import ESPostgres
        return ESPostgres(dbs)
    if system == "eventsourcing":
        from .sys_peer import PeerPostgres
        return PeerPostgres(dbs)
    from .sys_raw import RawPostgres
    return RawPostgres(dbs)


def maxrss_mb() -> float:
    """Peak resident set size of this process in MiB.  /proc/self/status VmHWM is
    the high-water mark of this process image; ru_maxrss is not usable here because
    Linux carries it over from the parent across fork+exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def e_sub(system, backend, spec, n, idle_s, settle_s):
    n, idle_s, settle_s = int(n), float(idle_s), float(settle_s)
    t = make_target(system, backend, tempfile.gettempdir())
    stamps = {}
    stop = threading.Event()

    def on_event(amount):
        stamps[amount] = time.monotonic_ns()
        if len(stamps) >= n:
            stop.set()

    def idle_meter():
        time.sleep(settle_s)  # let the subscription start and settle
        c0, w0 = time.process_time(), time.monotonic()
        time.sleep(idle_s)
        c1, w1 = time.process_time(), time.monotonic()
        print(f"IDLE {100.0 * (c1 - c0) / (w1 - w0):.3f}", flush=True)

    threading.Thread(target=idle_meter, daemon=True).start()
    killer = threading.Timer(120, stop.set)  # never hang the harness
    killer.daemon = True
    killer.start()
    t.e_subscribe(spec, n, on_event, stop)
    print(json.dumps({"stamps": {str(k): v for k, v in stamps.items()}}), flush=True)


def e_append(system, backend, spec, n, lo, hi):
    t = make_target(system, backend, tempfile.gettempdir())
    stamps = t.e_append(spec, int(n), float(lo), float(hi))
    print(json.dumps({"stamps": stamps}), flush=True)


def g(system, backend, spec, n, page):
    t = make_target(system, backend, tempfile.gettempdir())
    before = maxrss_mb()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(spec) if backend == "sqlite"
                                     else None) as wd:
        dt = t.d(spec, int(n), wd, int(page), tag="_g")
    print(json.dumps({"seconds": dt, "maxrss_mb": maxrss_mb(), "maxrss_before_mb": before}),
          flush=True)


def baseline(system, backend):
    make_target(system, backend, tempfile.gettempdir())
    print(json.dumps({"maxrss_mb": maxrss_mb()}), flush=True)


def writer(system, backend, spec):
    t = make_target(system, backend, tempfile.gettempdir())
    print("READY", flush=True)
    t.e_append(spec, 10**8, 0.0, 0.0)  # until the parent kills this process


def k(system, backend, spec, n, prefix):
    # The parent made the tables; eventsourcing would otherwise run its DDL (CREATE OR REPLACE
    # FUNCTION) in every process at once, which Postgres refuses ("tuple concurrently updated").
    os.environ["CREATE_TABLE"] = "no"
    t = make_target(system, backend, tempfile.gettempdir())
    print("READY", flush=True)
    sys.stdin.readline()  # every process starts together
    wall, lat = t.i(spec, 1, int(n), "cmd", prefix=prefix)
    end = time.monotonic()  # one clock for every process of the machine
    print(json.dumps({"start": end - wall, "end": end, "latencies": lat}), flush=True)


def p_runner(*args):
    from .partitions import run_runner
    run_runner(*args)


def main(argv):
    cmd, *rest = argv
    {"e-sub": e_sub, "e-append": e_append, "g": g, "baseline": baseline, "writer": writer,
     "k": k, "p-runner": p_runner}[cmd](*rest)


if __name__ == "__main__":
    main(sys.argv[1:])
