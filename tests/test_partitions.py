"""Partitioned processors (SPEC section 4, "Partitions", and "Parking" where it meets them).

``partitions = N`` splits a processor's work by aggregate: an event belongs to partition
``es.partition_of(event.aggregate_id, N)``, each partition keeps its own position (tracker row
``name#p``) and is owned through the store's lock ``name#p`` by one instance at a time. Instances of
one processor (separate processor objects, each run by ``es.run_processor`` in a thread here) share
the partitions: once k are live each owns at most ceil(N / k) and all N are owned, within 15 s of a
join or leave. Each aggregate's events are handled in id order, each exactly once.

Who owns which partition is read off the events themselves: a probe (one event per partition) is
handled by its partition's owner, and the handler records who it is. On every store (the SQLite
instances each open a store object of their own, the others share the test's), except what runs
another process (SQLite and Postgres).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import multiprocessing
import os
import random
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator

import pytest

import eventsourcery as es
from tests import pg_support as pg
from tests import test_operating_processors
from tests._util import WAIT, everything_in, wait_until
from tests.events import ItemAdded
from tests.processing_support import Ping, Pong
from tests.test_operating_processors import Background

N = 5  #: the partitions of the processors below
BALANCE = 15.0  #: seconds within which a join or leave is balanced (SPEC section 4)
NAME = "partitioned_recorder"
#: the fixture of the stores with a database of their own (SQLite, Postgres): for what needs another
#: process or a projector in the store's database
db_store = test_operating_processors.db_store


def aggregate_in(partition: int, prefix: str, n: int = N) -> str:
    """The first aggregate id ``prefix-<i>`` of ``partition`` (of ``n``)."""
    for i in itertools.count():
        candidate = f"{prefix}-{i}"
        if zlib.crc32(candidate.encode("utf-8")) % n == partition:
            return candidate
    raise AssertionError("unreachable")


#: one aggregate per partition, for the probes that show who owns it
PROBES = [aggregate_in(p, "probe") for p in range(N)]
#: the workload's aggregates: two per partition
AGGREGATES = [aggregate_in(p % N, f"work{p}") for p in range(2 * N)]


def add(store: es.EventStore, aggregate_id: str, title: str = "ok") -> int:
    return store.sink(ItemAdded(aggregate_id=aggregate_id, title=title))[0].id


def sink_work(store: es.EventStore, rng: random.Random, count: int) -> None:
    """``count`` item_added events on the workload's aggregates, some sunk several at once."""
    while count > 0:
        size = min(rng.randint(1, 4), count)
        aggregate_id = rng.choice(AGGREGATES)
        store.sink([ItemAdded(aggregate_id=aggregate_id, title=f"w{i}") for i in range(size)])
        count -= size


