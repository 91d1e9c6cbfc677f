"""Application metadata on events (SPEC 1): round trips on every store, validation, emit_event's
copy, and stores of the schema before metadata upgraded in place."""

from __future__ import annotations

import math
import sqlite3

import pytest

import eventsourcery as es
from tests._util import new_id
from tests.events import ItemAdded

META = {"user": "ada", "request": "r-17", "tenant_id": 42, "ratio": 0.5, "admin": True,
        "note": None, "é": "ü"}


def test_metadata_round_trips_on_every_store(store):
    agg = new_id()
    stored = store.sink([ItemAdded(aggregate_id=agg, title="a", metadata=META),
                         ItemAdded(aggregate_id=agg, title="b")])
    assert stored[0].metadata == META and stored[1].metadata == {}
    read = store.get_events_for_aggregate_id(agg)
    assert read[0].metadata == META and type(read[0].metadata) is dict
    assert read[1].metadata == {}
    assert read == stored
    assert store.get_next_from(1)[0].metadata == META
    generic = store.sink(es.Event(type="unregistered.thing", aggregate_id=new_id(), body={},
                                  metadata={"k": "v"}))
    assert store.get_next_from(generic[0].id)[0].metadata == {"k": "v"}


def test_events_with_metadata_stay_hashable_and_compare_by_value():
    a = ItemAdded(aggregate_id="x", title="t", uuid="u-1", metadata={"k": 1})
    b = ItemAdded(aggregate_id="x", title="t", uuid="u-1", metadata={"k": 1})
    c = ItemAdded(aggregate_id="x", title="t", uuid="u-1", metadata={"k": 2})
    assert a == b and a != c
    assert len({a, b}) == 1 and hash(a) == hash(b)
    assert ItemAdded(aggregate_id="x", title="t").metadata == {}
    assert ItemAdded(aggregate_id="x", title="t", metadata=None).metadata == {}
    assert "metadata" not in a.body


def test_a_field_named_metadata_is_reserved():
    with pytest.raises(TypeError, match="metadata"):
        class Clashing(es.Event):  # noqa: F841
            metadata: str


@pytest.mark.parametrize("metadata, error, match", [
    ({1: "x"}, TypeError, "keys"),
    ({"k": [1]}, TypeError, "JSON scalar"),
    ({"k": {"a": 1}}, TypeError, "JSON scalar"),
    ({"k": math.nan}, TypeError, "NaN"),
    ({"k": math.inf}, TypeError, "infinity"),
    ({"k\x00": "v"}, es.InvalidEventError, "NUL"),
    ({"k": "v\x00"}, es.InvalidEventError, "NUL"),
    ({"k": "\udc80"}, es.InvalidEventError, "surrogate"),
], ids=["int key", "list", "dict", "nan", "inf", "nul key", "nul value", "surrogate"])
def test_bad_metadata_is_refused_and_nothing_is_written(store, metadata, error, match):
    with pytest.raises(error, match=match):
        store.sink([ItemAdded(aggregate_id="m", title="ok"),
                    ItemAdded(aggregate_id="m", title="t", metadata=metadata)])
    assert store.latest_event_id() == 0


class Asked(es.Event, type="metatest.asked"):
    pass


class Answered(es.Event, type="metatest.answered"):
    pass


class Answerer(es.Reactor):
    emits_events = (Answered,)

    @es.on(Asked)
    def _asked(self, event):
        self.emit_event(Answered(aggregate_id=event.aggregate_id,
                                 metadata={"tenant": "own", "by": "answerer"}))


def test_emit_event_copies_the_causes_metadata_under_its_own(store):
    store.sink(Asked(aggregate_id="q", metadata={"tenant": "acme", "user": "ada"}))
    reactor = Answerer(store)
    reactor.setup()
    reactor.process_batch(store.get_next_from(1))
    (answer,) = store.get_next_from(2)
    assert answer.metadata == {"tenant": "own", "user": "ada", "by": "answerer"}


V1_SQLITE = """
CREATE TABLE eventsourcery_schema (version INTEGER NOT NULL);
INSERT INTO eventsourcery_schema VALUES (1);
CREATE TABLE events (id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, aggregate_id TEXT NOT NULL,
    type TEXT NOT NULL, version INTEGER NOT NULL, created_at TEXT NOT NULL, correlation_id TEXT,
    causation_id TEXT, body TEXT NOT NULL, UNIQUE (aggregate_id, version));
CREATE INDEX events_type_id ON events (type, id);
CREATE TABLE eventsourcery_trackers (name TEXT PRIMARY KEY, position INTEGER NOT NULL DEFAULT 0);
INSERT INTO events (uuid, aggregate_id, type, version, created_at, body)
    VALUES ('u-old', 'old', 'item_added', 1, '2030-01-01T00:00:00+00:00', '{"title": "from v1"}');
"""


def test_a_sqlite_store_of_schema_1_is_upgraded_in_place(tmp_path):
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SQLITE)
    with es.SQLiteEventStore(path) as store:
        (old,) = store.get_events_for_aggregate_id("old")
        assert old.title == "from v1" and old.metadata == {}
        store.sink(ItemAdded(aggregate_id="old", title="new", metadata={"k": "v"}),
                   expected_version=1)
        assert store.get_events_for_aggregate_id("old")[1].metadata == {"k": "v"}
    with sqlite3.connect(path) as conn:
        assert (conn.execute("SELECT version FROM eventsourcery_schema").fetchall()
                == [(es.SQLITE_SCHEMA_VERSION,)])
    with es.SQLiteEventStore(path) as store:  # opening again changes nothing
        assert [e.title for e in store.get_events_for_aggregate_id("old")] == ["from v1", "new"]


def test_a_postgres_store_of_schema_2_is_upgraded_in_place():
    from tests import pg_support

    url, schema = pg_support.require_postgres(), pg_support.new_schema()
    import eventsourcery_pg as es_pg

    with es_pg.PostgresEventStore(url, schema=schema) as store:
        store.sink(ItemAdded(aggregate_id="old", title="before"))
    with pg_support.connect() as admin:  # make it look like a store of schema version 2
        admin.execute(f'ALTER TABLE "{schema}".events DROP COLUMN metadata')
        admin.execute(f'DROP FUNCTION "{schema}".eventsourcery_write_events')
        admin.execute(f'UPDATE "{schema}".eventsourcery_schema SET version = 2')
    with es_pg.PostgresEventStore(url, schema=schema) as store:
        assert store.get_events_for_aggregate_id("old")[0].metadata == {}
        store.sink(ItemAdded(aggregate_id="old", title="after", metadata={"k": 1}),
                   expected_version=1)
        assert [e.metadata for e in store.get_events_for_aggregate_id("old")] == [{}, {"k": 1}]
