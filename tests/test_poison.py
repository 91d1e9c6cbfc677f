"""No poison events (SPEC 2): ``sink`` refuses a generic event of a registered type whose body that
class cannot load (InvalidEventError naming the type and field, nothing written), and a reader that
meets a damaged row written by other means raises CorruptEventError naming its id. Every backend."""

from __future__ import annotations

import sqlite3

import pytest

import eventsourcery as es
from tests.conftest import STORE_FACTORIES
from tests.events import ItemAdded


def test_generic_event_missing_a_required_field_of_its_registered_class_is_refused(store):
    store.sink(ItemAdded(aggregate_id="agg", title="first"))
    with pytest.raises(es.InvalidEventError, match=r"'item_added'.*'title'"):
        store.sink(es.Event(type="item_added", aggregate_id="agg", body={"name": "no title"}))
    assert [e.title for e in store.get_next_from(1)] == ["first"]
    assert [e.title for e in store.get_events_for_aggregate_id("agg")] == ["first"]


def test_generic_event_with_a_field_its_registered_class_cannot_decode_is_refused(store):
    with pytest.raises(es.InvalidEventError, match=r"'timed'.*'time'"):
        store.sink([es.Event(type="timed", aggregate_id="agg",
                             body={"time": "2024-01-01T00:00:00+00:00"}),
                    es.Event(type="timed", aggregate_id="agg", body={"time": "not a time"})])
    assert store.latest_event_id() == 0


def test_generic_event_its_registered_class_can_load_is_stored_as_that_class(store):
    store.sink(es.Event(type="item_added", aggregate_id="agg", body={"title": "loaded"}))
    [read] = store.get_next_from(1)
    assert isinstance(read, ItemAdded) and read.title == "loaded"


def test_generic_event_of_an_unregistered_type_is_stored_whatever_its_body(store):
    store.sink(es.Event(type="nobody.registered.this", aggregate_id="agg",
                        body={"anything": [1, 2]}))
    assert store.get_next_from(1)[0].body == {"anything": [1, 2]}


def _damage_sqlite(store, body: str) -> int:
    with store.transaction() as conn:
        conn.execute("INSERT INTO events (uuid, aggregate_id, type, version, created_at, body) "
                     "VALUES ('u-damaged', 'agg', 'item_added', 2, '2024-01-01T00:00:00+00:00', ?)",
                     (body,))
    return store.latest_event_id()


def _damage_postgres(store, body: str) -> int:
    with store.transaction() as conn:
        conn.execute(f'INSERT INTO "{store.schema}".events (id, uuid, aggregate_id, type, version, '
                     'created_at, body) ' "VALUES (2, 'u-damaged', 'agg', 'item_added', 2, now(), "
                                          "%s::json)", (body,))
    return 2


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request, tmp_path):
    store = STORE_FACTORIES[request.param](tmp_path / "e.db")
    yield request.param, store
    store.close()


@pytest.mark.parametrize("body", ['{"name": "no title"}', '{"title": 1', '[1, 2]'])
def test_a_damaged_row_written_by_other_means_is_a_corrupt_event_error_naming_its_id(
        sql_store, body):
    store_kind, store = sql_store
    store.sink(ItemAdded(aggregate_id="agg", title="fine"))
    if store_kind == "sqlite":
        damaged = _damage_sqlite(store, body)
    else:
        if body == '{"title": 1':
            body = '"a string"'  # a json column holds only JSON
        damaged = _damage_postgres(store, body)
    message = f"stored event {damaged} "
    with pytest.raises(es.CorruptEventError, match=message):
        store.get_next_from(1)
    with pytest.raises(es.CorruptEventError, match=message):
        store.get_events_for_aggregate_id("agg")
    with pytest.raises(es.CorruptEventError, match=message):
        for _ in store.subscribe(1, stop=lambda: False):
            pass
    # the rows before it still read
    assert [e.title for e in store.get_next_from(1, limit=1)] == ["fine"]


def test_sqlite_text_that_is_not_utf8_is_a_corrupt_event_error(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "e.db")
    store.sink(ItemAdded(aggregate_id="agg", title="fine"))
    with store.transaction() as conn:
        conn.execute("UPDATE events SET body = CAST(x'7b22746974' || x'ff' || x'227d' AS TEXT)")
    with pytest.raises(es.CorruptEventError) as excinfo:
        store.get_next_from(1)
    assert isinstance(excinfo.value.__cause__, sqlite3.Error)
    store.close()
