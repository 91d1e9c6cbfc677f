"""Worker functions run in spawned processes by test_sqlite_processes.py.

Module level (so "spawn" can import them), light to import, and each reports
back over a queue or pipe instead of asserting.
"""

from __future__ import annotations

import os
import random
import traceback

import eventsourcery as es
from tests.events import Appended, CounterIncremented, RaceStarted


class Counter(es.Aggregate):
    count = 0

    @es.on(CounterIncremented)
    def _incremented(self, event):
        self.count += 1

    def increment(self, worker, seq):
        self.apply_event(CounterIncremented, worker=worker, seq=seq)


MAX_ATTEMPTS = 10_000


def writer(path, worker, commands, aggregate_ids, start, out_q):
    """Run `commands` commands (load, apply, save, retry on conflict) on random aggregates."""
    try:
        store = es.SQLiteEventStore(path)
        repo = es.Repository(store)
        rng = random.Random(worker)
        store.latest_event_id()  # connected before the start
        start.wait(60)  # a barrier: every writer (and the parent) starts at once
        successes = conflicts = 0
        for seq in range(commands):
            agg_id = aggregate_ids[rng.randrange(len(aggregate_ids))]
            for _attempt in range(MAX_ATTEMPTS):
                counter = repo.load(Counter, agg_id)
                if counter.count != counter.version:
                    raise AssertionError(f"loaded {counter.count} increments at version "
                                         f"{counter.version}")
                counter.increment(worker, seq)
                try:
                    repo.save(counter)
                except es.ConcurrencyError:
                    conflicts += 1
                    continue
                successes += 1
                break
            else:
                raise AssertionError(f"command {seq} never saved")
        store.close()
        out_q.put(("writer", worker, successes, conflicts))
    except BaseException:
        out_q.put(("error", worker, traceback.format_exc()))


def subscriber(path, batch_size, ready, target, hard_stop, out_q):
    """Record the id of every event the subscription yields, until it has seen id `target`."""
    try:
        es.configure(subscription_batch_size=batch_size)
        store = es.SQLiteEventStore(path)
        seen = []
        batch_sizes = []

        def should_stop():
            if hard_stop.is_set():
                return True
            goal = target.value
            return goal > 0 and bool(seen) and seen[-1] >= goal

        ready.set()
        for batch in store.subscribe(1, stop=should_stop):
            batch_sizes.append(len(batch))
            seen.extend(e.id for e in batch)
        store.close()
        out_q.put(("subscriber", seen, max(batch_sizes, default=0), min(batch_sizes, default=0)))
    except BaseException:
        out_q.put(("error", "subscriber", traceback.format_exc()))


def first_writer(path, worker, aggregate_ids, barrier, out_q):
    """For each aggregate: wait for everyone, then try to write its first event."""
    try:
        store = es.SQLiteEventStore(path)
        store.latest_event_id()  # connected before the race starts
        results = []
        for agg_id in aggregate_ids:
            barrier.wait(60)
            try:
                store.sink(RaceStarted(aggregate_id=agg_id, worker=worker), expected_version=0)
                results.append("won")
            except es.ConcurrencyError:
                results.append("conflict")
            except Exception as exc:  # any other outcome is a failure the test reports
                results.append(f"error: {exc!r}")
        store.close()
        out_q.put(("racer", worker, results))
    except BaseException:
        out_q.put(("error", worker, traceback.format_exc()))


def acked_appender(path, aggregate_id, first_seq, conn):
    """Append one event at a time forever; send (id, seq) after each sink returned."""
    try:
        store = es.SQLiteEventStore(path)
        conn.send(("ready", os.getpid()))
        seq = first_seq
        while True:
            (stored,) = store.sink(Appended(aggregate_id=aggregate_id, seq=seq))
            conn.send((stored.id, seq))
            seq += 1
    except BaseException:
        conn.send(("error", traceback.format_exc()))
