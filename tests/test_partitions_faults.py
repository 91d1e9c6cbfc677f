"""Partitioned processors under faults (issue 21 point 3; SPEC section 4, "Partitions" and
"Parking").

A processor with ``partitions = 6`` runs as several instances (ESPRunner ``instances=k``, several
runners, or threads running ``run_processor``) that share its partitions. Whatever happens to the
instances (kill -9 of one, of a whole runner, a lost lock of one partition mid-batch), every event
is handled exactly once, each aggregate's events in id order, and a partition is never worked on by
two owners at once: per partition, the committed handlings follow the event ids (a second owner at
work at the same time would commit some again or out of order).

What the processors record (tests/processing_support.py): PartitionedRecorder, a projector, one row
per committed handling in commit order, with the handler's pid; PartitionedPonger, a reactor, one
Pong per Ping (its causation_id the Ping's uuid, its metadata the handler's pid), committed with its
position in the event store. Runners run in subprocesses of their own (test_runner.RunnerProcess).

On SQLite and on Postgres (skipped only when the server is missing). Every wait is bounded (LONG
only expires when something hangs); nothing asserts a speed.
"""

from __future__ import annotations

import collections
import math
import multiprocessing
import os
import random
import signal
import time
import uuid

import pytest

import eventsourcery as es
from tests import processing_support as ps
from tests._util import everything_in, wait_until
from tests.processing_support import Ping, Pong, Slow, Tick
from tests.test_runner import LONG, RunnerProcess, locations, read_text

SPAWN = multiprocessing.get_context("spawn")
RECORDER = ps.PartitionedRecorder.processor_name
PONGER = ps.PartitionedPonger.processor_name
PARTITIONS = ps.PARTITIONS
N_EVENTS = 1200  # ticks and pings, appended by a writer process during the kill loop
N_AGGREGATES = 24
N_CHILD_KILLS = 9
INSTANCES = 3


def runner_spec(store_url: str, processors: list[dict], instances) -> dict:
    """The JSON spec of ps.runner_main: children forked, restarted quickly after a death."""
    return {"store": store_url, "start_method": "fork", "max_seconds": 30, "restart": True,
            "restart_delay": 0.05, "max_restart_delay": 0.2, "instances": instances,
            "processors": processors}


# --- processes ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command (state, ppid, ...); [] when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:  # gone (meanwhile)
        return []
    return text.rsplit(")", 1)[1].split() if text else []


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def children_of(parent: int) -> list[int]:
    """The live (not zombie) child processes of ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) == parent and fields[0] not in ("Z", "X"):
                found.append(int(entry))
    return sorted(found)


def wait_for_children(runner: RunnerProcess, n: int, not_in=()) -> list[int]:
    """The runner's children once ``n`` of them live, none of them in ``not_in``."""
    def ready():
        pids = children_of(runner.proc.pid)
        return len(pids) == n and not set(pids) & set(not_in)

    assert wait_until(ready, timeout=LONG), (
        f"the runner has not {n} live children: {children_of(runner.proc.pid)}\n"
        f"{runner.diagnostics()}")
    return children_of(runner.proc.pid)


# --- statuses -------------------------------------------------------------------------------------


def _field(entry, name):
    return entry[name] if isinstance(entry, dict) else getattr(entry, name)


def partition_entries(store, name: str) -> list:
    """processor_statuses(store)'s entries of ``name``'s partitions (partition, position, lag,
    owner, state)."""
    for status in es.processor_statuses(store):
        if status.name == name:
            return list(status.partitions)
    return []


def owner_pids(store, name: str) -> dict[int, int | None]:
    """partition -> the pid of its owner, for partitions whose state is "running"."""
    owners: dict[int, int | None] = {}
    for entry in partition_entries(store, name):
        owner = _field(entry, "owner")
        running = _field(entry, "state") == "running" and owner
        owners[_field(entry, "partition")] = int(owner.split("@")[0]) if running else None
    return owners


