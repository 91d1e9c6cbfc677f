"""Instruction counts of the single-threaded workloads (a) command, (c) rebuild and (d) catch-up,
for comparing two commits on a noisy machine (BENCHMARKS.md records them).

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python3 -m bench.icount a 1200      # and again with 200: the difference is the workload

Each figure is a large run minus a small one, so imports and set-up cancel out. SQLite with
``synchronous=OFF`` so that no fsync hides anything; (c) and (d) read a store built beforehand
(outside the count: ``python3 -m bench.icount build DIR``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import eventsourcery as es
from bench.sys_es import BenchCounter, BenchItemAdded, BenchProjector

EVENTS_PER_AGGREGATE = 10


def _store(path: str) -> es.SQLiteEventStore:
    return es.SQLiteEventStore(path, synchronous="OFF")


def build(directory: str, events: int = 12_000) -> None:
    """One aggregate of ``events`` events (for c and d), and 1,200 aggregates of 10 (for a)."""
    os.makedirs(directory, exist_ok=True)
    with _store(os.path.join(directory, "one.db")) as store:
        for start in range(0, events, 1000):
            store.sink([BenchItemAdded(aggregate_id="one", title="t", amount=1)
                        for _ in range(min(1000, events - start))])
    with _store(os.path.join(directory, "many.db")) as store:
        for k in range(1200):
            store.sink([BenchItemAdded(aggregate_id=f"agg-{k}", title="t", amount=1)
                        for _ in range(EVENTS_PER_AGGREGATE)], expected_version=0)


def command(directory: str, n: int) -> None:
    """(a) ``n`` commands, each on its own aggregate of 10 events: load, one event, save."""
    work = tempfile.mkdtemp()
    try:
        path = shutil.copy(os.path.join(directory, "many.db"), work)
        with _store(path) as store:
            repo = es.Repository(store)
            for k in range(n):
                counter = repo.load(BenchCounter, f"agg-{k}")
                counter.add("t", 1)
                repo.save(counter)
    finally:
        shutil.rmtree(work)


def rebuild(directory: str, n: int) -> None:
    """(c) load the first ``n`` events of one aggregate into an aggregate."""
    with _store(os.path.join(directory, "one.db")) as store:
        events = store.get_events_for_aggregate_id("one", to_version=n)
        BenchCounter("one", events)


def catch_up(directory: str, n: int) -> None:
    """(d) a projector (its own file) catches up on the first ``n`` events."""
    work = tempfile.mkdtemp()
    try:
        with _store(os.path.join(directory, "one.db")) as store:
            projector = BenchProjector(os.path.join(work, "projection.db"))
            projector.subscribe_to(store, stop=lambda: projector.handled >= n)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    what, arg = sys.argv[1], sys.argv[2]
    if what == "build":
        build(arg)
    else:
        {"a": command, "c": rebuild, "d": catch_up}[what](sys.argv[3], int(arg))
