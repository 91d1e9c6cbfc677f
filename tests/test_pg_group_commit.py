"""Group commit (SPEC §2, issue 13): sinks that threads of one process make while a write is under
way are written together, in one transaction, with each sink's own version check. Made deterministic
by holding the store's write lock from another session while the sinks queue up; every wait is
bounded."""

from __future__ import annotations

import threading

import pytest

import eventsourcery as es
from tests._util import WAIT, everything_in, wait_until
from tests.events import ItemAdded
from tests.pg_support import connect, postgres_store

es_pg = pytest.importorskip("eventsourcery_pg")


# --- GroupCommit on its own -----------------------------------------------------------------------


def test_a_lone_request_is_written_at_once_as_a_group_of_one():
    groups = []
    commit = es.GroupCommit(lambda requests: groups.append(list(requests))
                            or [r * 10 for r in requests])
    assert [commit.write(n) for n in (1, 2, 3)] == [10, 20, 30]
    assert groups == [[1], [2], [3]]


def test_requests_that_arrive_while_a_group_is_written_share_the_next_one_in_order():
    release = threading.Event()
    groups = []

    def write_group(requests):
        groups.append(list(requests))
        if requests == ["first"]:
            assert release.wait(WAIT)
        return [ValueError(r) if r == "bad" else r.upper() for r in requests]

    commit = es.GroupCommit(write_group)
    results = {}

    def write(name):
        try:
            results[name] = commit.write(name)
        except ValueError as exc:
            results[name] = exc

    threads = [threading.Thread(target=write, args=("first",))]
    threads[0].start()
    assert wait_until(lambda: groups == [["first"]])
    for name in ("a", "bad", "b"):
        threads.append(threading.Thread(target=write, args=(name,)))
        threads[-1].start()
        queued = len(threads) - 1
        assert wait_until(lambda n=queued: commit.waiting == n)
    release.set()
    for t in threads:
        t.join(WAIT)
    assert groups == [["first"], ["a", "bad", "b"]]
    assert results["first"] == "FIRST" and results["a"] == "A" and results["b"] == "B"
    assert isinstance(results["bad"], ValueError)  # only that request failed
    assert commit.waiting == 0


def test_a_group_writer_that_raises_fails_every_request_of_its_group_and_the_next_group_works():
    calls = []

    def write_group(requests):
        calls.append(list(requests))
        if len(calls) == 1:
            raise RuntimeError("the database is gone")
        return list(requests)

    commit = es.GroupCommit(write_group)
    with pytest.raises(RuntimeError, match="gone"):
        commit.write(1)
    assert commit.write(2) == 2


def test_a_waiting_request_interrupted_by_ctrl_c_leaves_the_queue_unwritten_and_strands_nobody():
    import os
    import signal

    started, release = threading.Event(), threading.Event()
    written = []

    def write_group(requests):
        written.extend(requests)
        if requests == ["slow"]:
            started.set()
            assert release.wait(WAIT)
        return list(requests)

    commit = es.GroupCommit(write_group)
    leader = threading.Thread(target=commit.write, args=("slow",))
    leader.start()
    assert started.wait(WAIT)

    def interrupt():
        assert wait_until(lambda: commit.waiting == 1)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while the main thread waits for its group

    threading.Thread(target=interrupt).start()
    with pytest.raises(KeyboardInterrupt):
        commit.write("interrupted")
    assert commit.waiting == 0
    release.set()
    leader.join(WAIT)
    assert commit.write("after") == "after"  # the lead was not stranded
    assert written == ["slow", "after"]  # the interrupted request was never written


# --- on Postgres ----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = postgres_store(tmp_path)
    yield s
    s.close()


def hold_the_write_lock(store):
    """Another session holding the store's write lock in an open transaction (a sink parks behind
    it)."""
    conn = connect()
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (es_pg._advisory_key("write", store.schema),))
    return conn


def parked_writers(store) -> int:
    with connect() as admin:
        return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                             "AND wait_event = 'advisory' AND query LIKE %s",
                             (f'%"{store.schema}".eventsourcery_write%',)).fetchone()[0]


