"""One answer to bad input on every store (SPEC 2): the same exception for the same call on memory,
SQLite and Postgres, and nothing written. Runs on every backend through the ``store`` fixture."""

from __future__ import annotations

import datetime

import pytest

import eventsourcery as es
from tests._util import new_id
from tests.events import ItemAdded

NOT_INTS = [1.0, 1.5, "1", True, False, None, object()]


def item(aggregate_id=None, **kw):
    return ItemAdded(aggregate_id=aggregate_id or new_id(), title="t", **kw)


@pytest.fixture
def one_event(store):
    store.sink(item("agg-1"))
    return store


def assert_nothing_written(store, latest=1):
    assert store.latest_event_id() == latest
    assert len(store.get_next_from(1)) == latest


@pytest.mark.parametrize("bad", [1.0, 0.6, 1.4, "1", True, False, object()], ids=repr)
def test_expected_version_that_is_not_an_int_is_a_type_error(one_event, bad):
    with pytest.raises(TypeError, match="expected_version"):
        one_event.sink(item("agg-1"), expected_version=bad)
    assert_nothing_written(one_event)


@pytest.mark.parametrize("bad", NOT_INTS, ids=repr)
def test_limit_that_is_not_an_int_is_a_type_error(one_event, bad):
    with pytest.raises(TypeError, match="limit"):
        one_event.get_next_from(1, limit=bad)


def test_a_negative_limit_is_a_value_error_and_zero_returns_nothing(one_event):
    with pytest.raises(ValueError, match="limit"):
        one_event.get_next_from(1, limit=-1)
    assert one_event.get_next_from(1, limit=0) == []


@pytest.mark.parametrize("bad", NOT_INTS, ids=repr)
def test_an_id_that_is_not_an_int_is_a_type_error(one_event, bad):
    with pytest.raises(TypeError, match="id"):
        one_event.get_next_from(bad)
    with pytest.raises(TypeError, match="from_id"):
        list(one_event.each_by_range(bad, 10))
    with pytest.raises(TypeError, match="to_id"):
        list(one_event.each_by_range(1, bad))
    with pytest.raises(TypeError, match="from_id"):
        next(one_event.subscribe(bad, stop=lambda: False))


@pytest.mark.parametrize("huge", [2**63 - 1, 2**63, 2**100])
def test_an_id_beyond_the_stored_ones_matches_nothing_whatever_its_size(one_event, huge):
    assert one_event.get_next_from(huge) == []
    assert list(one_event.each_by_range(huge, huge * 2)) == []
    assert [e.id for e in one_event.each_by_range(1, huge)] == [1]
    assert one_event.get_next_from(1, limit=huge)[0].id == 1


@pytest.mark.parametrize("low", [0, -1, -(2**70)])
def test_an_id_below_1_reads_from_the_start(one_event, low):
    assert [e.id for e in one_event.get_next_from(low)] == [1]
    assert [e.id for e in one_event.each_by_range(low, 1)] == [1]
    assert [e.id for e in next(one_event.subscribe(low, stop=lambda: False))] == [1]


BAD_TEXT = {"nul": "a\x00b", "lone surrogate": "a\udc80b"}


@pytest.mark.parametrize("text", list(BAD_TEXT.values()), ids=list(BAD_TEXT))
@pytest.mark.parametrize("where", ["aggregate_id", "uuid", "correlation_id", "causation_id"])
def test_nul_or_a_lone_surrogate_in_an_id_is_invalid_and_writes_nothing(one_event, where, text):
    with pytest.raises(es.InvalidEventError):
        one_event.sink(ItemAdded(**{"aggregate_id": "agg-2", "title": "t", where: text}))
    assert_nothing_written(one_event)


@pytest.mark.parametrize("text", list(BAD_TEXT.values()), ids=list(BAD_TEXT))
def test_nul_or_a_lone_surrogate_in_a_type_name_is_invalid_and_writes_nothing(one_event, text):
    with pytest.raises(es.InvalidEventError):
        one_event.sink(es.Event(type=text, aggregate_id="agg-2", body={}))
    with pytest.raises(es.InvalidEventError):
        one_event.get_next_from(1, event_types=[text])
    with pytest.raises(es.InvalidEventError):
        one_event.latest_event_id([text])
    assert_nothing_written(one_event)