class OneAtATime:
    """A handler's guard: counts the times a handler of its instance began while another ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.overlaps = 0

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.overlaps += 1
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@dataclasses.dataclass(frozen=True)
class Handled:
    event_id: int
    aggregate_id: str
    instance: str
    replaying: bool


class Recorder(es.EventStreamProcessor):
    """A partitioned processor (position in its store's tracker) that appends what it handles to a
    log shared by its instances; fails on the titles in ``failing``; an item titled ``gate`` waits
    for ``gate`` to be set (holding up its instance); each item takes ``pause`` seconds."""

    processor_name = NAME
    partitions = N

    def __init__(self, tracker: es.Tracker, label: str = "A", log: list[Handled] | None = None,
                 failing: tuple[str, ...] = (), gate: threading.Event | None = None,
                 pause: float = 0.0) -> None:
        super().__init__(tracker)
        self.pause = pause
        self.label = label
        self.log: list[Handled] = log if log is not None else []
        self.failing = set(failing)
        self.gate = gate
        self.guard = OneAtATime()
        self.attempts: collections.Counter[int] = collections.Counter()

    @es.on(ItemAdded)
    def _added(self, event: ItemAdded) -> None:
        with self.guard:
            if event.title == "gate" and self.gate is not None:
                self.gate.wait(WAIT)
            time.sleep(self.pause)
            if event.title in self.failing:
                self.attempts[event.id or 0] += 1
                raise RuntimeError(f"cannot handle {event.title}")
            self.log.append(Handled(event.id or 0, event.aggregate_id, self.label, self.replaying))


def handled_ids(log: list[Handled]) -> list[int]:
    return [h.event_id for h in log]


def status(store: es.EventStore, name: str = NAME) -> es.ProcessorStatus:
    return {s.name: s for s in es.processor_statuses(store)}[name]


def failing_at(store: es.EventStore, event_id: int, name: str = NAME) -> bool:
    """Whether ``name`` is listed as failing at ``event_id``, its other partitions caught up."""
    found = {s.name: s for s in es.processor_statuses(store)}.get(name)
    return (found is not None and found.failing_event_id == event_id
            and found.position == event_id - 1
            and sum(e.position < store.latest_event_id() for e in found.partitions) == 1)


# --- instances: each a processor object of its own, run in a thread ------------------------------


def another(store: es.EventStore) -> tuple[es.EventStore, bool]:
    """A store object of its own on ``store``'s events, and whether the caller closes it; the memory
    store: itself. On Postgres also itself: each instance holds a session per partition it owns and
    a store object of its own would add its connections, on a server other tests share."""
    if isinstance(store, es.SQLiteEventStore):
        return es.SQLiteEventStore(store.path), True
    return store, False


def store_location(store: es.EventStore) -> str:
    """What another process, the command line or a projector opens ``store``'s database with."""
    if isinstance(store, es.SQLiteEventStore):
        return store.path
    return pg.store_url(store.schema)


class Instances:
    """Instances of one processor, by label: ``make(store, label)`` builds one on a store object of
    its own, run by run_processor in a thread until stopped."""

    def __init__(self, store: es.EventStore,
                 make: Callable[[es.EventStore, str], es.EventStreamProcessor],
                 handler: Callable[[], es.ErrorHandler] | None = None) -> None:
        self.store = store
        self.make = make
        self.handler = handler or (lambda: es.ConstantRetry(0.02))
        self.running: dict[str, Background] = {}
        self.processors: dict[str, es.EventStreamProcessor] = {}
        self.errors: dict[str, BaseException | None] = {}
        self._to_close: list[es.EventStore] = []

    def start(self, label: str) -> es.EventStreamProcessor:
        own, close = another(self.store)
        if close:
            self._to_close.append(own)
        processor = self.make(own, label)
        self.processors[label] = processor
        self.running[label] = Background(processor, own, self.handler())
        return processor

    def stop(self, label: str) -> None:
        background = self.running.pop(label)
        background.finish()
        self.errors[label] = background.error

    def live(self) -> set[str]:
        return set(self.running)

    def close(self) -> None:
        for label in list(self.running):
            self.stop(label)
        for own in self._to_close:
            own.close()
        self._to_close.clear()


@pytest.fixture
def instances(store: es.EventStore) -> Iterator[Callable[..., Instances]]:
    made: list[Instances] = []

    def make(make_processor, handler=None, on=None) -> Instances:
        group = Instances(on if on is not None else store, make_processor, handler)
        made.append(group)
        return group

    yield make
    for group in made:
        group.close()


def balanced(store: es.EventStore, handled_by: Callable[[], dict[int, str]], live: set[str],
             since: float, n: int = N) -> dict[int, str]:
    """Sink one probe per partition, again and again, until the probes show the ``live`` instances
    owning all ``n`` partitions, at most ceil(n / k) each; fails when a round begun ``BALANCE``
    seconds after ``since`` (a join or leave) still shows otherwise. Returns partition -> owner."""
    most = math.ceil(n / len(live))
    aggregates = PROBES if n == N else [aggregate_in(p, "probe", n) for p in range(n)]
    while True:
        began = time.monotonic()
        probes = {p: add(store, aggregates[p], "probe") for p in range(n)}
        wanted = set(probes.values())
        assert wait_until(lambda: wanted <= set(handled_by()), WAIT, 0.02), (  # noqa: B023
            f"probes {probes} not all handled: some partition has no owner")
        by = handled_by()
        owner = {p: by[event_id] for p, event_id in probes.items()}
        counts = collections.Counter(owner.values())
        if set(counts) <= live and max(counts.values()) <= most:
            return owner
        assert began - since < BALANCE, (
            f"{BALANCE} s after the join or leave, partition owners {owner} (live: {sorted(live)}, "
            f"at most {most} each)")
        time.sleep(0.1)


# =================================================================================================
# es.partition_of and the partitions attribute
# =================================================================================================


def test_partition_of_is_crc32_of_the_utf8_id_modulo_the_partitions() -> None:
    rng = random.Random(7)
    ids = [f"agg-{i}" for i in range(500)] + ["", "ünïcode-✓", "a" * 1000, "\x7f", "😀"]
    ids += ["".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 20)))
            for _ in range(200)]
    for n in (1, 2, 3, 7, 8, 64, 1000):
        for aggregate_id in ids:
            expected = zlib.crc32(aggregate_id.encode("utf-8")) % n
            assert es.partition_of(aggregate_id, n) == expected, (aggregate_id, n)
    assert {es.partition_of(f"agg-{i}", 8) for i in range(500)} == set(range(8))
    for _ in range(100):  # a UUID is its string
        key = uuid.UUID(int=rng.getrandbits(128))
        assert es.partition_of(key, 7) == zlib.crc32(str(key).encode("utf-8")) % 7


@pytest.mark.parametrize("args", [(b"agg", 4), (7, 4), (None, 4), ("a\x00b", 4), ("\ud800", 4),
                                  ("agg", 0), ("agg", -2), ("agg", 2.0), ("agg", "4"),
                                  ("agg", None), ("agg", True)])