def test_sinks_queued_behind_a_write_commit_together_and_a_conflict_fails_alone(store):
    store.sink(ItemAdded(aggregate_id="shared", title="v1"))
    holder = hold_the_write_lock(store)
    outcomes = {}
    group_sizes = []
    write_group = store._writes.write_group

    def counting_write_group(requests):
        group_sizes.append(len(requests))
        return write_group(requests)

    store._writes.write_group = counting_write_group

    def sink(name, event, expected_version=None):
        try:
            outcomes[name] = store.sink(event, expected_version=expected_version)
        except es.Error as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=sink,
                                args=("leader", ItemAdded(aggregate_id="leader", title="l")))]
    threads[0].start()
    # the leader's group of one waits for the lock
    assert wait_until(lambda: parked_writers(store) == 1)
    queued = [("a", ItemAdded(aggregate_id="a", title="a"), None),
              # the aggregate is at 1
              ("stale", ItemAdded(aggregate_id="shared", title="stale"), 0),
              ("b", [ItemAdded(aggregate_id="b", title="b1"),
                     ItemAdded(aggregate_id="b", title="b2")], None),
              ("next", ItemAdded(aggregate_id="shared", title="v2"), 1)]
    for name, event, expected in queued:
        threads.append(threading.Thread(target=sink, args=(name, event, expected)))
        threads[-1].start()
        waiting = len(threads) - 1
        assert wait_until(lambda n=waiting: store._writes.waiting == n)
    # releases the lock: the leader commits, then the queue goes as one group
    holder.execute("COMMIT")
    holder.close()
    for t in threads:
        t.join(WAIT)
    assert (isinstance(outcomes["stale"], es.ConcurrencyError)
            and "expected 0" in str(outcomes["stale"]))
    stored = everything_in(store)
    assert [e.id for e in stored] == list(range(1, 7))  # gapless: the failed sink left no hole
    assert [e.title for e in stored] == ["v1", "l", "a", "b1", "b2", "v2"]  # in arrival order
    for name in ("leader", "a", "b", "next"):
        assert [(e.id, e.version) for e in outcomes[name]] == [(e.id, e.version) for e in stored
                                                               if e.uuid
                                                               in {o.uuid for o in outcomes[name]}]
    assert [e.version for e in stored if e.aggregate_id == "shared"] == [1, 2]
    # the leader alone, then the four that queued behind it, in one statement
    assert group_sizes == [1, 4]


def test_threads_racing_on_one_aggregate_have_exactly_one_winner_per_version(store):
    store.sink(ItemAdded(aggregate_id="race", title="v1"))
    winners, losers = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def contend(k):
        barrier.wait(WAIT)
        for _ in range(10):
            version = store.aggregate_version("race")
            try:
                store.sink(ItemAdded(aggregate_id="race", title=f"t{k}"), expected_version=version)
                with lock:
                    winners.append(version + 1)
            except es.ConcurrencyError:
                with lock:
                    losers.append(k)

    threads = [threading.Thread(target=contend, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    versions = [e.version for e in everything_in(store)]
    # one winner per version
    assert sorted(winners) == versions[1:] == list(range(2, len(versions) + 1))
    assert len(winners) + len(losers) == 80
    assert [e.id for e in everything_in(store)] == list(range(1, len(versions) + 1))


WRITER_SCRIPT = r"""
import sys, threading
sys.path[:0] = [sys.argv[3], sys.argv[4]]
import eventsourcery_pg as es_pg
from tests.events import ItemAdded

store = es_pg.PostgresEventStore(sys.argv[1], schema=sys.argv[2])
acks = open(sys.argv[5], "a", buffering=1)
lock = threading.Lock()

def write(k):
    for n in range(100_000):
        pair = [ItemAdded(aggregate_id=f"w{k}-{n}", title="one"),
                ItemAdded(aggregate_id=f"w{k}-{n}", title="two")]
        store.sink(pair)
        with lock:
            acks.write(pair[0].uuid + " " + pair[1].uuid + "\n")

for k in range(8):
    threading.Thread(target=write, args=(k,), daemon=True).start()
threading.Event().wait()
"""


def test_kill_9_of_a_process_writing_in_groups_leaves_only_whole_sinks_and_every_acknowledged_one(
        store, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    acks = tmp_path / "acks"
    acks.touch()
    child = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, store.conninfo,
                              store.schema, root, os.path.dirname(es.__file__), str(acks)],
                             stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: len(acks.read_text().splitlines()) >= 200
                          or child.poll() is not None)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(WAIT)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    stored = everything_in(store)
    assert [e.id for e in stored] == list(range(1, len(stored) + 1))  # gapless
    by_aggregate: dict[str, list[str]] = {}
    for e in stored:
        by_aggregate.setdefault(e.aggregate_id, []).append(e.title)
    assert all(titles == ["one", "two"] for titles in by_aggregate.values())  # whole sinks only
    uuids = {e.uuid for e in stored}
    # whole lines (the last may not be)
    acknowledged = [line.split() for line in acks.read_text().split("\n")[:-1]]
    # nothing acknowledged is lost
    assert acknowledged and all(a in uuids and b in uuids for a, b in acknowledged)