@pytest.mark.parametrize("text", list(BAD_TEXT.values()), ids=list(BAD_TEXT))
def test_nul_or_a_lone_surrogate_in_an_aggregate_id_read_is_invalid(one_event, text):
    with pytest.raises(es.InvalidEventError):
        one_event.get_events_for_aggregate_id(text)
    with pytest.raises(es.InvalidEventError):
        one_event.aggregate_version(text)


@pytest.mark.parametrize("bad", [12345, object(), b"bytes"], ids=repr)
@pytest.mark.parametrize("where", ["correlation_id", "causation_id"])
def test_metadata_ids_must_be_str_or_none(one_event, where, bad):
    with pytest.raises(es.InvalidEventError, match=where):
        one_event.sink(ItemAdded(**{"aggregate_id": "agg-2", "title": "t", where: bad}))
    assert_nothing_written(one_event)


def test_a_lone_surrogate_in_a_body_is_a_type_error_naming_the_field(one_event):
    with pytest.raises(TypeError, match="'title'.*item_added"):
        one_event.sink(ItemAdded(aggregate_id="agg-2", title="x\udc80"))
    assert_nothing_written(one_event)


def test_a_body_nested_deeper_than_the_bound_is_a_type_error(one_event):
    deep: list = []
    for _ in range(es.MAX_BODY_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TypeError, match="'tree'.*MAX_BODY_DEPTH"):
        one_event.sink(es.Event(type="deep", aggregate_id="agg-2", body={"tree": deep}))
    very_deep: list = []
    for _ in range(50_000):
        very_deep = [very_deep]
    with pytest.raises(TypeError, match="'tree'"):
        one_event.sink(es.Event(type="deep", aggregate_id="agg-2", body={"tree": very_deep}))
    assert_nothing_written(one_event)
    shallow: list = []
    for _ in range(es.MAX_BODY_DEPTH - 5):
        shallow = [shallow]
    one_event.sink(es.Event(type="deep", aggregate_id="agg-2", body={"tree": shallow}))
    assert one_event.get_events_for_aggregate_id("agg-2")[0].body == {"tree": shallow}


@pytest.mark.parametrize("body", [[1, 2], "text", 3], ids=repr)
def test_a_generic_body_must_be_a_json_object(one_event, body):
    event = es.Event(type="generic", aggregate_id="agg-2")
    object.__setattr__(event, "body", body)
    with pytest.raises(TypeError, match="dict"):
        one_event.sink(event)
    assert_nothing_written(one_event)


@pytest.mark.parametrize("bad", [0, -3])
def test_a_subscription_batch_size_below_1_is_a_value_error(one_event, bad):
    with pytest.raises(ValueError, match="subscription_batch_size"):
        es.configure(subscription_batch_size=bad)
    es.config.subscription_batch_size = bad  # set behind configure()'s back
    with pytest.raises(ValueError, match="subscription_batch_size"):
        next(one_event.subscribe(1, stop=lambda: False))


def test_the_stores_agree_on_a_naive_created_at(one_event):
    with pytest.raises(es.InvalidEventError, match="timezone"):
        one_event.sink(item(created_at=datetime.datetime(2030, 1, 1)))
    assert_nothing_written(one_event)


@pytest.mark.parametrize("column, value, why", [
    ("created_at", "2030-01-01T00:00:00", "time zone"),
    ("body", "[1, 2]", "not an object"),
])
def test_a_row_written_by_other_means_with_a_naive_time_or_a_non_object_body_is_corrupt(
        tmp_path, column, value, why):
    """SQLite only: the other stores cannot hold such a row (Postgres keeps timestamptz)."""
    store = es.SQLiteEventStore(tmp_path / "events.db")
    store.sink(item("agg-1"))
    store.connection.execute(f"UPDATE events SET {column} = ? WHERE id = 1", (value,))
    with pytest.raises(es.CorruptEventError, match=f"stored event 1 .*{why}"):
        store.get_next_from(1)
    store.close()