def test_partition_of_refuses_bad_input(args: tuple[object, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        es.partition_of(*args)


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", None, True, 2.0])
@pytest.mark.parametrize("base", [es.EventStreamProcessor, es.Projector, es.Reactor])
def test_partitions_must_be_an_int_of_at_least_one_named_at_class_creation(
        value: object, base: type) -> None:
    with pytest.raises((TypeError, ValueError), match="BadlyPartitioned"):
        type("BadlyPartitioned", (base,), {"partitions": value})


def test_partitions_default_to_one() -> None:
    class Plain(es.EventStreamProcessor):
        pass

    class Eight(es.Projector):
        partitions = 8

    assert (es.EventStreamProcessor.partitions, Plain.partitions, Eight.partitions) == (1, 1, 8)


# =================================================================================================
# partitions, positions and locks
# =================================================================================================


def test_each_partition_keeps_its_own_position_and_lock_and_the_status_lists_them(store) -> None:
    plain_log: list[Handled] = []

    class Unpartitioned(Recorder):
        processor_name = "unpartitioned_recorder"
        partitions = 1

    unpartitioned = Unpartitioned(store.tracker(), log=plain_log)
    add(store, AGGREGATES[0])
    es.run_processor(unpartitioned, store, stop=lambda: unpartitioned.last_processed_event_id >= 1)

    recorder = Recorder(store.tracker())
    for aggregate_id in AGGREGATES:
        add(store, aggregate_id)
    latest = store.latest_event_id()
    running = Background(recorder, store)
    try:
        assert recorder.wait_for(latest, timeout=WAIT)
        tracker = store.tracker()
        for p in range(N):
            assert store.is_running(f"{NAME}#{p}")
            with pytest.raises(es.UnableToLockProcessorError):
                with store.lock(f"{NAME}#{p}"):
                    pass
        now = status(store)
        assert [e.partition for e in now.partitions] == list(range(N))
        for entry in now.partitions:
            assert entry.position == tracker.last_processed_event_id(f"{NAME}#{entry.partition}")
            last_of_partition = max(h.event_id for h in recorder.log
                                    if es.partition_of(h.aggregate_id, N) == entry.partition)
            assert last_of_partition <= entry.position <= latest
            assert entry.lag == latest - entry.position
            assert (entry.owner, entry.state) == (es._instance_name(), "running")
        assert now.position == min(e.position for e in now.partitions)
        assert now.lag == max(e.lag for e in now.partitions)
        assert now.running and now.state == "running"
        assert tracker.record(NAME).partitions == N
    finally:
        running.finish()
    assert running.error is None
    assert sorted(handled_ids(recorder.log)) == list(range(1, latest + 1))
    assert not any(store.is_running(f"{NAME}#{p}") for p in range(N))
    statuses = {s.name: s for s in es.processor_statuses(store)}
    assert set(statuses) == {NAME, "unpartitioned_recorder"}  # no name#p of their own
    assert statuses["unpartitioned_recorder"].partitions == ()
    assert {(e.state, e.owner) for e in statuses[NAME].partitions} == {("stopped", None)}
    assert not statuses[NAME].running and statuses[NAME].state == "stopped"


def test_the_handlers_of_one_instance_never_run_concurrently(store) -> None:
    rng = random.Random(11)
    sink_work(store, rng, 150)
    latest = store.latest_event_id()
    recorder = Recorder(store.tracker(), pause=0.001)  # no database of its own to wait for
    es.run_processor(recorder, store, stop=lambda: recorder.last_processed_event_id >= latest)
    assert sorted(handled_ids(recorder.log)) == list(range(1, latest + 1))
    assert recorder.guard.overlaps == 0


# =================================================================================================
# instances sharing the partitions
# =================================================================================================


class ChainProjector(es.Projector):
    """Records, for each item, the item of its aggregate handled (committed) before it: the chains
    show whether each aggregate's items were handled once each, in id order."""

    processor_name = "chain_projector"
    partitions = N
    schema = """CREATE TABLE IF NOT EXISTS chain (event_id BIGINT NOT NULL, aggregate_id TEXT NOT
                NULL, prev BIGINT NOT NULL, instance TEXT NOT NULL)"""

    def __init__(self, db: str, label: str) -> None:
        super().__init__(db)
        self.label = label
        self.guard = OneAtATime()

    @es.on(ItemAdded)
    def _added(self, event: ItemAdded) -> None:
        with self.guard:
            p = self.placeholder
            (prev,) = self.db.execute(
                f"SELECT COALESCE(MAX(event_id), 0) FROM chain WHERE aggregate_id = {p}",
                (event.aggregate_id,)).fetchone()
            time.sleep(0.0005)  # a window for another handler of its instance, if one could run
            self.db.execute(f"INSERT INTO chain VALUES ({p}, {p}, {p}, {p})",
                            (event.id, event.aggregate_id, prev, self.label))


def chain_rows(location: str) -> list[tuple[int, str, int, str]]:
    """The committed rows of ChainProjector's table at ``location`` (none before it exists)."""
    sql = "SELECT event_id, aggregate_id, prev, instance FROM {s}chain"
    if pg.is_postgres(location):
        import psycopg

        try:
            return [tuple(r) for r in pg._query(location, sql.replace("{s}", "{s}."))]
        except psycopg.errors.UndefinedTable:
            return []
    conn = sqlite3.connect(location, timeout=WAIT)
    try:
        return list(conn.execute(sql.replace("{s}", "")))
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def assert_chains(store: es.EventStore, rows: list[tuple[int, str, int, str]]) -> None:
    """Every item in the store handled exactly once, each aggregate's in id order."""
    counts = collections.Counter(r[0] for r in rows)
    assert [i for i, c in counts.items() if c > 1] == [], "items handled twice"
    items = [e for e in everything_in(store) if isinstance(e, ItemAdded)]
    assert sorted(counts) == [e.id for e in items], "items lost"
    prev_of = {r[0]: r[2] for r in rows}
    by_aggregate: dict[str, list[int]] = collections.defaultdict(list)
    for e in items:
        by_aggregate[e.aggregate_id].append(e.id or 0)
    for aggregate_id, ids in by_aggregate.items():
        assert [prev_of[i] for i in ids] == [0, *ids[:-1]], f"{aggregate_id} out of order"


def test_instances_share_the_partitions_through_joins_and_leaves_each_item_once_in_order(
        store, instances, tmp_path) -> None:
    location = str(tmp_path / "chain.db")
    group = instances(lambda own, label: ChainProjector(location, label))
    rng = random.Random(21)

    def handled_by() -> dict[int, str]:
        return {r[0]: r[3] for r in chain_rows(location)}

    sink_work(store, rng, 60)
    since = time.monotonic()
    for label in "ABC":
        group.start(label)
    sink_work(store, rng, 60)
    balanced(store, handled_by, {"A", "B", "C"}, since)

    since = time.monotonic()
    group.stop("B")  # B's partitions are taken by the others
    sink_work(store, rng, 40)
    owners = balanced(store, handled_by, {"A", "C"}, since)
    assert set(owners.values()) == {"A", "C"}

    since = time.monotonic()
    group.start("D")
    sink_work(store, rng, 40)
    balanced(store, handled_by, {"A", "C", "D"}, since)

    latest = store.latest_event_id()
    assert group.processors["A"].wait_for(latest, timeout=WAIT)
    processors = dict(group.processors)
    group.close()
    assert group.errors == dict.fromkeys("ABCD")
    assert [p.guard.overlaps for p in processors.values()] == [0, 0, 0, 0]
    rows = chain_rows(location)
    assert_chains(store, rows)
    assert {r[3] for r in rows} == set("ABCD")
    now = status(store, "chain_projector")
    assert (now.position, now.lag, now.kind, now.running) == (latest, 0, "projector", False)
    assert [(e.partition, e.position) for e in now.partitions] == [(p, latest) for p in range(N)]


def test_with_more_instances_than_partitions_one_waits_and_takes_over_when_an_owner_leaves(
        store, instances) -> None:
    class TwoPartitions(Recorder):
        processor_name = "two_partitions"
        partitions = 2

    log: list[Handled] = []
    group = instances(lambda own, label: TwoPartitions(own.tracker(), label, log))

    def handled_by() -> dict[int, str]:
        return {h.event_id: h.instance for h in log}

    since = time.monotonic()
    for label in "ABC":
        group.start(label)
    owners = balanced(store, handled_by, {"A", "B", "C"}, since, n=2)
    assert len(set(owners.values())) == 2  # one each; the third waits
    since = time.monotonic()
    group.stop(owners[0])
    owners = balanced(store, handled_by, group.live(), since, n=2)
    assert set(owners.values()) == group.live()  # the one that waited has joined
    latest = store.latest_event_id()
    assert group.processors[owners[0]].wait_for(latest, timeout=WAIT)
    group.close()
    assert set(group.errors.values()) == {None}
    assert sorted(handled_ids(log)) == list(range(1, latest + 1))


def test_processors_named_like_a_partitioned_ones_instances_and_partitions_leave_it_alone(
) -> None:
    """Names are any text: ``partitioned_recorder@1`` is another processor, not an instance of
    ``partitioned_recorder``, and ``partitioned_recorder#3`` is not one of its partitions (their
    locks and tracker records are their own). Refusing such names when the class is made would
    do too. (The store does not matter here: the memory store's.)"""
    try:
        class AtOne(Recorder):
            processor_name = f"{NAME}@1"
            partitions = 1

        class HashThree(Recorder):
            processor_name = f"{NAME}#3"
            partitions = 1
    except (TypeError, ValueError):
        return  # refused
    store = es.MemoryEventStore()
    errors: list[str] = []
    es.configure(on_event_processor_error=lambda exc, name: errors.append(f"{name}: {exc!r}"))
    for aggregate_id in AGGREGATES:
        add(store, aggregate_id)
    latest = store.latest_event_id()
    others = [Background(cls(store.tracker()), store) for cls in (AtOne, HashThree)]
    try:
        assert all(o.processor.wait_for(latest, timeout=WAIT) for o in others)
        recorder = Recorder(store.tracker())
        running = Background(recorder, store)
        try:
            assert wait_until(lambda: errors or recorder.last_processed_event_id >= latest)
        finally:
            running.finish()
    finally:
        for other in others:
            other.finish()
    assert errors == []
    assert sorted(handled_ids(recorder.log)) == list(range(1, latest + 1)), (
        [(e.partition, e.position, e.state) for e in status(store).partitions])


def _chain_child(url: str, location: str, stop, parent: int) -> None:
    """A ChainProjector instance labelled ``child``, in a process of its own, until ``stop``."""
    store = es.open_store(url)
    try:
        es.run_processor(ChainProjector(location, "child"), store,
                         stop=lambda: stop.is_set() or os.getppid() != parent,
                         error_handler=es.ConstantRetry(0.02))
    finally:
        store.close()


def test_instances_in_two_processes_share_a_projector_in_the_stores_database(db_store) -> None:
    location = store_location(db_store)
    group = Instances(db_store, lambda own, label: ChainProjector(location, label))
    rng = random.Random(5)

    def handled_by() -> dict[int, str]:
        return {r[0]: r[3] for r in chain_rows(location)}

    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    sink_work(db_store, rng, 50)
    since = time.monotonic()
    child = fork.Process(target=_chain_child, args=(location, location, stop, os.getpid()),
                         daemon=True)
    child.start()
    try:  # (two instances at a time: each holds a Postgres session per partition it owns)
        group.start("A")
        sink_work(db_store, rng, 50)
        balanced(db_store, handled_by, {"child", "A"}, since)
        since = time.monotonic()
        group.stop("A")  # the child takes A's partitions; B joins and takes some of them
        group.start("B")
        sink_work(db_store, rng, 50)
        balanced(db_store, handled_by, {"child", "B"}, since)
        latest = db_store.latest_event_id()
        assert group.processors["B"].wait_for(latest, timeout=WAIT)
    finally:
        stop.set()
        child.join(WAIT)
        if child.is_alive():
            child.kill()
        group.close()
    assert child.exitcode == 0
    assert group.errors == {"A": None, "B": None}
    rows = chain_rows(location)
    assert_chains(db_store, rows)
    assert {r[3] for r in rows} == {"child", "A", "B"}
    now = status(db_store, "chain_projector")  # its position in the store's own tracker
    assert (now.position, now.lag, len(now.partitions)) == (latest, 0, N)
    assert db_store.tracker().last_processed_event_id("chain_projector#0") == latest


class Ponger(es.Reactor):
    """Answers each Ping with one Pong (its position, and the Pongs, in the event store)."""

    processor_name = "partitioned_ponger"
    partitions = N
    emits_events = (Pong,)

    def __init__(self, store: es.EventStore, label: str) -> None:
        super().__init__(store)
        self.label = label
        self.guard = OneAtATime()

    @es.on(Ping)
    def _ping(self, event: Ping) -> None:
        with self.guard:
            self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id or 0))


