"""Moving a processor past one event deliberately (es.skip_event; the CLI's ``skip`` is in
test_cli.py).

A processor stops at an event whose handler keeps failing, or at a damaged row its reader cannot
decode (written by other means), with every event before it processed; ``es.skip_event(store, name,
id)`` moves its position from exactly ``id - 1`` to ``id``: a running instance goes on with the next
event at its next retry, the skipped event is never processed, every other event exactly once. On
every store.
"""

from __future__ import annotations

import collections
import logging
import shlex

import pytest

import eventsourcery as es
from tests._util import WAIT, wait_until
from tests.events import ItemAdded, ItemRejected
from tests.test_operating_processors import Background

DAMAGED_BODY = '{"name": "no title"}'  # an item_added body its class cannot load


def damage(store, event_id: int) -> None:
    """Overwrite one stored event's body behind the store's back, as a bad migration or a bug
    would."""
    if isinstance(store, es.MemoryEventStore):
        store._rows[event_id - 1] = store._rows[event_id - 1]._replace(body=DAMAGED_BODY)
    elif isinstance(store, es.SQLiteEventStore):
        with store.transaction() as conn:
            conn.execute("UPDATE events SET body = ? WHERE id = ?", (DAMAGED_BODY, event_id))
    else:
        with store.transaction() as conn:
            conn.execute(f'UPDATE "{store.schema}".events SET body = %s::json WHERE id = %s',
                         (DAMAGED_BODY, event_id))
    with pytest.raises(es.CorruptEventError, match=f"stored event {event_id} ") as excinfo:
        store.get_next_from(event_id, limit=1)
    assert excinfo.value.event_id == event_id


class Recorder(es.EventStreamProcessor):
    """Records every item it handles (its position in the store's tracker); fails on ``fail_on``."""

    processor_name = "skip_recorder"

    def __init__(self, tracker, fail_on=None):
        super().__init__(tracker)
        self.fail_on = fail_on
        self.seen: collections.Counter = collections.Counter()

    @es.on(ItemAdded)
    def _added(self, event):
        if event.id == self.fail_on:
            raise RuntimeError(f"cannot handle {event.title}")
        self.seen[event.id] += 1


def status(store, name=Recorder.processor_name) -> es.ProcessorStatus:
    return {s.name: s for s in es.processor_statuses(store)}[name]


def failing_at(store, event_id, name=Recorder.processor_name) -> bool:
    found = {s.name: s for s in es.processor_statuses(store)}.get(name)
    return found is not None and found.state == "failing" and found.failing_event_id == event_id


def sink_items(store, first, last):
    # item_rejected between them: a filtered processor reads past those
    for n in range(first, last + 1):
        store.sink(ItemAdded(aggregate_id=f"a{n % 2}", title=f"item {n}") if n % 3 else
                   ItemRejected(aggregate_id=f"a{n % 2}"))


@pytest.mark.parametrize("cause", ["damaged", "failing handler"])
@pytest.mark.parametrize("handler", [es.ConstantRetry(0.01),
                                     es.ExponentialBackoffRetry(0.01, 0.05)],
                         ids=["constant", "backoff"])
def test_a_running_processor_stuck_at_an_event_goes_on_once_it_is_skipped(
        store, cause, handler, caplog):
    sink_items(store, 1, 8)  # 3 and 6 are item_rejected: not handled
    stuck = 5
    if cause == "damaged":
        damage(store, stuck)
    recorder = Recorder(store.tracker(), fail_on=stuck if cause == "failing handler" else None)
    caplog.set_level(logging.INFO, logger="eventsourcery")
    running = Background(recorder, store, handler)
    try:
        assert wait_until(lambda: failing_at(store, stuck))
        assert recorder.seen == {1: 1, 2: 1, 4: 1}  # everything before it, even past a damaged row
        assert recorder.last_processed_event_id == stuck - 1
        # memory: no location
        location = store.database.location if store.database is not None else None
        hint = (f"python -m eventsourcery {shlex.quote(location) if location else 'STORE'} skip "
                f"skip_recorder {stuck}")
        assert wait_until(lambda: hint in caplog.text)  # the error handler's log line says how
        es.skip_event(store, "skip_recorder", stuck)
        assert recorder.wait_for(8, timeout=WAIT)
        sink_items(store, 9, 10)
        assert recorder.wait_for(10, timeout=WAIT)
    finally:
        running.finish()
    assert running.error is None
    # never the skipped one, the others once
    assert recorder.seen == {1: 1, 2: 1, 4: 1, 7: 1, 8: 1, 10: 1}
    after = status(store)
    assert ((after.position, after.state, after.last_error, after.failing_event_id)
            == (10, "stopped", None, None))
    assert f"skipped event {stuck}" in caplog.text and f"event {stuck} was skipped" in caplog.text


