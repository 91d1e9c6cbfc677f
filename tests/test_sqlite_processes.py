"""SQLite store under real concurrent processes, on a real file.

(a) 4 writer processes x 250 commands (load, apply, save, retry on conflict)
    on 5 shared aggregates; (c) a subscriber process runs meanwhile;
(b) 8 processes race first writes to new aggregates with expected_version=0;
(d) a writer is SIGKILLed mid-run: every acknowledged event survives.

Processes are started with the "spawn" context; the workers live in
tests/_proc_workers.py and report over queues/pipes. Waits are bounded only
to turn a hang into a failure.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sqlite3

import pytest

import eventsourcery as es
from tests import _proc_workers as workers
from tests._util import collect, join_all, new_id
from tests.events import Appended, CounterIncremented

CTX = multiprocessing.get_context("spawn")
DEADLINE = 120.0  # seconds; only reached when something hangs

N_WRITERS = 4
COMMANDS = 250
N_AGGREGATES = 5


# --- (a) + (c): concurrent commands with a subscriber watching -----------------------------------


@pytest.fixture(scope="module")
def concurrent_run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("concurrent") / "events.db")
    es.SQLiteEventStore(path).close()  # create the file and schema up front
    aggregate_ids = [new_id() for _ in range(N_AGGREGATES)]
    out_q = CTX.Queue()
    start = CTX.Barrier(N_WRITERS + 1)
    ready, hard_stop = CTX.Event(), CTX.Event()
    target = CTX.Value("q", 0)

    sub = CTX.Process(target=workers.subscriber, args=(path, 7, ready, target, hard_stop, out_q))
    writers = [
        CTX.Process(target=workers.writer, args=(path, w, COMMANDS, aggregate_ids, start, out_q))
        for w in range(N_WRITERS)
    ]
    procs = [sub, *writers]
    try:
        sub.start()
        for p in writers:
            p.start()
        assert ready.wait(DEADLINE), "subscriber process never started"
        start.wait(DEADLINE)
        reports = collect(out_q, N_WRITERS, procs)
        writer_reports = [r for r in reports if r[0] == "writer"]
        # the subscriber may have reported already only if it failed (collect() raised then)
        with es.SQLiteEventStore(path) as store:
            final = []
            nxt = 1
            while True:
                page = store.get_next_from(nxt, limit=1000)
                if not page:
                    break
                final.extend(page)
                nxt = page[-1].id + 1
            per_aggregate = {a: store.get_events_for_aggregate_id(a) for a in aggregate_ids}
        target.value = final[-1].id if final else 0
        try:
            (sub_report,) = collect(out_q, 1, procs, timeout=30)
        except BaseException:
            hard_stop.set()
            raise
        exit_codes = join_all(procs)
    finally:
        hard_stop.set()
        start.abort()  # frees writers still waiting if the parent failed early
        join_all(procs, timeout=10)
    return {
        "aggregate_ids": aggregate_ids,
        "writers": writer_reports,
        "subscriber": sub_report,
        "final": final,
        "per_aggregate": per_aggregate,
        "exit_codes": exit_codes,
    }


def test_a_workers_succeeded(concurrent_run):
    assert concurrent_run["exit_codes"] == [0] * (N_WRITERS + 1)
    assert sorted(r[1] for r in concurrent_run["writers"]) == list(range(N_WRITERS))
    assert all(r[2] == COMMANDS for r in concurrent_run["writers"])


def test_a_versions_are_exactly_1_to_n_per_aggregate(concurrent_run):
    total = 0
    for agg, events in concurrent_run["per_aggregate"].items():
        assert [e.version for e in events] == list(range(1, len(events) + 1)), agg
        assert {e.aggregate_id for e in events} <= {agg}
        total += len(events)
    assert total == len(concurrent_run["final"])


def test_a_ids_strictly_increase_without_duplicates_or_gaps(concurrent_run):
    ids = [e.id for e in concurrent_run["final"]]
    assert ids == sorted(set(ids))
    assert ids == list(range(1, len(ids) + 1))
    # per aggregate, ids grow with versions
    for events in concurrent_run["per_aggregate"].values():
        agg_ids = [e.id for e in events]
        assert agg_ids == sorted(agg_ids)


def test_a_number_of_events_equals_successful_saves(concurrent_run):
    final = concurrent_run["final"]
    saves = sum(r[2] for r in concurrent_run["writers"])
    assert len(final) == saves == N_WRITERS * COMMANDS
    # each command was stored exactly once
    commands = collections.Counter((e.worker, e.seq) for e in final)
    assert all(type(e) is CounterIncremented for e in final)
    assert set(commands) == {(w, s) for w in range(N_WRITERS) for s in range(COMMANDS)}
    assert max(commands.values()) == 1


def test_a_there_was_contention(concurrent_run):
    # guards the test itself: with no conflicts at all the retry path went untested
    assert sum(r[3] for r in concurrent_run["writers"]) > 0


def test_c_subscriber_saw_every_event_once_in_order(concurrent_run):
    _, seen, biggest_batch, smallest_batch = concurrent_run["subscriber"]
    final_ids = [e.id for e in concurrent_run["final"]]
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert seen == sorted(seen), "events were delivered out of order"
    assert seen == final_ids
    assert 1 <= smallest_batch <= biggest_batch <= 7


# --- (b) racing first writes ----------------------------------------------------------------------


def test_b_racing_first_writes_exactly_one_wins(tmp_path):
    n_procs, rounds = 8, 10
    path = str(tmp_path / "race.db")
    es.SQLiteEventStore(path).close()
    aggregate_ids = [new_id() for _ in range(rounds)]
    barrier = CTX.Barrier(n_procs)
    out_q = CTX.Queue()
    procs = [CTX.Process(target=workers.first_writer, args=(path, w, aggregate_ids, barrier, out_q))
             for w in range(n_procs)]
    try:
        for p in procs:
            p.start()
        reports = collect(out_q, n_procs, procs)
        assert join_all(procs) == [0] * n_procs
    finally:
        join_all(procs, timeout=10)
    outcomes = {w: results for _, w, results in reports}
    with es.SQLiteEventStore(path) as store:
        for r, agg in enumerate(aggregate_ids):
            per_round = [outcomes[w][r] for w in range(n_procs)]
            assert sorted(per_round) == ["conflict"] * (n_procs - 1) + ["won"], (r, per_round)
            (event,) = store.get_events_for_aggregate_id(agg)
            assert event.version == 1
            assert outcomes[event.worker][r] == "won"
        assert store.latest_event_id() == rounds


# --- (d) SIGKILL mid-run --------------------------------------------------------------------------


def _recv(conn, proc, timeout=DEADLINE):
    if not conn.poll(timeout):
        pytest.fail(f"no message from the writer (alive: {proc.is_alive()}, exit code "
                    f"{proc.exitcode})")
    msg = conn.recv()
    if msg[0] == "error":
        pytest.fail(f"writer failed:\n{msg[1]}")
    return msg


def test_d_acknowledged_events_survive_sigkill(tmp_path):
    path = str(tmp_path / "killed.db")
    agg = new_id()
    acked = {}  # id -> seq
    next_seq = 0
    for kill_after in (60, 137, 211):
        parent_conn, child_conn = CTX.Pipe(duplex=False)
        proc = CTX.Process(target=workers.acked_appender, args=(path, agg, next_seq, child_conn))
        proc.start()
        child_conn.close()  # so recv() sees EOF once the child is dead
        try:
            assert _recv(parent_conn, proc)[0] == "ready"
            for _ in range(kill_after):
                event_id, seq = _recv(parent_conn, proc)
                acked[event_id] = seq
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(DEADLINE)
            # acknowledgements already in the pipe count too
            while True:
                try:
                    msg = parent_conn.recv()
                except EOFError:
                    break
                if msg[0] == "error":
                    pytest.fail(f"writer failed:\n{msg[1]}")
                acked[msg[0]] = msg[1]
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join()
            parent_conn.close()
        assert proc.exitcode == -signal.SIGKILL
        next_seq = max(acked.values()) + 1 + 1000  # later rounds use fresh sequence numbers

        # the file opens clean and holds every acknowledged event
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
        with es.SQLiteEventStore(path) as store:
            events = {}
            nxt = 1
            while True:
                page = store.get_next_from(nxt, limit=1000)
                if not page:
                    break
                events.update((e.id, e) for e in page)
                nxt = page[-1].id + 1
            missing = sorted(set(acked) - set(events))
            assert missing == [], f"acknowledged but lost: {missing[:10]}"
            for event_id, seq in acked.items():
                assert type(events[event_id]) is Appended
                assert events[event_id].seq == seq
            ids = sorted(events)
            assert ids == list(range(1, len(ids) + 1))
            versions = [e.version for e in store.get_events_for_aggregate_id(agg)]
            assert versions == list(range(1, len(versions) + 1))
            # and it takes new writes after the crash
            (new,) = store.sink(Appended(aggregate_id=agg, seq=-1), expected_version=len(versions))
            assert new.id == len(ids) + 1
            acked[new.id] = -1