def test_a_partitioned_reactor_emits_once_per_event_with_its_causation_through_a_leave(
        store, instances) -> None:
    group = instances(lambda own, label: Ponger(own, label))
    pingers = [aggregate_in(p % N, f"pinger{p}") for p in range(2 * N)]
    rng = random.Random(3)

    def ping(count: int) -> None:
        for n in range(count):
            store.sink(Ping(aggregate_id=rng.choice(pingers), n=n))

    ping(40)
    for label in "ABC":
        group.start(label)
    ping(40)
    assert group.processors["B"].wait_for(store.latest_event_id(), timeout=WAIT)
    group.stop("B")
    ping(40)
    group.start("D")
    ping(20)
    latest = store.latest_event_id()
    assert group.processors["A"].wait_for(latest, timeout=WAIT)
    # every partition reads past the pongs too, once they are all emitted: none is behind
    assert wait_until(lambda: status(store, "partitioned_ponger").lag == 0, WAIT, 0.02)
    processors = dict(group.processors)
    group.close()
    assert group.errors == dict.fromkeys("ABCD")
    assert [p.guard.overlaps for p in processors.values()] == [0, 0, 0, 0]
    events = everything_in(store)
    pings = {e.id: e for e in events if isinstance(e, Ping)}
    pongs = [e for e in events if isinstance(e, Pong)]
    assert sorted(p.ping_id for p in pongs) == sorted(pings), "a ping answered twice or never"
    for pong in pongs:
        cause = pings[pong.ping_id]
        assert (pong.causation_id, pong.correlation_id) == (cause.uuid, cause.uuid)
        assert pong.aggregate_id == f"pong-{cause.aggregate_id}"
    for pinger in pingers:  # answered in the order of the pings: each aggregate's in id order
        answers = [p.ping_id for p in pongs if p.aggregate_id == f"pong-{pinger}"]
        assert answers == sorted(answers), pinger


