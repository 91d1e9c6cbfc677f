"""Repository.update: load, run a command, save, and start over on a ConcurrencyError."""

from __future__ import annotations

import threading
import time

import pytest

import eventsourcery as es


class RuIncremented(es.Event):
    by: int


class RuNoted(es.Event):
    """What a reactor emits onto the counter's own stream (the counter ignores it)."""

    note: str


class RuCounter(es.Aggregate):
    snapshot_every = 3
    ignores_events = (RuNoted,)
    count: int = 0

    @es.on(RuIncremented)
    def _incremented(self, event: RuIncremented) -> None:
        self.count += event.by

    def increment(self, pause: float = 0.0) -> None:
        time.sleep(pause)  # the window between load and save in which another writer gets in
        self.apply_event(RuIncremented, by=1)


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer did not finish in 120 s"


def test_concurrent_writers_and_a_reactor_on_one_aggregate_lose_nothing(
        store: es.EventStore) -> None:
    """Three command writers and a reactor-like writer append to one aggregate at once: each
    command's event is stored exactly once, conflicts happened and were retried, and snapshots
    stay right."""
    repo = es.Repository(store)
    writers, per_writer, notes = 3, 8, 12
    runs = []  # one entry per run of the command, successful or not
    stored: list[list[es.Event]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers + 1)

    def command(counter: RuCounter) -> None:
        runs.append(counter.version)
        counter.increment(pause=0.005)

    def writer() -> None:
        try:
            barrier.wait(30)
            for _ in range(per_writer):
                stored.append(repo.update(RuCounter, "c-1", command, attempts=200, backoff=0.005))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    def reactor() -> None:  # onto the aggregate's stream, no expected version (as emit_event)
        try:
            barrier.wait(30)
            for i in range(notes):
                store.sink(RuNoted(aggregate_id="c-1", note=f"n{i}"))
                time.sleep(0.004)
        except BaseException as exc:
            errors.append(exc)

    _join([threading.Thread(target=writer) for _ in range(writers)]
          + [threading.Thread(target=reactor)])
    assert errors == []
    assert [len(s) for s in stored] == [1] * (writers * per_writer)  # what save stored
    history = store.get_events_for_aggregate_id("c-1")
    assert [e.version for e in history] == list(range(1, writers * per_writer + notes + 1))
    increments = [e for e in history if isinstance(e, RuIncremented)]
    # each command's event exactly once
    assert sorted(e.uuid for e in increments) == sorted(s[0].uuid for s in stored)
    assert len(runs) > writers * per_writer, "no conflict happened: the retry was not exercised"
    assert repo.load(RuCounter, "c-1").count == writers * per_writer
    assert RuCounter("c-1", history).count == writers * per_writer  # a plain replay agrees
    # updates took snapshots as save does (and the load above started at the latest)
    snapshots = store.snapshots("c-1")
    assert snapshots and snapshots[0].version % RuCounter.snapshot_every == 0, snapshots


def test_update_gives_up_after_the_last_attempt(store: es.EventStore) -> None:
    repo = es.Repository(store)
    runs = []

    def command(counter: RuCounter) -> None:
        runs.append(counter.version)
        store.sink(RuNoted(aggregate_id="c-2", note="in between"))  # another writer, every time
        counter.increment()

    with pytest.raises(es.ConcurrencyError):
        repo.update(RuCounter, "c-2", command, attempts=3, backoff=0)
    assert runs == [0, 1, 2]  # three attempts, each on a fresh load
    assert [type(e) for e in store.get_events_for_aggregate_id("c-2")] == [RuNoted] * 3


def test_update_never_retries_other_errors() -> None:
    store = es.MemoryEventStore()
    repo = es.Repository(store)
    runs = []

    def refuses(counter: RuCounter) -> None:
        runs.append(1)
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        repo.update(RuCounter, "c-3", refuses, attempts=5)
    assert runs == [1]

    stored = repo.update(RuCounter, "c-3", lambda c: c.increment())
    assert [e.version for e in stored] == [1]
    again = stored[0]

    def duplicate(counter: RuCounter) -> None:  # an event stored already: no conflict to retry
        runs.append(2)
        counter.apply_event(RuIncremented(by=1, uuid=again.uuid))

    with pytest.raises(es.DuplicateEventError):
        repo.update(RuCounter, "c-3", duplicate, attempts=5)
    assert runs == [1, 2]
    assert repo.update(RuCounter, "c-3", lambda c: None) == []  # nothing applied: nothing stored


@pytest.mark.parametrize("options", [{"attempts": 0}, {"attempts": 1.5}, {"attempts": True},
                                     {"backoff": -1}, {"backoff": float("nan")},
                                     {"backoff": float("inf")}])
def test_update_refuses_bad_options(options: dict[str, object]) -> None:
    repo = es.Repository(es.MemoryEventStore())
    with pytest.raises(ValueError, match=next(iter(options))):
        repo.update(RuCounter, "c-4", lambda c: c.increment(), **options)  # type: ignore[arg-type]