def shared_fairly(store, name: str, pids: list[int]) -> bool:
    """Every partition owned (running) by one of ``pids``, each of them owning at most
    ceil(partitions / len(pids))."""
    owners = owner_pids(store, name)
    if sorted(owners) != list(range(PARTITIONS)) or not set(owners.values()) <= set(pids):
        return False
    counts = collections.Counter(owners.values())
    return max(counts.values()) <= math.ceil(PARTITIONS / len(pids))


def describe_owners(store, *names: str) -> str:
    return "; ".join(f"{name}: {owner_pids(store, name)}" for name in names)


# --- what was handled -----------------------------------------------------------------------------


def check_handled(handled: list[tuple[int, str]], expected: dict[int, es.Event], what: str,
                  seed: int, unparked: frozenset[int] = frozenset()) -> dict:
    """``handled``: (event id, who) of every committed handling, in commit order; ``expected``:
    the events that must have been handled, by id. Each exactly once, each aggregate's in id order,
    and, per partition, in id order (so never by two owners at once), but for the ``unparked``
    events, handled on a retry of parked events after their partition went on. Returns counts."""
    counts = collections.Counter(event_id for event_id, _ in handled)
    twice = sorted(event_id for event_id, n in counts.items() if n > 1)
    assert not twice, (f"seed {seed}: {what}: {len(twice)} events handled more than once: "
                       f"{twice[:10]}")
    missing = sorted(set(expected) - set(counts))
    assert not missing, f"seed {seed}: {what}: {len(missing)} events never handled: {missing[:10]}"
    unexpected = sorted(set(counts) - set(expected))
    assert not unexpected, f"seed {seed}: {what}: handled events it must not: {unexpected[:10]}"
    by_aggregate: dict[str, list[int]] = collections.defaultdict(list)
    by_partition: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for event_id, who in handled:
        aggregate_id = expected[event_id].aggregate_id
        by_aggregate[aggregate_id].append(event_id)
        if event_id not in unparked:
            by_partition[es.partition_of(aggregate_id, PARTITIONS)].append((event_id, who))
    for aggregate_id, ids in by_aggregate.items():
        assert ids == sorted(ids), (f"seed {seed}: {what}: {aggregate_id}'s events out of order: "
                                    f"{ids}")
    handovers = 0
    for partition, rows in sorted(by_partition.items()):
        ids = [event_id for event_id, _ in rows]
        assert ids == sorted(ids), (f"seed {seed}: {what}: partition {partition} committed out of "
                                    f"id order (two owners at once?): {rows}")
        handovers += sum(1 for before, after in zip(rows, rows[1:], strict=False)
                         if before[1] != after[1])
    return {"events": len(expected), "handovers": handovers,
            "handlers": len({who for _, who in handled}), "partitions": len(by_partition)}


def recorder_handlings(projection: str) -> list[tuple[int, str]]:
    """(event id, pid) of every committed handling of PartitionedRecorder, in commit order."""
    rows = ps.recorded_rows(projection)
    return [(event_id, who.split("/")[0]) for _, event_id, _, who, _ in rows]


def ponger_handlings(events: list[es.Event]) -> list[tuple[int, str]]:
    """(ping id, pid) of every Pong in the store, in id order (their commit order)."""
    ping_ids = {e.uuid: e.id for e in events if isinstance(e, Ping)}
    return [(ping_ids[e.causation_id], str(e.metadata["pid"])) for e in events
            if isinstance(e, Pong)]


def sink_ticks(store, n: int, aggregates: list[str], rng: random.Random) -> list[es.Event]:
    return [e for _ in range(n) for e in store.sink(Tick(aggregate_id=rng.choice(aggregates)))]