# =================================================================================================
# wait_for, last_processed_event_id and the status while one partition is behind
# =================================================================================================


def test_wait_for_waits_for_every_partition_and_the_status_shows_the_one_behind(
        store, instances) -> None:
    log: list[Handled] = []
    gate = threading.Event()
    group = instances(lambda own, label: Recorder(own.tracker(), label, log, gate=gate))

    def handled_by() -> dict[int, str]:
        return {h.event_id: h.instance for h in log}

    since = time.monotonic()
    group.start("A")
    group.start("B")
    try:
        balanced(store, handled_by, {"A", "B"}, since)
        held = 0  # the partition whose instance is held up by the gate
        gated = add(store, PROBES[held], "gate")
        for round_ in range(2):
            for p in range(N):
                add(store, AGGREGATES[p], f"r{round_}")
        latest = store.latest_event_id()

        def one_behind() -> bool:
            positions = [e.position for e in status(store).partitions]
            return max(positions) == latest and min(positions) < latest

        assert wait_until(one_behind, WAIT, 0.02)
        now = status(store)
        entries = {e.partition: e for e in now.partitions}
        assert entries[held].position < gated
        assert now.position == min(e.position for e in entries.values())
        assert now.lag == max(e.lag for e in entries.values()) == latest - now.position
        for processor in group.processors.values():
            assert processor.last_processed_event_id == now.position
            assert processor.wait_for(latest, timeout=0.2) is False
        reader = Recorder(store.tracker(), "reader")  # another object reads the tracker too
        assert reader.last_processed_event_id == now.position
        assert reader.wait_for(latest, timeout=0.05) is False
        gate.set()
        assert reader.wait_for(latest, timeout=WAIT) is True
        assert all(e.lag == 0 for e in status(store).partitions)
    finally:
        gate.set()
        group.close()
    assert group.errors == {"A": None, "B": None}
    assert sorted(handled_by()) == list(range(1, latest + 1))


