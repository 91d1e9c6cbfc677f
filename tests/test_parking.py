"""Parked events (dead letters): ``park_after`` on the retry handlers, ``es.parked_events``,
``es.retry_parked``, ``es.drop_parked`` (SPEC section 4; the CLI's commands: test_cli_parking.py).

An event whose handler has failed ``park_after`` times in a row is parked: kept in the processor's
tracker with its error, the position past it (in one transaction), and the processor goes on. Later
events of its aggregate park behind it, unhandled; other aggregates' events are not held up.
On every store; the kill -9 loop on SQLite and Postgres.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import signal
import time

import pytest

import eventsourcery as es
from tests._util import WAIT, wait_until
from tests.events import ItemAdded, ItemRejected
from tests.test_operating_processors import Background

NAME = "park_recorder"


class Recorder(es.EventStreamProcessor):
    """Records the items it handles, in order; fails on a title in ``failing`` (changeable)."""

    processor_name = NAME

    def __init__(self, tracker, failing=("bad",)):
        super().__init__(tracker)
        self.failing = set(failing)
        self.handled: list[int] = []

    @es.on(ItemAdded)
    def _added(self, event):
        if event.title in self.failing:
            raise RuntimeError(f"cannot handle {event.title}")
        self.handled.append(event.id)


def add(store, aggregate_id: str, title: str) -> int:
    return store.sink(ItemAdded(aggregate_id=aggregate_id, title=title))[0].id


def status(store, name=NAME) -> es.ProcessorStatus:
    return {s.name: s for s in es.processor_statuses(store)}[name]


def parked(store, name=NAME) -> list[tuple[int, str, int | None]]:
    return [(p.event_id, p.aggregate_id, p.behind) for p in es.parked_events(store, name)]


def sink_story(store) -> dict[str, int]:
    """a1's second event fails; its later ones park behind it; b's go on."""
    return {
        "a1-1": add(store, "a1", "a1-1"),
        "bad": add(store, "a1", "bad"),
        "b-1": add(store, "b", "b-1"),
        "a1-3": add(store, "a1", "a1-3"),
        "rejected": store.sink(ItemRejected(aggregate_id="a1"))[0].id,
        "b-2": add(store, "b", "b-2"),
        "a1-4": add(store, "a1", "a1-4"),
    }


def park_story(store, park_after=3) -> tuple[Recorder, Background, dict[str, int]]:
    ids = sink_story(store)
    recorder = Recorder(store.tracker())
    running = Background(recorder, store, es.ConstantRetry(0.01, park_after=park_after))
    assert recorder.wait_for(ids["a1-4"], timeout=WAIT)
    return recorder, running, ids


def test_an_event_that_keeps_failing_is_parked_with_its_aggregate_behind_it_and_the_rest_goes_on(
    store, caplog
):
    caplog.set_level(logging.WARNING, logger="eventsourcery")
    before = time.time()
    recorder, running, ids = park_story(store)
    try:
        assert recorder.handled == [ids["a1-1"], ids["b-1"], ids["b-2"]]
        bad = ids["bad"]
        assert parked(store) == [
            (bad, "a1", None),
            (ids["a1-3"], "a1", bad),
            (ids["a1-4"], "a1", bad),
        ]
        first, *behind = es.parked_events(store, NAME)
        assert (first.error, first.attempts) == ("RuntimeError: cannot handle bad", 3)
        assert [(p.error, p.attempts) for p in behind] == [(None, 0), (None, 0)]
        assert first.parked_at.tzinfo is not None
        assert before - 1 <= first.parked_at.timestamp() <= time.time() + 1
        now = status(store)  # parked events count as passed: no lag, no failure
        assert (now.parked, now.position, now.lag, now.last_error) == (3, ids["a1-4"], 0, None)
        assert f"parked event {bad}" in caplog.text
        later = add(store, "b", "b-3")
        assert recorder.wait_for(later, timeout=WAIT)
        assert recorder.handled[-1] == later
        held = add(store, "a1", "a1-5")  # still behind the parked one
        assert recorder.wait_for(held, timeout=WAIT)
        assert parked(store)[-1] == (held, "a1", bad) and held not in recorder.handled
    finally:
        running.finish()
    assert running.error is None
    assert es.parked_events(store, NAME)[0].attempts == 3  # kept across runs


def test_retry_parked_handles_them_in_order_and_one_failing_again_stays_parked(store):
    recorder, running, ids = park_story(store)
    try:
        asked = es.retry_parked(store, NAME)  # still failing: it stays parked, attempts counted
        assert asked == [ids["bad"], ids["a1-3"], ids["a1-4"]]
        assert wait_until(lambda: es.parked_events(store, NAME)[0].attempts == 4)
        assert parked(store) == [
            (ids["bad"], "a1", None),
            (ids["a1-3"], "a1", ids["bad"]),
            (ids["a1-4"], "a1", ids["bad"]),
        ]
        with pytest.raises(ValueError, match=f"waits behind parked event {ids['bad']}"):
            es.retry_parked(store, NAME, ids["a1-3"])
        recorder.failing.clear()  # fixed: a retry of that one (with those behind it) handles them
        handled_before = list(recorder.handled)
        assert es.retry_parked(store, NAME, ids["bad"]) == [ids["bad"], ids["a1-3"], ids["a1-4"]]
        assert wait_until(lambda: not es.parked_events(store, NAME))
        assert recorder.handled == handled_before + [ids["bad"], ids["a1-3"], ids["a1-4"]]
        after = add(store, "a1", "a1-5")  # a1 is no longer held up
        assert recorder.wait_for(after, timeout=WAIT)
        assert recorder.handled[-1] == after
        assert status(store).parked == 0
    finally:
        running.finish()
    assert running.error is None
    assert len(set(recorder.handled)) == len(recorder.handled)  # each once


def test_a_retry_asked_while_stopped_is_done_by_the_next_run_before_its_next_batch(store):
    recorder, running, ids = park_story(store)
    running.finish()
    recorder.failing.clear()
    es.retry_parked(store, NAME)
    new = add(store, "a1", "a1-5")
    recorder.handled.clear()
    again = Background(recorder, store, es.ConstantRetry(0.01, park_after=3))
    try:
        assert recorder.wait_for(new, timeout=WAIT)
        assert wait_until(lambda: recorder.handled == [ids["bad"], ids["a1-3"], ids["a1-4"], new])
    finally:
        again.finish()
    assert not es.parked_events(store, NAME)


def test_drop_parked_gives_one_up_and_retries_those_behind_it(store):
    recorder, running, ids = park_story(store)
    try:
        es.drop_parked(store, NAME, ids["bad"])
        assert wait_until(lambda: not es.parked_events(store, NAME))
        assert (
            recorder.handled[-2:] == [ids["a1-3"], ids["a1-4"]]
            and ids["bad"] not in recorder.handled
        )
        with pytest.raises(ValueError, match="no such parked event.*nothing changed"):
            es.drop_parked(store, NAME, ids["bad"])
    finally:
        running.finish()
    assert running.error is None


def test_dropping_one_parked_behind_another_leaves_the_first_and_the_rest_parked(store):
    recorder, running, ids = park_story(store)
    running.finish()
    es.drop_parked(store, NAME, ids["a1-3"])
    assert parked(store) == [(ids["bad"], "a1", None), (ids["a1-4"], "a1", ids["bad"])]


def test_after_its_last_parked_event_is_dropped_an_aggregate_goes_on_at_once(store):
    recorder, running, ids = park_story(store)
    try:
        for event_id in (ids["a1-4"], ids["a1-3"], ids["bad"]):  # the last one has nobody behind it
            es.drop_parked(store, NAME, event_id)
        new = add(store, "a1", "a1-5")  # handled, not parked behind the dropped one
        assert recorder.wait_for(new, timeout=WAIT)
        assert recorder.handled[-1] == new and not es.parked_events(store, NAME)
    finally:
        running.finish()
    assert running.error is None


def test_reset_clears_the_parked_events(store):
    recorder, running, ids = park_story(store)
    running.finish()
    assert status(store).parked == 3
    recorder.reset()
    assert es.parked_events(store, NAME) == [] and status(store).parked == 0


class ParkingProjector(es.Projector):
    """A projector in a database of its own: its parked events live there, beside its position."""

    processor_name = "parking_projector"
    schema = "CREATE TABLE IF NOT EXISTS seen (id INTEGER PRIMARY KEY, aggregate_id TEXT)"

    @es.on(ItemAdded)
    def _added(self, event):
        if event.title == "bad":
            raise RuntimeError("bad item")
        self.db.execute(
            f"INSERT INTO seen VALUES ({self.placeholder}, {self.placeholder})",
            (event.id, event.aggregate_id),
        )


def test_a_projector_with_its_own_database_parks_there_and_is_found_through_the_store(
    store, tmp_path
):
    ids = sink_story(store)
    projector = ParkingProjector(str(tmp_path / "projection.db"))
    running = Background(projector, store, es.ConstantRetry(0.01, park_after=2))
    try:
        assert projector.wait_for(ids["a1-4"], timeout=WAIT)
        assert [p.event_id for p in es.parked_events(store, "parking_projector")] == [
            ids["bad"],
            ids["a1-3"],
            ids["a1-4"],
        ]
        assert DatabaseParked(projector) == [
            ids["bad"],
            ids["a1-3"],
            ids["a1-4"],
        ]  # in its own database
        assert status(store, "parking_projector").parked == 3
        es.drop_parked(store, "parking_projector", ids["bad"])
        assert wait_until(lambda: not es.parked_events(store, "parking_projector"))
        seen = projector.db.execute("SELECT id FROM seen ORDER BY id").fetchall()
        assert [row[0] for row in seen] == [
            ids["a1-1"],
            ids["b-1"],
            ids["a1-3"],
            ids["b-2"],
            ids["a1-4"],
        ]
    finally:
        running.finish()
        projector.close()
    assert running.error is None


def DatabaseParked(projector) -> list[int]:  # noqa: N802 - reads like the table it reads
    return [p.event_id for p in projector.tracker.parked_events(projector.processor_name)]


class Emitter(es.Reactor):
    """Emits an item_rejected for each item it handles (with the event, its position commits)."""

    processor_name = "parking_emitter"
    emits_events = [ItemRejected]

    @es.on(ItemAdded)
    def _added(self, event):
        if event.title.startswith("bad"):
            raise RuntimeError(f"cannot handle {event.title}")
        self.emit_event(ItemRejected(aggregate_id="out-" + event.aggregate_id, reason=event.uuid))


def emissions(store) -> list[str]:
    return [e.causation_id for e in _all(store) if isinstance(e, ItemRejected) and e.causation_id]


def _all(store):
    out, nxt = [], 1
    while page := store.get_next_from(nxt, limit=1000):
        out.extend(page)
        nxt = page[-1].id + 1
    return out


def test_a_reactor_emits_nothing_for_parked_events_and_once_for_each_on_retry(store):
    ids = sink_story(store)
    reactor = Emitter(store)
    running = Background(reactor, store, es.ExponentialBackoffRetry(0.01, 0.02, park_after=1))
    try:
        assert reactor.wait_for(ids["a1-4"], timeout=WAIT)
        uuid_of = {e.id: e.uuid for e in _all(store)}
        assert emissions(store) == [uuid_of[ids[k]] for k in ("a1-1", "b-1", "b-2")]
        assert es.parked_events(store, "parking_emitter")[0].attempts == 1
        es.drop_parked(store, "parking_emitter", ids["bad"])
        assert wait_until(lambda: len(emissions(store)) == 5)
        assert emissions(store)[3:] == [uuid_of[ids["a1-3"]], uuid_of[ids["a1-4"]]]
    finally:
        running.finish()
    assert running.error is None and not es.parked_events(store, "parking_emitter")


def test_without_park_after_nothing_is_parked(store):
    ids = sink_story(store)
    recorder = Recorder(store.tracker())
    running = Background(recorder, store, es.ConstantRetry(0.01))
    try:
        assert wait_until(
            lambda: any(s.failing_event_id == ids["bad"] for s in es.processor_statuses(store))
        )
        assert not recorder.wait_for(ids["bad"], timeout=0.3)
    finally:
        running.finish()
    assert es.parked_events(store, NAME) == [] and status(store).parked == 0


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_park_after_must_be_none_or_a_positive_int(value):
    for make in (
        lambda: es.ConstantRetry(0.1, park_after=value),
        lambda: es.ExponentialBackoffRetry(0.1, 1.0, park_after=value),
    ):
        with pytest.raises(ValueError, match="park_after must be None or an int >= 1"):
            make()
    assert es.ConstantRetry(park_after=1).park_after == 1
    assert es.ExponentialBackoffRetry().park_after is None


def test_bad_arguments_are_refused_and_change_nothing(store):
    recorder, running, ids = park_story(store)
    running.finish()
    before = parked(store)
    for call in (
        lambda: es.parked_events(store, "nobody"),
        lambda: es.retry_parked(store, "nobody"),
        lambda: es.drop_parked(store, "nobody", ids["bad"]),
    ):
        with pytest.raises(ValueError, match=f"unknown processor 'nobody'.*{NAME}"):
            call()
    with pytest.raises(ValueError, match="no such parked event"):
        es.retry_parked(store, NAME, ids["b-1"])
    for bad_id in (0, -3):
        with pytest.raises(ValueError, match="event ids start at 1"):
            es.drop_parked(store, NAME, bad_id)
    with pytest.raises(TypeError):
        es.drop_parked(store, NAME, str(ids["bad"]))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        es.retry_parked(store, NAME, 2.0)  # type: ignore[arg-type]
    assert parked(store) == before
    assert isinstance(es.parked_events(store, NAME)[0].parked_at, datetime.datetime)


# --- under faults: kill -9 in a loop while events flow, some always failing (SQLite, Postgres) ---


class KillEmitter(es.Reactor):
    """Emits one item_rejected per item it handles (committed with its position, or its unparking):
    the emitted events record what was handled, exactly how often, and in which order."""

    processor_name = "kill_parker"
    emits_events = [ItemRejected]

    @es.on(ItemAdded)
    def _added(self, event):
        if event.title == "bad":
            raise RuntimeError("always fails")
        time.sleep(0.002)  # so that kills land while it works
        self.emit_event(ItemRejected(aggregate_id="out", reason=event.aggregate_id))


def _run_child(store, parent: int) -> None:
    logging.getLogger("eventsourcery").setLevel(logging.CRITICAL)
    es.run_processor(
        KillEmitter(store),
        store,
        stop=lambda: os.getppid() != parent,
        error_handler=es.ConstantRetry(0.01, park_after=2),
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_kill_9_in_a_loop_neither_loses_nor_doubles_a_handled_or_parked_event(kind, tmp_path):
    import multiprocessing

    from tests.conftest import STORE_FACTORIES

    store = STORE_FACTORIES[kind](tmp_path / "events.db")
    fork = multiprocessing.get_context("fork")
    rng = random.Random(21)
    aggregates = [f"agg{n}" for n in range(9)] + ["bad0", "bad1", "bad2"]
    sunk: dict[str, int] = dict.fromkeys(aggregates, 0)
    name = KillEmitter.processor_name

    def sink_some(count: int) -> None:
        for _ in range(count):
            aggregate_id = rng.choice(aggregates)
            sunk[aggregate_id] += 1
            bad = aggregate_id.startswith("bad") and sunk[aggregate_id] == 3
            store.sink(ItemAdded(aggregate_id=aggregate_id, title="bad" if bad else "ok"))

    def start():
        child = fork.Process(target=_run_child, args=(store, os.getpid()), daemon=True)
        child.start()
        return child

    dropped: list[int] = []
    kills = 0
    try:
        for round_ in range(10):
            child = start()
            sink_some(40)
            if round_ == 5:  # give one parked event up while it runs: those behind it are retried
                assert wait_until(
                    lambda: any(p.behind is None for p in es.parked_events(store, name)), 20
                )
                dropped.append(
                    next(p.event_id for p in es.parked_events(store, name) if p.behind is None)
                )
                es.drop_parked(store, name, dropped[0])
            time.sleep(rng.uniform(0.05, 0.3))
            os.kill(child.pid, signal.SIGKILL)
            child.join(WAIT)
            assert child.exitcode == -signal.SIGKILL
            kills += 1
        child = start()
        sink_some(10)
        try:
            tracker = store.tracker()
            assert wait_until(
                lambda: (
                    tracker.last_processed_event_id(name) == store.latest_event_id()
                    and not tracker.retry_requested(name)
                ),
                WAIT,
            )
        finally:
            child.terminate()
            child.join(WAIT)
        events = _all(store)
        items = {e.id: e for e in events if isinstance(e, ItemAdded)}
        id_of = {e.uuid: e.id for e in items.values()}
        handled = [
            id_of[e.causation_id] for e in events if isinstance(e, ItemRejected)
        ]  # in commit order
        parked_now = es.parked_events(store, name)
        parked_ids = [p.event_id for p in parked_now]
    finally:
        store.close()
    assert kills == 10 and len(dropped) == 1
    assert len(handled) == len(set(handled)), "an event was handled twice"
    assert not set(handled) & set(parked_ids), "an event was both handled and parked"
    assert set(handled) | set(parked_ids) | set(dropped) == set(items), "an event was lost"
    assert dropped[0] not in handled and dropped[0] not in parked_ids
    for aggregate_id in aggregates:  # each aggregate's events handled in id order
        mine = [i for i in handled if items[i].aggregate_id == aggregate_id]
        assert mine == sorted(mine), aggregate_id
        if aggregate_id.startswith("bad") and sunk[aggregate_id] >= 3:
            first_bad = next(
                i
                for i in sorted(items)
                if items[i].aggregate_id == aggregate_id and items[i].title == "bad"
            )
            later = [
                i for i in sorted(items) if items[i].aggregate_id == aggregate_id and i > first_bad
            ]
            if first_bad in dropped:
                assert set(later) <= set(handled)
            else:  # it, and everything after it, parked; nothing of it handled after it
                assert [first_bad, *later] == [
                    p for p in parked_ids if items[p].aggregate_id == aggregate_id
                ]
    assert any(p.behind is not None for p in parked_now) and len(handled) > 200