# --- 1. kill -9 of instances, then of a whole runner, while events are appended ------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_9_of_instances_and_of_a_runner_handles_every_event_once_in_order(
        tmp_path, runners, backend):
    """ESPRunner with 3 instances of a partitioned projector and of a partitioned reactor; a writer
    process appends ticks and pings to 24 aggregates. N_CHILD_KILLS kill -9s of random children
    (partitions move), then kill -9 of the whole runner and a new one. Every tick recorded once and
    every ping answered once, in order per aggregate and per partition; the new runner's 3
    instances share each processor's partitions fairly."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store_url, projection = locations(backend, tmp_path, "events.db", "projection.db")
    store = es.open_store(store_url)
    spec = runner_spec(store_url, [{"kind": "partitioned_recorder", "db": projection},
                                   {"kind": "partitioned_ponger"}], INSTANCES)
    dirs = [tmp_path / "first", tmp_path / "second"]
    for d in dirs:
        d.mkdir()
    first = runners(dirs[0], **spec)
    done = str(tmp_path / "appended")
    appender = SPAWN.Process(target=ps.append_events,
                             args=(store_url, "tick+ping", N_EVENTS, N_AGGREGATES, seed, done,
                                   0.04, 10), daemon=True)
    appender.start()
    old: list[int] = []
    try:
        killed: list[int] = []
        for _ in range(N_CHILD_KILLS):
            pids = wait_for_children(first, 2 * INSTANCES, killed)
            time.sleep(rng.uniform(0.1, 0.5))
            victim = rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        # the whole runner, as a host's crash would (its children stop by themselves)
        old = wait_for_children(first, 2 * INSTANCES, killed)
        time.sleep(rng.uniform(0.1, 0.5))
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(LONG)
        if backend == "sqlite":  # the new runner's instances meet the old ones, still stopping
            second = runners(dirs[1], **spec)
        assert wait_until(lambda: not any(alive(pid) for pid in old), timeout=LONG), (
            f"the killed runner's children {[p for p in old if alive(p)]} did not stop")
        if backend == "postgres":  # (both at once would hold some 100 connections of the server)
            second = runners(dirs[1], **spec)
        appender.join(LONG)
        assert os.path.exists(done), read_text(done + ".error") or "the appender did not finish"
        # the new runner's instances handle these for sure
        last = [e for i in range(12) for e in store.sink([Tick(aggregate_id=f"last-{i}"),
                                                          Ping(aggregate_id=f"last-{i}")])]
        last_tick, last_ping = (max(e.id for e in last if isinstance(e, cls))
                                for cls in (Tick, Ping))
        recorder, ponger = ps.PartitionedRecorder(projection), ps.PartitionedPonger(store)
        assert recorder.wait_for(last_tick, timeout=LONG), (
            f"seed {seed}: the projector did not catch up: {describe_owners(store, RECORDER)}\n"
            f"{second.diagnostics()}")
        assert ponger.wait_for(last_ping, timeout=LONG), (
            f"seed {seed}: the reactor did not catch up: {describe_owners(store, PONGER)}\n"
            f"{second.diagnostics()}")
        pids = wait_for_children(second, 2 * INSTANCES)
        for name in (RECORDER, PONGER):
            assert wait_until(lambda n=name: _shared_by_three(store, n, pids), timeout=LONG), (
                f"{name}'s partitions are not shared by 3 live instances: "
                f"{describe_owners(store, name)}, children {pids}")
        assert second.stop(signal.SIGTERM) == 0, second.diagnostics()
    finally:
        for pid in old:
            if alive(pid):
                ps.kill_quietly(pid)
        if appender.is_alive():
            appender.kill()

    assert [status for _, status in first.terminations()] == [-signal.SIGKILL] * N_CHILD_KILLS
    assert [status for _, status in second.terminations()] == [0] * 2 * INSTANCES
    events = everything_in(store)
    ticks = {e.id: e for e in events if isinstance(e, Tick)}
    pings = {e.id: e for e in events if isinstance(e, Ping)}
    assert len(ticks) + len(pings) == N_EVENTS + 24
    recorded = check_handled(recorder_handlings(projection), ticks, "projector", seed)
    answered = check_handled(ponger_handlings(events), pings, "reactor", seed)
    print(f"\n[{backend}] kill loop (seed {seed}): {N_CHILD_KILLS} kill -9s of instances and 1 of "
          f"the runner; projector: {recorded}; reactor: {answered}")
    store.close()


def _shared_by_three(store, name: str, pids: list[int]) -> bool:
    """``name``'s partitions owned by three of ``pids`` (the runner's instances of it), fairly."""
    owners = owner_pids(store, name)
    mine = sorted({pid for pid in owners.values() if pid in pids})
    return len(mine) == INSTANCES and shared_fairly(store, name, mine)


# --- 2. two runners share a processor; one is killed ----------------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_two_runners_share_the_partitions_and_the_survivor_of_a_kill_9_takes_them_all(
        tmp_path, runners, backend):
    """Two runners (separate processes with store objects of their own, as on two hosts), one
    instance each, share a partitioned projector: 3 partitions each. kill -9 of one runner and of
    its child (its host's crash): the other's instance takes all 6, and every event is recorded
    once."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store_url, projection = locations(backend, tmp_path, "events.db", "projection.db")
    store = es.open_store(store_url)
    spec = runner_spec(store_url, [{"kind": "partitioned_recorder", "db": projection}], 1)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    a, b = (runners(d, **spec) for d in dirs)
    aggregates = [f"agg-{i}" for i in range(N_AGGREGATES)]
    watcher = ps.PartitionedRecorder(projection)
    stored = sink_ticks(store, 150, aggregates, rng)
    assert watcher.wait_for(stored[-1].id, timeout=LONG), a.diagnostics() + b.diagnostics()
    (a_child,), (b_child,) = wait_for_children(a, 1), wait_for_children(b, 1)
    assert wait_until(lambda: shared_fairly(store, RECORDER, [a_child, b_child])
                      and len(set(owner_pids(store, RECORDER).values())) == 2, timeout=LONG), (
        f"the two runners' instances do not share the partitions 3 and 3: "
        f"{describe_owners(store, RECORDER)}; children {a_child}, {b_child}")

    stored += sink_ticks(store, 150, aggregates, rng)
    time.sleep(rng.uniform(0, 0.2))  # somewhere in those events' processing, or after it
    for pid in (a_child, a.proc.pid):
        os.kill(pid, signal.SIGKILL)
    a.proc.wait(LONG)
    stored += sink_ticks(store, 150, aggregates, rng)
    assert watcher.wait_for(stored[-1].id, timeout=LONG), (
        f"seed {seed}: {describe_owners(store, RECORDER)}\n{b.diagnostics()}")
    assert wait_until(lambda: set(owner_pids(store, RECORDER).values()) == {b_child},
                      timeout=LONG), (
        f"the survivor {b_child} does not own every partition: {describe_owners(store, RECORDER)}")
    assert b.stop(signal.SIGTERM) == 0, b.diagnostics()
    assert b.terminations() == [(RECORDER, 0)]

    ticks = {e.id: e for e in everything_in(store)}
    assert sorted(ticks) == [e.id for e in stored]
    check_handled(recorder_handlings(projection), ticks, "projector", seed)
    store.close()


# --- 3. fencing: one partition's lock lost mid-batch ----------------------------------------------


SLOW_EVENTS = 5
SLOW_SECONDS = 0.4
FENCE_WAIT = 30.0  # seconds; reached only when a partition is left without an owner


def lock_file(store_path: str, name: str, partition: int) -> str:
    """The lock file of partition ``partition`` of processor ``name`` beside an SQLite store (where
    the store's locks put it: the name's characters other than letters, digits, ``_`` and ``-``
    become ``_``, so ``name#1`` and the member lock ``name@1`` differ only in their digests)."""
    return es._FileLocks(f"{store_path}.locks")._path(f"{name}#{partition}")


def take_the_lock_away(backend: str, store_url: str, name: str, partition: int) -> None:
    """What an operator or the infrastructure does to an instance's lock of one partition:
    Postgres: pg_terminate_backend of its lock session; SQLite: its lock file removed (a tmp
    cleaner)."""
    if backend == "postgres":
        from tests import pg_support

        with pg_support.connect() as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"eventsourcery processor {name}#{partition}"[:63],)).fetchall()
        assert killed == [(True,)], f"no lock session of {name}#{partition}: {killed}"
    else:
        os.remove(lock_file(store_url, name, partition))