# =================================================================================================
# reset, replay and start_from
# =================================================================================================


def test_reset_resets_every_partition_and_the_run_after_it_replays_up_to_the_horizon(store) -> None:
    for aggregate_id in AGGREGATES:
        add(store, aggregate_id)
    horizon = store.latest_event_id()
    recorder = Recorder(store.tracker())
    es.run_processor(recorder, store, stop=lambda: recorder.last_processed_event_id >= horizon)
    assert status(store).position == horizon
    recorder.reset()
    assert [e.position for e in status(store).partitions] == [0] * N
    assert status(store).position == 0
    for aggregate_id in AGGREGATES[:3]:
        add(store, aggregate_id)
    latest = store.latest_event_id()
    again = Recorder(store.tracker(), "again")  # a new instance: the horizon is in the tracker
    es.run_processor(again, store, stop=lambda: again.last_processed_event_id >= latest)
    assert sorted(handled_ids(again.log)) == list(range(1, latest + 1))
    assert {h.event_id for h in again.log if h.replaying} == set(range(1, horizon + 1))


def test_start_from_end_starts_every_partition_after_the_latest_event_when_first_run(
        store, instances) -> None:
    class FromEnd(Recorder):
        processor_name = "from_end_recorder"
        start_from = "end"

    log: list[Handled] = []
    group = instances(lambda own, label: FromEnd(own.tracker(), label, log))
    for aggregate_id in AGGREGATES:
        add(store, aggregate_id)
    first_latest = store.latest_event_id()
    first = group.start("A")
    assert first.wait_for(first_latest, timeout=WAIT)
    assert [e.position for e in status(store, "from_end_recorder").partitions] == (
        [first_latest] * N)
    new = [add(store, aggregate_id) for aggregate_id in AGGREGATES[:4]]
    assert first.wait_for(new[-1], timeout=WAIT)
    group.stop("A")
    # not a first run: the events sunk while none ran are handled, by whichever instance
    while_stopped = [add(store, aggregate_id) for aggregate_id in AGGREGATES]
    group.start("B")
    group.start("C")
    assert group.processors["C"].wait_for(while_stopped[-1], timeout=WAIT)
    group.close()
    assert sorted(handled_ids(log)) == new + while_stopped


def make_repartitioned(partitions: int) -> type[Recorder]:
    return type(f"Repartitioned{partitions}", (Recorder,),
                {"processor_name": "repartitioned", "partitions": partitions})


def run_once(processor: Recorder, store: es.EventStore, handled: int) -> BaseException | None:
    """Run ``processor`` (NoRetry) until it has handled ``handled`` items, or it raised (returned);
    a bounded wait (WAIT), reached only when it does neither."""
    failure: list[BaseException] = []
    deadline = time.monotonic() + WAIT

    def run() -> None:
        try:
            es.run_processor(processor, store, error_handler=es.NoRetry(),
                             stop=lambda: len(processor.log) >= handled
                             or time.monotonic() > deadline)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT * 2)
    assert not thread.is_alive()
    return failure[0] if failure else None


@pytest.mark.parametrize(("before", "after"), [(4, 8), (1, 4), (4, 1), (8, 4)])
def test_changing_partitions_of_a_processor_with_positions_is_refused_until_it_is_reset(
        store, before: int, after: int) -> None:
    for aggregate_id in AGGREGATES:
        add(store, aggregate_id)
    latest = store.latest_event_id()
    old = make_repartitioned(before)(store.tracker())
    assert run_once(old, store, latest) is None
    assert old.wait_for(latest, timeout=WAIT)
    new = make_repartitioned(after)(store.tracker())
    refused = run_once(new, store, 1)  # (not refused, it would handle nothing: it stops at WAIT)
    assert isinstance(refused, (es.Error, ValueError)), refused
    assert "reset" in str(refused) and "repartitioned" in str(refused)
    assert new.log == [] and status(store, "repartitioned").position == latest
    new.reset()
    assert run_once(new, store, latest) is None and new.wait_for(latest, timeout=WAIT)
    assert sorted(handled_ids(new.log)) == list(range(1, latest + 1))
    partitions = status(store, "repartitioned").partitions
    assert [e.partition for e in partitions] == (list(range(after)) if after > 1 else [])