def test_a_stopped_processor_that_gave_up_at_a_damaged_event_starts_after_it_once_skipped(store):
    sink_items(store, 1, 4)
    damage(store, 2)
    recorder = Recorder(store.tracker())
    with pytest.raises(es.CorruptEventError, match="stored event 2 "):
        es.run_processor(recorder, store, stop=lambda: False, error_handler=es.NoRetry())
    assert recorder.seen == {1: 1}
    stuck = status(store)
    assert (stuck.state, stuck.position, stuck.failing_event_id) == ("failing", 1, 2)
    assert "stored event 2" in stuck.last_error
    es.skip_event(store, "skip_recorder", 2)
    assert status(store).state == "stopped" and status(store).last_error is None
    es.run_processor(recorder, store, stop=lambda: recorder.last_processed_event_id >= 4,
                     error_handler=es.NoRetry())
    assert recorder.seen == {1: 1, 4: 1}


def test_a_skip_of_any_other_event_is_refused_saying_where_the_processor_is_and_changes_nothing(
        store):
    sink_items(store, 1, 6)
    recorder = Recorder(store.tracker(), fail_on=4)
    with pytest.raises(es.EventProcessingError):
        es.run_processor(recorder, store, stop=lambda: False, error_handler=es.NoRetry())
    before = status(store)
    assert (before.position, before.failing_event_id) == (3, 4)
    refusals = {5: "its position is 3, so the next event it processes is 4",  # not the next one
                3: "its position is 3, so it is past that event already",
                99: "it is not stored (the latest event is 6)",
                0: "event ids start at 1",
                -1: "event ids start at 1"}
    for event_id, message in refusals.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            es.skip_event(store, "skip_recorder", event_id)
    with pytest.raises(ValueError, match="unknown processor 'nobody'.*skip_recorder"):
        es.skip_event(store, "nobody", 4)
    with pytest.raises(TypeError):
        es.skip_event(store, "skip_recorder", "4")  # type: ignore[arg-type]
    assert status(store) == before
    assert recorder.seen == {1: 1, 2: 1}


def test_a_tracker_skips_only_from_the_position_just_before_the_event(store):
    tracker = store.tracker()
    tracker.setup("t")
    tracker.processed_event("t", 6)
    with pytest.raises(ValueError, match="next event it processes is 7"):
        tracker.skip_event("t", 9)
    assert tracker.last_processed_event_id("t") == 6
    tracker.skip_event("t", 7)
    assert tracker.last_processed_event_id("t") == 7


def test_a_projector_with_its_own_database_is_skipped_where_its_position_lives(tmp_path):
    class ItemProjector(es.Projector):
        processor_name = "item_projector"
        schema = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, title TEXT)"

        @es.on(ItemAdded)
        def _added(self, event):
            self.db.execute("INSERT INTO items VALUES (?, ?)", (event.id, event.title))

    with es.SQLiteEventStore(tmp_path / "events.db") as store:
        sink_items(store, 1, 5)
        damage(store, 4)
        projector = ItemProjector(str(tmp_path / "projection.db"))
        running = Background(projector, store)
        try:
            assert wait_until(lambda: failing_at(store, 4, "item_projector"))
            es.skip_event(store, "item_projector", 4)
            assert projector.wait_for(5, timeout=WAIT)
        finally:
            running.finish()
        assert [row[0]
                for row in projector.db.execute("SELECT id FROM items ORDER BY id")] == [1, 2, 5]
        projector.close()


def test_a_reactor_stuck_at_a_ping_emits_once_for_every_other_ping_never_for_the_skipped(store):
    from tests.test_operating_processors import CountingPonger, pongs_per_ping, sink_pings

    sink_pings(store, 1, 6)
    reactor = CountingPonger(store, fail_on=4, fail_times=10**9)
    running = Background(reactor, store)
    try:
        assert wait_until(lambda: failing_at(store, 4, "counting_ponger"))
        es.skip_event(store, "counting_ponger", 4)
        assert reactor.wait_for(6, timeout=WAIT)
        sink_pings(store, 7, 8)
        assert reactor.wait_for(store.latest_event_id(), timeout=WAIT)
    finally:
        running.finish()
    assert running.error is None
    answered = {n: 1 for n in (1, 2, 3, 5, 6, 7, 8)}
    assert reactor.effects == answered and pongs_per_ping(store) == answered


def test_a_failure_reported_at_an_event_the_position_is_already_past_is_not_recorded(store):
    """A running instance may report its failure at an event just after a skip moved past it."""
    tracker = store.tracker()
    generation = tracker.acquire("t", "1@host")
    tracker.commit_position("t", 4, generation)
    tracker.report("t", generation, "running", "RuntimeError: late", 4)
    assert (tracker.record("t").last_error, tracker.record("t").failing_event_id) == (None, None)
    tracker.report("t", generation, "running", "RuntimeError: stuck", 5)
    assert ((tracker.record("t").last_error, tracker.record("t").failing_event_id)
            == ("RuntimeError: stuck", 5))
    tracker.skip_event("t", 5)
    assert ((tracker.record("t").position, tracker.record("t").last_error,
             tracker.record("t").failing_event_id) == (5, None, None))
