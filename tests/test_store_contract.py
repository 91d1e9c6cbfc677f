"""The event-store contract (SPEC section 2), run against every store.

Ports the 32 examples of Ruby EventSourcery's shared 'an event store' suite
(numbered R1..R32 below) and adds what the Python contract promises on top:
stored copies returned by sink, type filters given as classes, each_by_range
bounds, subscribe, body round trips, upcasting and input validation.
Only the public API and the design-note hooks are used, so a new store passes
by being added to STORE_FACTORIES in conftest.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import threading
import time
import typing
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import eventsourcery as es
from tests._util import WAIT, Consumer, assert_same_value, everything_in, ids, new_id, wait_until
from tests.events import (
    Address,
    BillingDetailsProvided,
    Color,
    Customer,
    ItemAdded,
    ItemRejected,
    Level,
    Money,
    MoneyReceived,
    Numbered,
    Opaque,
    OpaqueHappened,
    TestEvent2,
    Timed,
    Type1,
    Type2,
    UserSignedUp,
    everything,
)
from tests.events_postponed import PostponedHappened

UTC = datetime.timezone.utc


def item(aggregate_id=None, title="an item", **kw):
    return ItemAdded(aggregate_id=aggregate_id or new_id(), title=title, **kw)


# =================================================================================
# sink  (R1-R12)
# =================================================================================


def test_r1_sink_assigns_auto_incrementing_ids(store):
    store.sink(item())
    store.sink(item())
    store.sink(item())
    assert ids(store.get_next_from(1)) == [1, 2, 3]


def test_r2_sink_keeps_the_given_uuid(store):
    u = str(uuid.uuid4())
    store.sink(item(uuid=u))
    (event,) = store.get_next_from(1)
    assert event.uuid == u


def test_r3_sink_returns_the_stored_copies(store):
    agg = new_id()
    given_events = [item(agg, "a"), item(agg, "b")]
    stored = store.sink(given_events)
    assert isinstance(stored, list)
    assert [type(e) for e in stored] == [ItemAdded, ItemAdded]
    assert ids(stored) == [1, 2]
    assert [e.version for e in stored] == [1, 2]
    assert all(isinstance(e.created_at, datetime.datetime) for e in stored)
    assert [e.uuid for e in stored] == [e.uuid for e in given_events]
    assert [e.title for e in stored] == ["a", "b"]
    # the stored copies are what a reader gets back
    assert stored == store.get_next_from(1)
    # the events passed in are left untouched
    assert [(e.id, e.version, e.created_at) for e in given_events] == [(None, None, None)] * 2


def test_r3_sink_of_a_single_event_returns_a_list_of_one(store):
    event = item()
    stored = store.sink(event)
    assert isinstance(stored, list) and len(stored) == 1
    assert stored[0].id == 1 and stored[0].version == 1 and stored[0].uuid == event.uuid


def test_r4_sink_serializes_the_event_body(store):
    t = datetime.datetime.now(UTC)
    store.sink(Timed(aggregate_id=new_id(), time=t))
    (event,) = store.get_next_from(1)
    assert type(event) is Timed
    assert_same_value(event.time, t)
    body = event.body
    assert json.loads(json.dumps(body)) == body  # JSON-ready
    assert set(body) == {"time"}


def test_r5_sink_saves_the_causation_id(store):
    cause = str(uuid.uuid4())
    store.sink(item(causation_id=cause))
    assert store.get_next_from(1)[0].causation_id == cause


def test_r6_sink_saves_the_correlation_id(store):
    corr = str(uuid.uuid4())
    store.sink(item(correlation_id=corr))
    assert store.get_next_from(1)[0].correlation_id == corr


def test_r5_r6_ids_default_to_none(store):
    store.sink(item())
    (event,) = store.get_next_from(1)
    assert event.causation_id is None and event.correlation_id is None


def test_r7_sink_writes_multiple_events(store):
    agg = new_id()
    store.sink([Numbered(aggregate_id=agg, e=n) for n in (1, 2, 3)])
    events = store.get_next_from(1)
    assert ids(events) == [1, 2, 3]
    assert [e.body for e in events] == [{"e": 1}, {"e": 2}, {"e": 3}]
    assert [e.version for e in events] == [1, 2, 3]
    assert {e.aggregate_id for e in events} == {agg}


def test_r8_sink_sets_the_aggregate_version_across_sinks(store):
    agg = new_id()
    store.sink([item(agg), item(agg)])
    store.sink([item(agg), item(agg)])
    events = store.get_next_from(1)
    assert ids(events) == [1, 2, 3, 4]
    assert [e.version for e in events] == [1, 2, 3, 4]


def test_r9_saves_an_event_of_a_new_aggregate(store):
    agg = new_id()
    store.sink(TestEvent2(aggregate_id=agg, my="data"))
    (event,) = store.get_next_from(1)
    assert event.id == 1
    assert event.aggregate_id == agg
    assert event.type == "test_event2"
    assert type(event) is TestEvent2
    assert event.body == {"my": "data"}


def test_r10_saves_an_event_of_an_existing_aggregate(store):
    agg = new_id()
    store.sink(item(agg))
    store.sink(TestEvent2(aggregate_id=agg, my="data"))
    events = store.get_next_from(1)
    assert ids(events) == [1, 2]
    assert events[1].type == "test_event2"
    assert events[1].body == {"my": "data"}
    assert events[1].version == 2


def test_r11_created_at_in_an_atomic_batch(store):
    agg = new_id()
    given_time = datetime.datetime(2016, 10, 14, 0, 0, 0, 646191, tzinfo=UTC)
    store.sink([item(agg, created_at=None), item(agg, created_at=given_time)])
    first, second = store.get_next_from(1)
    assert isinstance(first.created_at, datetime.datetime)
    assert first.created_at.utcoffset() == datetime.timedelta(0)
    assert isinstance(second.created_at, datetime.datetime)
    assert second.created_at == given_time
    assert second.created_at.microsecond == 646191


def test_r12_sink_rejects_events_of_several_aggregates_and_writes_nothing(store):
    with pytest.raises(es.AtomicWriteToMultipleAggregatesNotSupported):
        store.sink([item(new_id()), item(new_id())])
    assert store.latest_event_id() == 0
    assert store.get_next_from(1) == []


def test_r12_sink_rejects_an_empty_list(store):
    with pytest.raises(es.AtomicWriteToMultipleAggregatesNotSupported):
        store.sink([])
    assert store.latest_event_id() == 0


def test_sink_accepts_a_uuid_aggregate_id_and_stores_its_string(store):
    agg = uuid.uuid4()
    stored = store.sink(item(agg))
    assert stored[0].aggregate_id == str(agg)
    (event,) = store.get_next_from(1)
    assert event.aggregate_id == str(agg)
    assert isinstance(event.aggregate_id, str)


def test_sink_keeps_the_batch_order(store):
    agg = new_id()
    store.sink([Numbered(aggregate_id=agg, e=n) for n in range(20)])
    assert [e.e for e in store.get_events_for_aggregate_id(agg)] == list(range(20))


def test_ids_are_global_across_aggregates_and_versions_per_aggregate(store):
    a, b = new_id(), new_id()
    store.sink([item(a), item(a)])
    store.sink(item(b))
    store.sink(item(a))
    store.sink([item(b), item(b)])
    events = store.get_next_from(1)
    assert ids(events) == [1, 2, 3, 4, 5, 6]
    assert [(e.aggregate_id, e.version) for e in events] == [
        (a, 1), (a, 2), (b, 1), (a, 3), (b, 2), (b, 3)
    ]


# =================================================================================
# get_next_from  (R13-R15)
# =================================================================================


def test_r13_get_next_from_gets_a_subset_of_events(store):
    store.sink(item())
    store.sink(item())
    assert ids(store.get_next_from(1, limit=1)) == [1]
    assert ids(store.get_next_from(2, limit=1)) == [2]
    assert ids(store.get_next_from(1, limit=2)) == [1, 2]


def test_get_next_from_is_inclusive_and_empty_past_the_end(store):
    for _ in range(5):
        store.sink(item())
    assert ids(store.get_next_from(3)) == [3, 4, 5]
    assert ids(store.get_next_from(0)) == [1, 2, 3, 4, 5]
    assert store.get_next_from(6) == []
    assert store.get_next_from(100) == []


def test_get_next_from_limit_applies_after_the_type_filter(store):
    agg = new_id()
    store.sink([item(agg), UserSignedUp(aggregate_id=agg), item(agg),
                UserSignedUp(aggregate_id=agg), UserSignedUp(aggregate_id=agg)])
    assert ids(store.get_next_from(1, event_types=["user_signed_up"], limit=2)) == [2, 4]
    assert ids(store.get_next_from(3, event_types=["user_signed_up"], limit=2)) == [4, 5]


def test_get_next_from_default_limit_is_1000(store):
    agg = new_id()
    store.sink([Numbered(aggregate_id=agg, e=n) for n in range(1005)])
    assert ids(store.get_next_from(1)) == list(range(1, 1001))


def test_r14_get_next_from_returns_the_event_as_expected(store):
    agg = new_id()
    store.sink(ItemAdded(aggregate_id=agg, title="Buy milk"))
    (event,) = store.get_next_from(1)
    assert type(event) is ItemAdded
    assert event.aggregate_id == agg
    assert event.type == "item_added"
    assert event.body == {"title": "Buy milk"}
    assert event.title == "Buy milk"
    assert isinstance(event.created_at, datetime.datetime)
    assert event.created_at.tzinfo is not None


def _r15_stream(store):
    agg = new_id()
    store.sink(UserSignedUp(aggregate_id=agg))
    store.sink(item(agg))
    store.sink(item(agg))
    store.sink(ItemRejected(aggregate_id=agg))
    store.sink(UserSignedUp(aggregate_id=agg))


def test_r15_get_next_from_filters_by_event_type_name(store):
    _r15_stream(store)
    assert ids(store.get_next_from(1, event_types=["user_signed_up"])) == [1, 5]


def test_get_next_from_filters_by_event_class(store):
    _r15_stream(store)
    assert ids(store.get_next_from(1, event_types=[UserSignedUp])) == [1, 5]
    assert ids(store.get_next_from(1, event_types=[ItemAdded, ItemRejected])) == [2, 3, 4]
    assert ids(store.get_next_from(1, event_types=[ItemAdded, "item_rejected"])) == [2, 3, 4]
    assert ids(store.get_next_from(1, event_types=("user_signed_up",))) == [1, 5]


def test_get_next_from_with_an_empty_or_unknown_type_list_finds_nothing(store):
    _r15_stream(store)
    assert store.get_next_from(1, event_types=["no_such_type"]) == []
    assert store.get_next_from(1, event_types=[]) == []


# =================================================================================
# latest_event_id  (R16-R18)
# =================================================================================


def test_r16_latest_event_id(store):
    store.sink(item())
    store.sink(item())
    assert store.latest_event_id() == 2


def test_r17_latest_event_id_with_no_events_is_0(store):
    assert store.latest_event_id() == 0


def test_r18_latest_event_id_with_type_filter(store):
    agg = new_id()
    store.sink(Type1(aggregate_id=agg))
    store.sink(Type1(aggregate_id=agg))
    store.sink(Type2(aggregate_id=agg))
    assert store.latest_event_id(event_types=["type1"]) == 2
    assert store.latest_event_id(event_types=["type2"]) == 3
    assert store.latest_event_id(event_types=["type1", "type2"]) == 3
    assert store.latest_event_id(event_types=[Type1]) == 2
    assert store.latest_event_id(event_types=[Type2, Type1]) == 3
    assert store.latest_event_id(event_types=["item_added"]) == 0


# =================================================================================
# get_events_for_aggregate_id  (R19-R20)
# =================================================================================


@pytest.mark.parametrize("as_type", [str, uuid.UUID], ids=["str", "uuid.UUID"])
def test_r19_r20_get_events_for_aggregate_id(store, as_type):
    agg = uuid.uuid4()
    store.sink(ItemAdded(aggregate_id=str(agg), title="first"))
    store.sink(ItemAdded(aggregate_id=agg, title="second"))  # given as a UUID
    store.sink(item(new_id()))
    events = store.get_events_for_aggregate_id(as_type(str(agg)))
    assert ids(events) == [1, 2]
    first = events[0]
    assert first.aggregate_id == str(agg)
    assert first.type == "item_added"
    assert first.body == {"title": "first"}
    assert isinstance(first.created_at, datetime.datetime)
    assert [e.title for e in events] == ["first", "second"]


def test_get_events_for_aggregate_id_in_version_order_and_empty_for_unknown(store):
    a, b = new_id(), new_id()
    store.sink(Numbered(aggregate_id=a, e=1))
    store.sink(Numbered(aggregate_id=b, e=1))
    store.sink([Numbered(aggregate_id=a, e=2), Numbered(aggregate_id=a, e=3)])
    events = store.get_events_for_aggregate_id(a)
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.e for e in events] == [1, 2, 3]
    assert ids(events) == [1, 3, 4]
    assert store.get_events_for_aggregate_id(new_id()) == []


# =================================================================================
# each_by_range  (R21-R24)
# =================================================================================


@pytest.fixture
def twenty_one(store):
    agg = new_id()
    store.sink([item(agg, f"t{n}") for n in range(21)])
    return store


def test_r21_each_by_range_below_the_latest_id(twenty_one):
    events = list(twenty_one.each_by_range(1, 20))
    assert ids(events) == list(range(1, 21))


def test_r22_each_by_range_up_to_the_latest_id(twenty_one):
    assert ids(twenty_one.each_by_range(1, 21)) == list(range(1, 22))


def test_r23_each_by_range_past_the_latest_id_terminates(twenty_one):
    assert ids(twenty_one.each_by_range(1, 25)) == list(range(1, 22))


def test_r24_each_by_range_filters_by_event_type(twenty_one):
    assert list(twenty_one.each_by_range(1, 21, event_types=["user_signed_up"])) == []
    assert len(list(twenty_one.each_by_range(1, 21, event_types=["item_added"]))) == 21
    assert len(list(twenty_one.each_by_range(1, 21, event_types=[ItemAdded]))) == 21


def test_each_by_range_inner_range(twenty_one):
    assert ids(twenty_one.each_by_range(5, 7)) == [5, 6, 7]
    assert ids(twenty_one.each_by_range(21, 21)) == [21]
    assert list(twenty_one.each_by_range(22, 30)) == []


def test_each_by_range_never_goes_past_to_id_when_the_filter_excludes_it(store):
    # the Ruby quirk: with a filter that excludes to_id it ran on to the end
    agg = new_id()
    store.sink([item(agg), item(agg), UserSignedUp(aggregate_id=agg), item(agg), item(agg)])
    assert ids(store.each_by_range(1, 3, event_types=["item_added"])) == [1, 2]
    assert ids(store.each_by_range(1, 3, event_types=[ItemAdded])) == [1, 2]
    assert ids(store.each_by_range(3, 3, event_types=[ItemAdded])) == []


def test_each_by_range_pages_beyond_one_page(store):
    agg = new_id()
    store.sink([Numbered(aggregate_id=agg, e=n) for n in range(2500)])
    store.sink([UserSignedUp(aggregate_id=agg)])
    assert ids(store.each_by_range(1, 2100)) == list(range(1, 2101))
    assert ids(store.each_by_range(1, 2501, event_types=[Numbered])) == list(range(1, 2501))
    assert ids(store.each_by_range(1, 10_000, event_types=[UserSignedUp])) == [2501]


# =================================================================================
# optimistic concurrency  (R25-R32)
# =================================================================================


def save_event(store, agg, expected_version=None):
    return store.sink(BillingDetailsProvided(aggregate_id=agg), expected_version=expected_version)


def last_event(store):
    return store.get_next_from(0)[-1]


def test_r25_new_aggregate_expected_version_0_saves(store):
    agg = new_id()
    save_event(store, agg, expected_version=0)
    assert last_event(store).version == 1


def test_r26_new_aggregate_expected_version_1_conflicts(store):
    agg = new_id()
    with pytest.raises(es.ConcurrencyError):
        save_event(store, agg, expected_version=1)
    assert store.latest_event_id() == 0


def test_r27_new_aggregate_no_expected_version(store):
    save_event(store, new_id())
    assert last_event(store).version == 1


def test_r28_existing_aggregate_expected_version_0_conflicts(store):
    agg = new_id()
    save_event(store, agg)
    with pytest.raises(es.ConcurrencyError):
        save_event(store, agg, expected_version=0)
    assert store.latest_event_id() == 1


def test_r29_existing_aggregate_correct_expected_version_1(store):
    # the Ruby example forgot to pass expected_version; this one passes it
    agg = new_id()
    save_event(store, agg)
    save_event(store, agg, expected_version=1)
    assert last_event(store).version == 2


def test_r30_existing_aggregate_no_expected_version(store):
    agg = new_id()
    save_event(store, agg)
    save_event(store, agg)
    assert last_event(store).version == 2


def test_stale_and_future_expected_versions_conflict(store):
    agg = new_id()
    save_event(store, agg)
    save_event(store, agg)
    for wrong in (0, 1, 3, 10):
        with pytest.raises(es.ConcurrencyError):
            save_event(store, agg, expected_version=wrong)
    save_event(store, agg, expected_version=2)
    assert [e.version for e in store.get_events_for_aggregate_id(agg)] == [1, 2, 3]


def test_concurrency_error_writes_nothing_of_the_batch(store):
    agg, other = new_id(), new_id()
    store.sink([item(agg), item(agg)])
    store.sink(item(other))
    with pytest.raises(es.ConcurrencyError):
        store.sink([item(agg, "x"), item(agg, "y"), item(agg, "z")], expected_version=1)
    assert store.latest_event_id() == 3
    assert [e.title for e in store.get_events_for_aggregate_id(agg)] == ["an item", "an item"]
    # and the store is still usable, with the next ids following on
    stored = store.sink([item(agg, "x"), item(agg, "y")], expected_version=2)
    assert ids(stored) == [4, 5]
    assert [e.version for e in stored] == [3, 4]


def test_batch_with_expected_version_gets_consecutive_versions(store):
    agg = new_id()
    stored = store.sink([item(agg), item(agg), item(agg)], expected_version=0)
    assert [e.version for e in stored] == [1, 2, 3]
    stored = store.sink([item(agg), item(agg)], expected_version=3)
    assert [e.version for e in stored] == [4, 5]


def test_r31_created_at_can_be_overridden_to_the_microsecond(store):
    t = datetime.datetime(2016, 10, 14, 0, 0, 0, 646191, tzinfo=UTC)
    stored = store.sink(item(created_at=t))
    assert stored[0].created_at == t
    assert last_event(store).created_at == t
    assert last_event(store).created_at.microsecond == 646191


def test_created_at_with_another_offset_keeps_the_instant_in_utc(store):
    t = datetime.datetime(2020, 5, 17, 12, 30, 1, 7,
                          tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    store.sink(item(created_at=t))
    read = last_event(store).created_at
    assert read == t
    assert read.utcoffset() == datetime.timedelta(0)


def test_r32_created_at_is_set_when_not_given(store):
    before = datetime.datetime.now(UTC)
    stored = store.sink(item())
    after = datetime.datetime.now(UTC)
    read = last_event(store).created_at
    assert isinstance(read, datetime.datetime)
    assert read.utcoffset() == datetime.timedelta(0)
    assert read == stored[0].created_at
    # "now", in UTC (a second of slack for a store that truncates its clock)
    assert before - datetime.timedelta(seconds=1) <= read <= after + datetime.timedelta(seconds=1)


def test_duplicate_uuid_is_a_concurrency_error_and_writes_nothing(store):
    agg = new_id()
    first = item(agg)
    store.sink(first)
    with pytest.raises(es.ConcurrencyError) as excinfo:
        store.sink([item(agg), item(agg, uuid=first.uuid)])
    assert isinstance(excinfo.value, es.DuplicateEventError)
    assert store.latest_event_id() == 1


# =================================================================================
# subscribe
# =================================================================================


def test_subscribe_delivers_catch_up_then_live_events(store):
    agg = new_id()
    store.sink([item(agg, f"old{n}") for n in range(3)])
    caught_up = threading.Event()

    def on_batch(c):
        if len(c.events) >= 3:
            caught_up.set()
        if len(c.events) >= 6:
            c.stop.set()

    consumer = Consumer(store, 1, on_batch=on_batch).start()
    try:
        assert caught_up.wait(WAIT), "catch-up batch never arrived"
        assert consumer.seen_ids == [1, 2, 3]
        # written from this thread while the consumer thread is iterating
        for n in range(3):
            store.sink(item(new_id(), f"live{n}"))
        assert consumer.finish(), "subscribe did not return after stop was set"
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.returned
    assert consumer.seen_ids == [1, 2, 3, 4, 5, 6]
    assert [e.title for e in consumer.events] == ["old0", "old1", "old2", "live0", "live1", "live2"]
    assert all(type(e) is ItemAdded for e in consumer.events)
    assert all(consumer.batches), "an empty batch was yielded"


def test_subscribe_starts_at_from_id_inclusive(store):
    agg = new_id()
    store.sink([item(agg) for _ in range(5)])
    consumer = Consumer(store, 3, on_batch=lambda c: len(c.events) >= 3 and c.stop.set()).start()
    try:
        assert consumer.finish()
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.seen_ids == [3, 4, 5]


@pytest.mark.parametrize("types", [["user_signed_up"], [UserSignedUp]], ids=["names", "classes"])
def test_subscribe_filters_by_type(store, types):
    _r15_stream(store)  # 1 U, 2 I, 3 I, 4 R, 5 U
    got_two = threading.Event()

    def on_batch(c):
        if len(c.events) >= 2:
            got_two.set()
        if len(c.events) >= 4:
            c.stop.set()

    consumer = Consumer(store, 1, event_types=types, on_batch=on_batch).start()
    try:
        assert got_two.wait(WAIT)
        agg = new_id()
        store.sink(item(agg))  # 6
        store.sink(UserSignedUp(aggregate_id=agg))  # 7
        store.sink(ItemRejected(aggregate_id=agg))  # 8
        store.sink(UserSignedUp(aggregate_id=agg))  # 9
        assert consumer.finish()
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.seen_ids == [1, 5, 7, 9]
    assert {e.type for e in consumer.events} == {"user_signed_up"}


def test_subscribe_batches_are_at_most_subscription_batch_size(store):
    es.configure(subscription_batch_size=3)
    assert es.config.subscription_batch_size == 3
    agg = new_id()
    store.sink([Numbered(aggregate_id=agg, e=n) for n in range(10)])
    first_ten = threading.Event()

    def on_batch(c):
        if len(c.events) >= 10:
            first_ten.set()
        if len(c.events) >= 17:
            c.stop.set()

    consumer = Consumer(store, 1, on_batch=on_batch).start()
    try:
        assert first_ten.wait(WAIT)
        store.sink([Numbered(aggregate_id=agg, e=n) for n in range(10, 17)])
        assert consumer.finish()
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.seen_ids == list(range(1, 18))
    sizes = [len(b) for b in consumer.batches]
    assert all(1 <= n <= 3 for n in sizes), sizes
    assert len(sizes) >= 6  # 17 events cannot come in fewer batches of <= 3


def test_subscription_batch_size_defaults_to_1000():
    assert es.config.subscription_batch_size == 1000


def test_subscribe_drains_a_backlog_in_full_batches(store):
    es.configure(subscription_batch_size=4)
    agg = new_id()
    store.sink([Numbered(aggregate_id=agg, e=n) for n in range(10)])
    consumer = Consumer(store, 1, on_batch=lambda c: len(c.events) >= 10 and c.stop.set()).start()
    try:
        assert consumer.finish()
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert [len(b) for b in consumer.batches] == [4, 4, 2]


def test_subscribe_returns_when_stop_is_set_while_waiting(store):
    store.sink(item())
    got_one = threading.Event()
    consumer = Consumer(store, 1, on_batch=lambda c: got_one.set()).start()
    try:
        assert got_one.wait(WAIT)
        time.sleep(0.05)  # let it go back to waiting for new events
        assert consumer.thread.is_alive()  # nothing told it to stop yet
        consumer.stop.set()
        assert consumer.finish(), "subscribe kept waiting after stop was set"
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.returned
    assert consumer.seen_ids == [1]


def test_subscribe_on_an_empty_store_returns_when_stop_is_set(store):
    consumer = Consumer(store, 1).start()
    try:
        time.sleep(0.05)
        assert consumer.thread.is_alive()
        consumer.stop.set()
        assert consumer.finish()
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.batches == []


def test_subscribe_with_a_callable_stop(store):
    store.sink(item())
    flag = []
    got_one = threading.Event()
    consumer = Consumer(store, 1, stop=lambda: bool(flag), on_batch=lambda c: got_one.set()).start()
    try:
        assert got_one.wait(WAIT)
        store.sink(item())
        assert wait_until(lambda: len(consumer.events) == 2)
        flag.append(True)
        assert consumer.finish(), "subscribe kept going after the stop callable returned True"
    finally:
        flag.append(True)
    assert consumer.error is None, repr(consumer.error)
    assert consumer.returned
    assert consumer.seen_ids == [1, 2]


def test_subscribe_with_a_callable_stop_that_turns_true_after_a_batch(store):
    # the stop callable is consulted between batches, without any outside help
    store.sink(item())
    holder = []
    consumer = Consumer(store, 1, stop=lambda: bool(holder and holder[0].events))
    holder.append(consumer)
    consumer.start()
    try:
        assert consumer.finish(), "subscribe did not consult the stop callable"
    finally:
        holder.clear()
        holder.append(type("Stopped", (), {"events": [1]})())
    assert consumer.error is None, repr(consumer.error)
    assert consumer.seen_ids == [1]


def test_subscribe_many_writer_threads_nothing_skipped_or_repeated(store):
    n_threads, per_thread = 4, 25
    total = n_threads * per_thread
    consumer = Consumer(store, 1,
                        on_batch=lambda c: len(c.events) >= total and c.stop.set()).start()
    errors = []

    def write(n):
        try:
            agg = new_id()
            for k in range(per_thread):
                store.sink(Numbered(aggregate_id=agg, e=k), expected_version=k)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(n_threads)]
    try:
        for w in writers:
            w.start()
        for w in writers:
            w.join(WAIT)
        assert errors == []
        assert consumer.finish()
    finally:
        consumer.stop.set()
    assert consumer.error is None, repr(consumer.error)
    assert consumer.seen_ids == list(range(1, total + 1))
    assert consumer.seen_ids == ids(everything_in(store))


# =================================================================================
# body round trips (SPEC section 1), through every store
# =================================================================================


class _Shade(enum.Enum):
    LIGHT = "light"
    DARK = "dark"


@dataclasses.dataclass(frozen=True)
class _Point:
    x: int
    y: float


ROUND_TRIP_CASES = [
    # (case id, annotation, value)
    ("str", str, "héllo ✓ \"q\" \\ \n \u0000 \U0001f600"),
    ("str_empty", str, ""),
    ("int", int, 42),
    ("int_negative", int, -7),
    ("int_big", int, 2**80 + 1),
    ("float", float, 0.1 + 0.2),
    ("float_whole", float, 2.0),
    ("float_negative_tiny", float, -5e-324),
    ("bool_true", bool, True),
    ("bool_false", bool, False),
    ("none", None, None),
    ("list_int", list[int], [3, 1, 2]),
    ("list_str", list[str], ["a", "", "c"]),
    ("list_empty", list[int], []),
    ("list_bare", list, [1, "a", None, True, 1.5]),
    ("tuple_variadic", tuple[int, ...], (1, 2, 3)),
    ("tuple_fixed", tuple[str, int, bool], ("a", 1, False)),
    ("tuple_empty", tuple[str, ...], ()),
    ("dict_str_int", dict[str, int], {"b": 2, "a": 1}),
    ("dict_bare", dict, {"k": [1, 2], "n": None, "d": {"x": "y"}}),
    ("dict_empty", dict[str, str], {}),
    ("datetime_utc", datetime.datetime,
     datetime.datetime(2016, 10, 14, 0, 0, 0, 646191, tzinfo=UTC)),
    ("datetime_offset", datetime.datetime,
     datetime.datetime(2001, 2, 3, 4, 5, 6, 7,
                       tzinfo=datetime.timezone(datetime.timedelta(hours=-3, minutes=-30)))),
    ("date", datetime.date, datetime.date(2024, 2, 29)),
    ("time", datetime.time, datetime.time(23, 59, 58, 999999)),
    ("decimal", decimal.Decimal, decimal.Decimal("12345678901234567890.000000000000000001")),
    ("decimal_exponent", decimal.Decimal, decimal.Decimal("-1.5E-30")),
    ("uuid", uuid.UUID, uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")),
    ("enum_str", Color, Color.RED),
    ("enum_int", Level, Level.HIGH),
    ("enum_local", _Shade, _Shade.DARK),
    ("dataclass", _Point, _Point(1, 2.5)),
    ("dataclass_nested", Customer,
     Customer("Bo", Address("1 A St", "B-town", None), datetime.date(2000, 1, 1),
              decimal.Decimal("3.10"),
              Address("9 Z St", "Y-ville", "999"))),
    ("optional_none", int | None, None),
    ("optional_value", int | None, 5),
    ("optional_datetime", datetime.datetime | None, datetime.datetime(2030, 1, 1, tzinfo=UTC)),
    # UP045
    ("optional_date_typing", typing.Optional[datetime.date], datetime.date(1970, 1, 1)),  # noqa
    ("optional_decimal", decimal.Decimal | None, decimal.Decimal("0.1")),
    ("optional_uuid", uuid.UUID | None, uuid.UUID(int=1)),
    ("optional_enum", Color | None, Color.BLUE),
    ("optional_dataclass", Address | None, Address("x", "y", "z")),
    ("optional_dataclass_none", Address | None, None),
    ("optional_list", list[int] | None, [1]),
    ("custom_registered", Money, Money(decimal.Decimal("9.99"), "USD")),
    ("custom_registered_optional", Money | None, Money(decimal.Decimal("0.01"), "JPY")),
]


def _round_trip_class(case_id, annotation):
    name = "RoundTrip_" + case_id
    namespace = {"__annotations__": {"value": annotation}, "__module__": __name__,
                 "__qualname__": name}
    return type(name, (es.Event,), namespace)


@pytest.mark.parametrize("case_id,annotation,value", ROUND_TRIP_CASES,
                         ids=[c[0] for c in ROUND_TRIP_CASES])
def test_round_trip_of_annotated_type(store, case_id, annotation, value):
    cls = _round_trip_class(case_id, annotation)
    agg = new_id()
    event = cls(aggregate_id=agg, value=value)
    json.dumps(event.body)  # the body is JSON-ready
    stored = store.sink(event)
    for read in (store.get_next_from(1)[0], store.get_events_for_aggregate_id(agg)[0]):
        assert type(read) is cls
        assert_same_value(read.value, value, f"{case_id}.value")
        assert read == stored[0]
        assert read.body == event.body


def test_round_trip_of_every_type_in_one_event(store):
    agg = new_id()
    event = everything(agg)
    stored = store.sink([event, everything(agg, maybe_int=7, maybe_date=None, maybe_address=None)])
    read = store.get_events_for_aggregate_id(agg)
    assert read == stored
    for field in dataclasses.fields(event):
        if field.name in ("id", "version", "created_at"):
            continue
        assert_same_value(getattr(read[0], field.name), getattr(event, field.name), field.name)
    assert read[1].maybe_int == 7 and read[1].maybe_date is None and read[1].maybe_address is None


def test_round_trip_with_postponed_annotations(store):
    agg = new_id()
    event = PostponedHappened(
        aggregate_id=agg,
        when=datetime.datetime(2021, 3, 4, 5, 6, 7, 8, tzinfo=UTC),
        day=datetime.date(2021, 3, 4),
        amount=decimal.Decimal("1.23"),
        ref=uuid.UUID(int=99),
        color=Color.RED,
        address=Address("s", "c"),
        tags=("a", "b"),
        money=Money(decimal.Decimal("5"), "GBP"),
    )
    store.sink(event)
    (read,) = store.get_events_for_aggregate_id(agg)
    assert type(read) is PostponedHappened
    for name in ("when", "day", "amount", "ref", "color", "address", "tags", "money"):
        assert_same_value(getattr(read, name), getattr(event, name), name)


def test_custom_type_registered_with_body_serializer(store):
    agg = new_id()
    event = MoneyReceived(aggregate_id=agg, amount=Money(decimal.Decimal("10.50"), "AUD"))
    assert json.loads(json.dumps(event.body)) == event.body
    assert event.body["amount"] == "AUD 10.50"  # what our to_json made of it
    store.sink(event)
    (read,) = store.get_next_from(1)
    assert_same_value(read.amount, Money(decimal.Decimal("10.50"), "AUD"))
    assert read.refund is None


def test_metadata_round_trips(store):
    agg = new_id()
    event = item(
        agg,
        uuid=str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
        causation_id=str(uuid.uuid4()),
        created_at=datetime.datetime(2019, 1, 1, 1, 1, 1, 1, tzinfo=UTC),
    )
    store.sink(event)
    (read,) = store.get_next_from(1)
    for name in ("uuid", "aggregate_id", "correlation_id", "causation_id", "created_at", "title"):
        assert_same_value(getattr(read, name), getattr(event, name), name)
    assert read.id == 1 and read.version == 1


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    s=st.text(),
    i=st.integers(),
    f=st.floats(allow_nan=False, allow_infinity=False),
    dec=st.decimals(allow_nan=False, allow_infinity=False),
    dt=st.datetimes(timezones=st.just(UTC)),
    li=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=5),
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    mapping=st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=3),
)
def test_round_trip_property(store, s, i, f, dec, dt, li, tags, mapping):
    agg = new_id()
    event = _PropertyHappened(aggregate_id=agg, s=s, i=i, f=f, dec=dec, dt=dt, li=li, tags=tags,
                              mapping=mapping)
    stored = store.sink(event)
    (read,) = store.get_events_for_aggregate_id(agg)
    assert read == stored[0]
    for name in ("s", "i", "f", "dec", "dt", "li", "tags", "mapping"):
        assert_same_value(getattr(read, name), getattr(event, name), name)


class _PropertyHappened(es.Event):
    s: str
    i: int
    f: float
    dec: decimal.Decimal
    dt: datetime.datetime
    li: list[int]
    tags: tuple[str, ...]
    mapping: dict[str, int]


def test_unknown_stored_type_loads_as_a_plain_event(store):
    agg = new_id()
    body = {"a": 1, "b": [1, "two", None], "c": {"d": True}}
    stored = store.sink(es.Event(type="never_registered.thing", body=body, aggregate_id=agg))
    for read in (store.get_next_from(1)[0], store.get_events_for_aggregate_id(agg)[0]):
        assert type(read) is es.Event
        assert read.type == "never_registered.thing"
        assert read.body == body
        assert read.aggregate_id == agg
        assert read.id == 1 and read.version == 1
        assert read.uuid == stored[0].uuid
    assert ids(store.get_next_from(1, event_types=["never_registered.thing"])) == [1]


def _upcast_class(generation):
    """Two generations of one event class (same module and qualname: the second replaces)."""
    if generation == 1:

        class Renamed(es.Event, type="upcast_test.renamed"):
            name: str

    else:

        class Renamed(es.Event, type="upcast_test.renamed"):
            full_name: str
            shouted: bool = False

            @classmethod
            def upcast(cls, body):
                body = dict(body)
                if "name" in body:  # the old shape
                    body["full_name"] = body.pop("name")
                return body

    return Renamed


def test_upcast_is_applied_on_read(store):
    old_cls = _upcast_class(1)
    agg = new_id()
    store.sink(old_cls(aggregate_id=agg, name="Ann Old"))
    new_cls = _upcast_class(2)
    assert new_cls is not old_cls
    assert es.event_class("upcast_test.renamed") is new_cls
    store.sink(new_cls(aggregate_id=agg, full_name="Bo New", shouted=True))
    for events in (store.get_next_from(1), store.get_events_for_aggregate_id(agg),
                   list(store.each_by_range(1, 2))):
        assert [type(e) for e in events] == [new_cls, new_cls]
        assert [(e.full_name, e.shouted) for e in events] == [("Ann Old", False), ("Bo New", True)]


def test_unknown_event_type_stays_generic_even_with_registered_classes_around(store):
    store.sink(es.Event(type="item_addedx", body={"title": "t"}, aggregate_id=new_id()))
    (read,) = store.get_next_from(1)
    assert type(read) is es.Event


# =================================================================================
# invalid input: nothing written
# =================================================================================


def test_unserialisable_value_is_a_type_error_naming_type_and_field(store):
    event = OpaqueHappened(aggregate_id=new_id(), thing=Opaque())
    with pytest.raises(TypeError) as excinfo:
        store.sink(event)
    message = str(excinfo.value)
    assert "opaque_happened" in message
    assert "thing" in message
    assert store.latest_event_id() == 0


def test_unserialisable_value_in_a_batch_writes_nothing(store):
    agg = new_id()
    store.sink(item(agg))
    batch = [item(agg), item(agg), OpaqueHappened(aggregate_id=agg, thing=Opaque())]
    with pytest.raises(TypeError):
        store.sink(batch, expected_version=1)
    assert store.latest_event_id() == 1
    assert len(store.get_events_for_aggregate_id(agg)) == 1
    # the aggregate's version did not move either
    store.sink(item(agg), expected_version=1)


def test_value_of_the_wrong_type_is_a_type_error(store):
    # a set is not JSON, and not the annotated type (str) either
    event = ItemAdded(aggregate_id=new_id(), title={1, 2})
    with pytest.raises(TypeError) as excinfo:
        store.sink(event)
    assert "item_added" in str(excinfo.value)
    assert "title" in str(excinfo.value)
    assert store.latest_event_id() == 0


@pytest.mark.parametrize("aggregate_id", ["", None], ids=["empty", "missing"])
def test_empty_aggregate_id_is_invalid_and_writes_nothing(store, aggregate_id):
    event = (ItemAdded(title="t") if aggregate_id is None
             else ItemAdded(aggregate_id=aggregate_id, title="t"))
    with pytest.raises(es.InvalidEventError):
        store.sink(event)
    with pytest.raises(es.InvalidEventError):
        store.sink([event, event], expected_version=0)
    assert store.latest_event_id() == 0


def test_invalid_event_error_is_a_value_error():
    assert issubclass(es.InvalidEventError, es.Error)
    assert issubclass(es.InvalidEventError, ValueError)
    assert issubclass(es.DuplicateEventError, es.ConcurrencyError)
    assert issubclass(es.CorruptEventError, es.StoreError)


# =================================================================================
# design-note hooks: transaction(), context manager, open_store
# =================================================================================


def test_transaction_commits_several_sinks_together(store):
    a, b = new_id(), new_id()
    with store.transaction():
        store.sink(item(a))
        store.sink(item(b))
    assert ids(store.get_next_from(1)) == [1, 2]


def test_transaction_rolls_back_every_sink_on_error(store):
    store.sink(item())
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction():
            store.sink(item(new_id()))
            with store.transaction():  # nested use joins the outer one
                store.sink(item(new_id()))
            raise RuntimeError("boom")
    assert store.latest_event_id() == 1
    stored = store.sink(item())
    assert stored[0].id == 2


def test_transaction_rolls_back_on_a_concurrency_error(store):
    agg = new_id()
    store.sink(item(agg))
    with pytest.raises(es.ConcurrencyError):
        with store.transaction():
            store.sink(item(new_id()))
            store.sink(item(agg), expected_version=0)
    assert store.latest_event_id() == 1


def test_store_is_a_context_manager(store_kind, tmp_path):
    from tests.conftest import STORE_FACTORIES

    with STORE_FACTORIES[store_kind](tmp_path / "cm.db") as s:
        s.sink(item())
        assert s.latest_event_id() == 1


def test_close_twice_is_harmless(make_store):
    s = make_store()
    s.sink(item())
    s.close()
    s.close()


def test_open_store_urls(tmp_path):
    with es.open_store("memory:") as s:
        assert isinstance(s, es.MemoryEventStore)
        s.sink(item())
        assert s.latest_event_id() == 1
    path = tmp_path / "a.db"
    with es.open_store(str(path)) as s:
        assert isinstance(s, es.SQLiteEventStore)
        s.sink(item())
    with es.open_store(f"sqlite:///{path}") as s:
        assert isinstance(s, es.SQLiteEventStore)
        assert s.latest_event_id() == 1  # the same file


def test_sqlite_data_survives_reopening(db_path):
    with es.SQLiteEventStore(db_path) as s:
        stored = s.sink([everything(new_id())])
    with es.SQLiteEventStore(db_path) as s:
        assert s.get_next_from(1) == stored
        assert s.sink(item())[0].id == 2


def test_two_sqlite_store_objects_on_one_file_see_each_other(db_path):
    with es.SQLiteEventStore(db_path) as a, es.SQLiteEventStore(db_path) as b:
        agg = new_id()
        a.sink(item(agg), expected_version=0)
        with pytest.raises(es.ConcurrencyError):
            b.sink(item(agg), expected_version=0)
        b.sink(item(agg), expected_version=1)
        assert ids(a.get_events_for_aggregate_id(agg)) == [1, 2]


# =================================================================================
# model-based: random sinks against a list model
# =================================================================================


def test_store_matches_a_model(make_store):
    aggregates = [new_id() for _ in range(3)]

    class StoreModel(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.store = make_store()
            self.log = []  # (aggregate_id, version, e)
            self.counter = 0

        def version(self, agg):
            return sum(1 for a, _, _ in self.log if a == agg)

        @rule(agg=st.sampled_from(aggregates), n=st.integers(1, 3),
              how=st.sampled_from(["none", "right", "wrong"]))
        def sink(self, agg, n, how):
            current = self.version(agg)
            expected = {"none": None, "right": current, "wrong": current + 1}[how]
            events = []
            for _ in range(n):
                self.counter += 1
                events.append(Numbered(aggregate_id=agg, e=self.counter))
            if how == "wrong":
                with pytest.raises(es.ConcurrencyError):
                    self.store.sink(events, expected_version=expected)
                return
            stored = self.store.sink(events, expected_version=expected)
            first_id = len(self.log) + 1
            for k, e in enumerate(events):
                self.log.append((agg, current + k + 1, e.e))
            assert ids(stored) == list(range(first_id, first_id + n))

        @rule(from_id=st.integers(0, 40), limit=st.integers(1, 50))
        def read_all(self, from_id, limit):
            got = [(e.aggregate_id, e.version, e.e)
                   for e in self.store.get_next_from(from_id, limit=limit)]
            start = max(from_id, 1) - 1
            assert got == self.log[start:start + limit]

        @rule(agg=st.sampled_from(aggregates))
        def read_aggregate(self, agg):
            got = [(e.aggregate_id, e.version, e.e)
                   for e in self.store.get_events_for_aggregate_id(agg)]
            assert got == [x for x in self.log if x[0] == agg]

        @rule(lo=st.integers(1, 30), span=st.integers(0, 10))
        def read_range(self, lo, span):
            got = [(e.aggregate_id, e.version, e.e)
                   for e in self.store.each_by_range(lo, lo + span)]
            assert got == self.log[lo - 1:lo + span]

        @invariant()
        def latest(self):
            assert self.store.latest_event_id() == len(self.log)

    run_state_machine_as_test(
        StoreModel,
        settings=settings(max_examples=25, stateful_step_count=15, deadline=None, derandomize=True,
                          database=None),
    )


def test_a_caught_inner_failure_rolls_back_only_the_inner_part(store):
    outer, inner = new_id(), new_id()
    with store.transaction():
        store.sink(item(outer))
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.sink(item(inner))
                raise RuntimeError("inner")
        store.sink(item(outer), expected_version=1)
    assert [(e.aggregate_id, e.version) for e in store.get_next_from(1)] == [(outer, 1), (outer, 2)]
    assert store.get_events_for_aggregate_id(inner) == []
    assert store.aggregate_version(inner) == 0
    assert store.sink(item(inner), expected_version=0)[0].id == 3  # the inner write left no trace


# =================================================================================
# partial reads: from_version / to_version, aggregate_version
# =================================================================================


@pytest.fixture
def five_versions(store):
    agg = new_id()
    store.sink(item(new_id()))  # another aggregate's event first, so ids and versions differ
    store.sink([item(agg, title=f"v{v}") for v in range(1, 4)])
    store.sink([item(agg, title=f"v{v}") for v in range(4, 6)], expected_version=3)
    return agg


@pytest.mark.parametrize("bounds, expected", [
    ({}, [1, 2, 3, 4, 5]),
    ({"from_version": 3}, [3, 4, 5]),
    ({"to_version": 2}, [1, 2]),
    ({"from_version": 2, "to_version": 4}, [2, 3, 4]),
    ({"from_version": 4, "to_version": 4}, [4]),
    ({"from_version": 4, "to_version": 3}, []),
    ({"from_version": 6}, []),
    ({"from_version": 0}, [1, 2, 3, 4, 5]),
    ({"from_version": -5, "to_version": 1}, [1]),
    ({"to_version": 0}, []),
    ({"from_version": 2**70}, []),
    ({"to_version": 2**70}, [1, 2, 3, 4, 5]),
    ({"to_version": None}, [1, 2, 3, 4, 5]),
])
def test_get_events_for_aggregate_id_reads_a_range_of_versions(
        store, five_versions, bounds, expected):
    events = store.get_events_for_aggregate_id(five_versions, **bounds)
    assert [e.version for e in events] == expected
    assert [e.title for e in events] == [f"v{v}" for v in expected]


@pytest.mark.parametrize("bound, bad", [
    *(("from_version", bad) for bad in (1.0, "2", True, None, object())),
    # to_version=None: no upper bound
    *(("to_version", bad) for bad in (1.0, "2", False, object())),
], ids=repr)
def test_a_version_bound_that_is_not_an_int_is_a_type_error(store, five_versions, bound, bad):
    with pytest.raises(TypeError, match=bound):
        store.get_events_for_aggregate_id(five_versions, **{bound: bad})


def test_aggregate_version_is_the_highest_stored_version(store, five_versions):
    assert store.aggregate_version(five_versions) == 5
    assert store.aggregate_version(new_id()) == 0
    assert store.aggregate_version(uuid.UUID(int=7)) == 0
    store.sink(item(five_versions), expected_version=5)
    assert store.aggregate_version(five_versions) == 6