# =================================================================================================
# skipping and parking
# =================================================================================================


def test_skip_event_by_the_base_name_moves_the_events_partition_past_it(store) -> None:
    a, b = AGGREGATES[0], AGGREGATES[1]  # partitions 0 and 1
    first = add(store, a)
    stuck = add(store, a, "bad")
    others = [add(store, b), add(store, a), add(store, b)]
    recorder = Recorder(store.tracker(), failing=("bad",))
    running = Background(recorder, store, es.ConstantRetry(0.01))
    try:
        assert wait_until(lambda: failing_at(store, stuck))
        failing = status(store)
        assert (failing.failing_event_id, failing.position) == (stuck, first)
        assert "cannot handle bad" in (failing.last_error or "")
        assert [e.state for e in failing.partitions] == ["failing"] + ["running"] * (N - 1)
        with pytest.raises(ValueError, match="none of its partitions is at 0"):
            es.skip_event(store, NAME, first)  # its partition is past it already
        es.skip_event(store, NAME, stuck)
        assert recorder.wait_for(others[-1], timeout=WAIT)
    finally:
        running.finish()
    assert running.error is None
    assert sorted(handled_ids(recorder.log)) == sorted([first, *others])
    after = status(store)
    assert (after.position, after.state, after.last_error) == (others[-1], "stopped", None)


class ItemsProjector(es.Projector):
    """A partitioned projector in a database of its own: the items it handled; fails on ``bad``."""

    processor_name = "items_projector"
    partitions = N
    schema = "CREATE TABLE IF NOT EXISTS items (event_id BIGINT NOT NULL)"

    @es.on(ItemAdded)
    def _added(self, event: ItemAdded) -> None:
        if event.title == "bad":
            raise RuntimeError("bad item")
        self.db.execute(f"INSERT INTO items VALUES ({self.placeholder})", (event.id,))


def test_a_projector_in_its_own_database_is_skipped_and_parked_through_the_store(
        store, tmp_path) -> None:
    name = ItemsProjector.processor_name
    a, c = AGGREGATES[0], AGGREGATES[2]  # partitions 0 and 2
    first, stuck, later = add(store, a), add(store, a, "bad"), add(store, c)
    projector = ItemsProjector(str(tmp_path / "items.db"))
    running = Background(projector, store, es.ConstantRetry(0.01))
    try:
        assert wait_until(lambda: failing_at(store, stuck, name))
        es.skip_event(store, f"{name}#{es.partition_of(a, N)}", stuck)  # or by a partition's name
        assert projector.wait_for(later, timeout=WAIT)
    finally:
        running.finish()
    parking = Background(projector, store, es.ConstantRetry(0.01, park_after=2))
    try:
        bad, behind, other = add(store, c, "bad"), add(store, c), add(store, a)
        assert projector.wait_for(other, timeout=WAIT)
        assert [(p.event_id, p.behind) for p in es.parked_events(store, name)] == [
            (bad, None), (behind, bad)]
        assert status(store, name).parked == 2
        es.drop_parked(store, name, bad)
        assert wait_until(lambda: es.parked_events(store, name) == [])
    finally:
        parking.finish()
        rows = sorted(r[0] for r in projector.db.execute("SELECT event_id FROM items"))
        projector.close()
    assert (running.error, parking.error) == (None, None)
    assert rows == [first, later, behind, other]