@pytest.mark.parametrize("instances", [1, 2])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_instance_that_loses_a_partition_mid_batch_commits_nothing_more_for_it(
        tmp_path, backend, instances):
    """One or two instances (processes running run_processor, ps.run_recorder) run a partitioned
    projector; two share its partitions 3 and 3. While the owner of one partition is in the middle
    of a batch of slow events of it, the lock of that partition is taken away from it (Postgres:
    its lock session terminated; SQLite: its lock file removed). What it handled in that batch is
    never committed; the partition is taken again (by either instance) and every event, those sunk
    after too, is recorded once, in order."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name = f"pf_{uuid.uuid4().hex[:8]}"  # its lock sessions are found by name on a shared server
    store_url, projection = locations(backend, tmp_path, "events.db", "projection.db")
    store = es.open_store(store_url)
    labels = "AB"[:instances]
    procs = [SPAWN.Process(target=ps.run_recorder, daemon=True,
                           args=(store_url, projection, str(tmp_path), name, label, os.getpid()))
             for label in labels]
    for proc in procs:
        proc.start()
    pids = [proc.pid for proc in procs]
    watcher = ps.PartitionedRecorder(projection, name=name)

    def diagnostics() -> str:
        return (f"seed {seed}; owners {describe_owners(store, name)}; instances {pids}\n"
                + "".join(f"--- {label}\n{read_text(tmp_path / f'{label}.error')}"
                          f"{read_text(tmp_path / f'{label}.log')[-3000:]}" for label in labels))

    try:
        aggregates = [f"agg-{i}" for i in range(N_AGGREGATES)]
        stored = sink_ticks(store, 60, aggregates, rng)
        assert watcher.wait_for(stored[-1].id, timeout=LONG), diagnostics()
        assert wait_until(lambda: shared_fairly(store, name, pids)
                          and len(set(owner_pids(store, name).values())) == instances,
                          timeout=LONG), diagnostics()
        slow_aggregate = rng.choice(aggregates)
        partition = es.partition_of(slow_aggregate, PARTITIONS)
        owner = owner_pids(store, name)[partition]
        slow = store.sink([Slow(aggregate_id=slow_aggregate, seconds=SLOW_SECONDS)
                           for _ in range(SLOW_EVENTS)])
        markers = str(tmp_path / "slow.jsonl")
        assert wait_until(lambda: any(m["event_id"] == slow[1].id
                                      for m in ps.read_json_lines(markers)), timeout=LONG)
        # in the middle of the batch: its first two slow events handled, not committed
        committed = {token for *_, token in ps.recorded_rows(projection)}
        take_the_lock_away(backend, store_url, name, partition)
        fenced_at = time.time()
        in_flight = [m for m in ps.read_json_lines(markers)
                     if m["at"] < fenced_at and m["token"] not in committed]
        assert in_flight and {m["who"].split("/")[0] for m in in_flight} == {str(owner)}, (
            f"nothing of partition {partition}'s owner {owner} was in the middle of its batch: "
            f"{ps.read_json_lines(markers)}")
        stored += slow
        stored += sink_ticks(store, 60, aggregates + [slow_aggregate] * 10, rng)
        assert watcher.wait_for(stored[-1].id, timeout=FENCE_WAIT), (
            f"not caught up {FENCE_WAIT} s after partition {partition}'s lock was taken from "
            f"{owner}: {diagnostics()}")
    finally:
        (tmp_path / "stop").write_text("")
        for proc in procs:
            proc.join(LONG)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * instances, diagnostics()

    rows = ps.recorded_rows(projection)
    tokens = {token for *_, token in rows}
    again = [m for m in in_flight if m["token"] in tokens]
    assert not again, (f"instance {owner} committed handlings of partition {partition} after it "
                       f"lost its lock (its batch in flight then): {again}\n{diagnostics()}")
    events = {e.id: e for e in everything_in(store)}
    assert sorted(events) == [e.id for e in stored]
    check_handled([(event_id, who) for _, event_id, _, who, _ in rows], events, "projector", seed)
    store.close()


# --- 4. parking under partitions and kill -9 ------------------------------------------------------


BAD = ("bad-0", "bad-1", "bad-2")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_parked_events_under_partitions_and_kill_9_are_neither_lost_nor_handled_twice(
        tmp_path, runners, backend):
    """A partitioned reactor in an ESPRunner with 2 instances, ConstantRetry(0.01, park_after=2):
    a poison ping of three aggregates fails until healed. While pings flow, children are killed.
    Parked: exactly each poison ping and the later pings of its aggregate; everything else answered
    once, in order. Healed and retried (with one more kill): every ping answered exactly once, in
    order."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    (store_url,) = locations(backend, tmp_path, "events.db")
    store = es.open_store(store_url)
    runner = runners(tmp_path, **runner_spec(
        store_url, [{"kind": "partitioned_ponger", "error_handler": "parking"}], 2))
    aggregates = [f"agg-{i}" for i in range(12)] + list(BAD)
    n = 0
    kills = 0
    killed: list[int] = []
    for round_ in range(6):
        pids = wait_for_children(runner, 2, killed)
        for _ in range(40):
            store.sink(Ping(aggregate_id=rng.choice(aggregates), n=n))
            n += 1
        if round_ == 1:
            for aggregate_id in BAD:
                store.sink(Ping(aggregate_id=aggregate_id, n=-1))
        time.sleep(rng.uniform(0.05, 0.3))
        victim = rng.choice(pids)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        kills += 1
    for aggregate_id in BAD:  # surely behind the poison
        store.sink(Ping(aggregate_id=aggregate_id, n=n))
        n += 1
    ponger = ps.PartitionedPonger(store)
    last = store.latest_event_id([Ping])
    assert ponger.wait_for(last, timeout=LONG), (
        f"seed {seed}: {describe_owners(store, PONGER)}\n{runner.diagnostics()}")

    events = everything_in(store)
    pings = {e.id: e for e in events if isinstance(e, Ping)}
    poison = {e.aggregate_id: e.id for e in pings.values() if e.n < 0}
    expected_parked = sorted(i for i, e in pings.items()
                             if e.aggregate_id in poison and i >= poison[e.aggregate_id])
    parked = es.parked_events(store, PONGER)
    assert sorted(p.event_id for p in parked) == expected_parked, f"seed {seed}"
    for p in parked:
        first = poison[p.aggregate_id]
        assert p.behind == (None if p.event_id == first else first), p
        if p.event_id == first:
            assert p.error == f"RuntimeError: poison event {first}" and p.attempts >= 2, p
    answered = {i: e for i, e in pings.items() if i not in expected_parked}
    check_handled(ponger_handlings(events), answered, "reactor before the retry", seed)

    (tmp_path / "healed").write_text("")
    assert sorted(es.retry_parked(store, PONGER)) == expected_parked
    time.sleep(rng.uniform(0, 0.3))
    victim = rng.choice(wait_for_children(runner, 2, killed))
    os.kill(victim, signal.SIGKILL)
    killed.append(victim)
    kills += 1
    assert wait_until(lambda: not es.parked_events(store, PONGER), timeout=LONG), (
        f"seed {seed}: still parked: {es.parked_events(store, PONGER)}\n{runner.diagnostics()}")
    assert ponger.wait_for(last, timeout=LONG)
    wait_for_children(runner, 2, killed)  # (so that the last one killed is not stopped in its wait)
    # some of its children were killed: start() returns False
    assert runner.stop(signal.SIGTERM) == 3, runner.diagnostics()
    assert [status for _, status in runner.terminations()] == [-signal.SIGKILL] * kills + [0, 0]

    events = everything_in(store)
    check_handled(ponger_handlings(events), pings, "reactor after the retry", seed,
                  frozenset(expected_parked))
    store.close()