def test_an_aggregates_later_events_park_behind_its_parked_one_under_two_instances(
        store, instances) -> None:
    log: list[Handled] = []
    group = instances(lambda own, label: Recorder(own.tracker(), label, log, failing=("bad",)),
                      handler=lambda: es.ConstantRetry(0.01, park_after=2))
    a, b, c = AGGREGATES[0], AGGREGATES[1], AGGREGATES[2]  # partitions 0, 1, 2
    first = group.start("A")
    ids = {"a-1": add(store, a), "a-bad": add(store, a, "bad"), "b-1": add(store, b),
           "c-bad": add(store, c, "bad"), "a-3": add(store, a), "c-2": add(store, c),
           "b-2": add(store, b)}
    assert first.wait_for(ids["b-2"], timeout=WAIT)
    group.start("B")
    group.stop("A")  # B takes every partition, and with them what they have parked
    ids.update({"a-4": add(store, a), "c-3": add(store, c), "b-3": add(store, b)})
    second = group.processors["B"]
    assert second.wait_for(ids["b-3"], timeout=WAIT)

    def parked() -> list[tuple[int, str, int | None]]:
        return [(p.event_id, p.aggregate_id, p.behind) for p in es.parked_events(store, NAME)]

    assert parked() == [(ids["a-bad"], a, None), (ids["c-bad"], c, None),
                        (ids["a-3"], a, ids["a-bad"]), (ids["c-2"], c, ids["c-bad"]),
                        (ids["a-4"], a, ids["a-bad"]), (ids["c-3"], c, ids["c-bad"])]
    assert sorted(handled_ids(log)) == [ids[k] for k in ("a-1", "b-1", "b-2", "b-3")]
    assert status(store).parked == 6 and status(store).lag == 0

    es.drop_parked(store, NAME, ids["c-bad"])  # c's are retried, by B
    assert wait_until(lambda: [p[0] for p in parked()] == [ids["a-bad"], ids["a-3"], ids["a-4"]])
    assert handled_ids(log)[-2:] == [ids["c-2"], ids["c-3"]]
    second.failing.clear()
    assert es.retry_parked(store, NAME) == [ids["a-bad"], ids["a-3"], ids["a-4"]]
    assert wait_until(lambda: parked() == [])
    assert handled_ids(log)[-3:] == [ids["a-bad"], ids["a-3"], ids["a-4"]]
    second.failing.add("bad")
    again = add(store, c, "bad")
    assert wait_until(lambda: [p[0] for p in parked()] == [again])
    group.close()
    assert group.errors == {"A": None, "B": None}
    assert sorted(handled_ids(log)) == sorted(set(ids.values()) - {ids["c-bad"]})
    Recorder(store.tracker()).reset()
    assert es.parked_events(store, NAME) == [] and status(store).parked == 0


# =================================================================================================
# the command line (SQLite and Postgres: it runs in a process of its own)
# =================================================================================================


def test_the_command_line_lists_each_partition_of_a_partitioned_processor(db_store) -> None:
    from tests.test_cli import assert_one_line_error, cli, json_lines

    for aggregate_id in AGGREGATES:
        add(db_store, aggregate_id)
    latest = db_store.latest_event_id()
    location = store_location(db_store)
    here = es._instance_name()
    pid, _, host = here.partition("@")

    def listed() -> tuple[list[str], dict]:
        table = cli(location, "processors")
        assert table.returncode == 0, table.stderr
        found = [s for s in json_lines(cli(location, "processors", "--json").stdout)
                 if s["name"] == NAME]
        assert len(found) == 1, found  # one line for it, none per partition
        return table.stdout.splitlines(), found[0]

    recorder = Recorder(db_store.tracker())
    running = Background(recorder, db_store)
    try:
        assert recorder.wait_for(latest, timeout=WAIT)
        lines, found = listed()
        assert (found["position"], found["lag"], found["running"], found["state"]) == (
            latest, 0, True, "running")
        assert found["partitions"] == [{"partition": p, "position": latest, "lag": 0,
                                        "owner": here, "state": "running"} for p in range(N)]
        for p in range(N):
            assert (f"  partition {p}: position {latest}, lag 0, running, owner pid {pid} on "
                    f"host {host}") in lines
        assert_one_line_error(cli(location, "reset", NAME, "--yes"), NAME, "running")
    finally:
        running.finish()
    assert running.error is None
    add(db_store, AGGREGATES[0])
    lines, found = listed()
    assert (found["position"], found["lag"], found["running"], found["state"]) == (
        latest, 1, False, "stopped")
    assert found["partitions"] == [{"partition": p, "position": latest, "lag": 1, "owner": None,
                                    "state": "stopped"} for p in range(N)]
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == ["name", NAME]
    assert [line for line in lines if line.startswith("  partition")] == [
        f"  partition {p}: position {latest}, lag 1, stopped" for p in range(N)]
    reset = cli(location, "reset", NAME, "--yes")
    assert reset.returncode == 0, reset.stderr
    after = status(db_store)
    assert [(e.position, e.state) for e in after.partitions] == [(0, "stopped")] * N



@pytest.mark.parametrize(("instances", "error", "says"), [
    (0, ValueError, "at least 1"), (-1, ValueError, "at least 1"), ("2", TypeError, "an int"),
    (True, TypeError, "an int"), (2.0, TypeError, "an int"),
    ({"items_projector": 0}, ValueError, "at least 1"),
    ({"no_such_processor": 2}, ValueError, "no_such_processor"),
])
def test_esprunner_refuses_bad_instances_naming_what_is_wrong(
        tmp_path, instances, error, says) -> None:
    store = es.SQLiteEventStore(str(tmp_path / "events.db"))
    projector = ItemsProjector(str(tmp_path / "items.db"))
    with pytest.raises(error, match=says):
        es.ESPRunner([projector], store, instances=instances)
    store.close()


def test_esprunner_makes_one_child_per_instance(tmp_path) -> None:
    store = es.SQLiteEventStore(str(tmp_path / "events.db"))
    projector = ItemsProjector(str(tmp_path / "items.db"))
    runner = es.ESPRunner([projector], store, instances={"items_projector": 3})
    assert sorted(runner._children) == ["items_projector", "items_projector/2",
                                        "items_projector/3"]
    assert es.ESPRunner([projector], store)._children.keys() == {"items_projector"}
    store.close()
