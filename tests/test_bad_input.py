"""Bad files, bad rows and bad events: clear errors, and never a half-written batch."""

from __future__ import annotations

import datetime
import os
import sqlite3

import pytest

import eventsourcery as es
from tests._util import new_id
from tests.events import ItemAdded, Numbered, Opaque, OpaqueHappened


def open_and_use(path):
    """Open a store on path and read from it (a store may open its file lazily)."""
    s = es.SQLiteEventStore(path)
    try:
        s.latest_event_id()
        s.get_next_from(1)
    finally:
        s.close()


def assert_store_error_naming(excinfo, path):
    assert isinstance(excinfo.value, es.StoreError)
    assert str(path) in str(excinfo.value), str(excinfo.value)


# --- files that are not usable event stores ------------------------------------------------


def test_non_database_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("This is not an SQLite database, just some text.\n" * 100)
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(path)
    assert_store_error_naming(excinfo, path)
    # and the file was left alone
    assert path.read_text().startswith("This is not an SQLite database")


def test_database_file_with_a_garbage_header(tmp_path):
    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as s:
        s.sink(ItemAdded(aggregate_id=new_id(), title="t"))
    with open(path, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 25)  # the first 100 bytes: the SQLite header
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(path)
    assert_store_error_naming(excinfo, path)


def test_database_with_corrupt_pages(tmp_path):
    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as s:
        agg = new_id()
        s.sink([Numbered(aggregate_id=agg, e=n) for n in range(500)])
    page_size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    size = os.path.getsize(path)
    assert size > 3 * page_size
    with open(path, "r+b") as f:  # everything but page 1 (the schema) becomes garbage
        f.seek(page_size)
        f.write(b"\xaa" * (size - page_size))
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(path)
    assert_store_error_naming(excinfo, path)


def test_another_applications_database(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (whatever TEXT)")
    conn.execute("INSERT INTO events VALUES ('x')")
    conn.commit()
    conn.close()
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(path)
    assert_store_error_naming(excinfo, path)


def test_a_directory(tmp_path):
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(tmp_path)
    assert_store_error_naming(excinfo, tmp_path)


def test_a_path_under_a_regular_file(tmp_path):
    # fails even for root, unlike a read-only directory
    afile = tmp_path / "afile"
    afile.write_text("x")
    path = afile / "events.db"
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(path)
    assert_store_error_naming(excinfo, path)


def test_a_path_in_a_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "events.db"
    with pytest.raises(es.StoreError) as excinfo:
        open_and_use(path)
    assert_store_error_naming(excinfo, path)


def test_bad_store_url():
    with pytest.raises(es.StoreError) as excinfo:
        es.open_store("ftp://example.invalid/events")
    assert "ftp://example.invalid/events" in str(excinfo.value)


def test_empty_store_url():
    with pytest.raises(es.StoreError):
        es.open_store("")


def test_store_errors_are_es_errors():
    assert issubclass(es.StoreError, es.Error)
    assert issubclass(es.CorruptEventError, es.StoreError)


# --- rows made invalid behind the library's back ---------------------------------------------


@pytest.fixture
def twelve_events(db_path):
    agg = new_id()
    with es.SQLiteEventStore(db_path) as s:
        s.sink([ItemAdded(aggregate_id=agg, title=f"t{n}") for n in range(12)])
    return db_path, agg


def spoil(path, sql, params=()):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, params)
    conn.close()


@pytest.mark.parametrize(
    "column,value",
    [
        ("body", "{not json"),
        ("body", "[1, 2, 3]"),
        ("body", "{}"),  # the required field 'title' is missing
        ("body", '"just a string"'),
        ("created_at", "not a timestamp"),
    ],
    ids=["invalid-json", "json-array", "missing-field", "json-string", "bad-created_at"],
)
def test_corrupt_row_is_a_corrupt_event_error_naming_its_id(twelve_events, column, value):
    path, agg = twelve_events
    spoil(path, f"UPDATE events SET {column} = ? WHERE id = 11", (value,))
    with es.SQLiteEventStore(path) as s:
        # the good rows still read
        assert [e.id for e in s.get_next_from(1, limit=10)] == list(range(1, 11))
        for read in (
            lambda: s.get_next_from(1),
            lambda: s.get_next_from(11),
            lambda: s.get_events_for_aggregate_id(agg),
            lambda: list(s.each_by_range(1, 12)),
        ):
            with pytest.raises(es.CorruptEventError) as excinfo:
                read()
            assert "11" in str(excinfo.value), str(excinfo.value)
        assert s.get_next_from(12)[0].title == "t11"
        assert s.latest_event_id() == 12


def test_extra_keys_in_a_stored_body_are_ignored(twelve_events):
    path, agg = twelve_events
    spoil(path, "UPDATE events SET body = ? WHERE id = 3", ('{"title": "t2", "removed_field": 1}',))
    with es.SQLiteEventStore(path) as s:
        e = s.get_next_from(3)[0]
        assert e.title == "t2"
        assert e.body == {"title": "t2"}


# --- bad events: nothing written ----------------------------------------------------------------


@pytest.mark.parametrize("aggregate_id", ["", None], ids=["empty", "missing"])
def test_empty_aggregate_id(store, aggregate_id):
    kwargs = {} if aggregate_id is None else {"aggregate_id": aggregate_id}
    with pytest.raises(es.InvalidEventError):
        store.sink(ItemAdded(title="t", **kwargs))
    with pytest.raises(es.InvalidEventError):
        store.sink([ItemAdded(title="t", **kwargs) for _ in range(3)], expected_version=0)
    assert store.latest_event_id() == 0
    assert store.get_next_from(1) == []


def test_empty_aggregate_id_is_also_a_value_error(store):
    with pytest.raises(ValueError):
        store.sink(ItemAdded(aggregate_id="", title="t"))


def test_non_string_type_name_at_class_creation():
    with pytest.raises(TypeError):

        class NumberTyped(es.Event, type=42):
            pass

    with pytest.raises(TypeError):

        class EmptyTyped(es.Event, type=""):
            pass


def test_non_string_type_name_of_a_generic_event(store):
    with pytest.raises((TypeError, es.InvalidEventError)):
        store.sink(es.Event(type=42, body={}, aggregate_id=new_id()))  # type: ignore[arg-type]
    with pytest.raises((TypeError, es.InvalidEventError)):
        store.sink(es.Event(body={}, aggregate_id=new_id()))  # no type at all
    assert store.latest_event_id() == 0


def test_not_an_event(store):
    with pytest.raises((TypeError, es.InvalidEventError)):
        store.sink({"type": "item_added", "aggregate_id": new_id()})  # type: ignore[arg-type]
    with pytest.raises((TypeError, es.InvalidEventError)):
        store.sink([ItemAdded(aggregate_id="a", title="t"),
                    "not an event"])  # type: ignore[list-item]
    assert store.latest_event_id() == 0


def test_naive_created_at_is_invalid(store):
    naive = datetime.datetime(2020, 1, 1, 12, 0, 0)
    with pytest.raises(es.InvalidEventError):
        store.sink(ItemAdded(aggregate_id=new_id(), title="t", created_at=naive))
    assert store.latest_event_id() == 0


def test_created_at_that_is_not_a_datetime_is_invalid(store):
    with pytest.raises(es.InvalidEventError):
        store.sink(ItemAdded(aggregate_id=new_id(), title="t", created_at="2020-01-01T00:00:00Z"))
    assert store.latest_event_id() == 0


def test_batch_whose_third_event_is_unserialisable_writes_none(store):
    agg = new_id()
    batch = [
        ItemAdded(aggregate_id=agg, title="one"),
        ItemAdded(aggregate_id=agg, title="two"),
        OpaqueHappened(aggregate_id=agg, thing=Opaque()),
        ItemAdded(aggregate_id=agg, title="four"),
    ]
    with pytest.raises(TypeError) as excinfo:
        store.sink(batch)
    assert "opaque_happened" in str(excinfo.value) and "thing" in str(excinfo.value)
    assert store.latest_event_id() == 0
    assert store.get_events_for_aggregate_id(agg) == []
    # the aggregate is still new
    store.sink(batch[:2], expected_version=0)
    assert [e.version for e in store.get_events_for_aggregate_id(agg)] == [1, 2]


def test_batch_whose_third_event_has_a_stored_uuid_writes_none(store):
    agg = new_id()
    (first,) = store.sink(ItemAdded(aggregate_id=agg, title="one"))
    batch = [ItemAdded(aggregate_id=agg, title=t) for t in ("a", "b")] + [
        ItemAdded(aggregate_id=agg, title="c", uuid=first.uuid)
    ]
    with pytest.raises(es.DuplicateEventError):
        store.sink(batch)
    assert store.latest_event_id() == 1


def test_batch_with_a_uuid_twice_writes_none(store):
    agg = new_id()
    one = ItemAdded(aggregate_id=agg, title="one")
    with pytest.raises(es.Error):
        store.sink([one, ItemAdded(aggregate_id=agg, title="two"), one])
    assert store.latest_event_id() == 0


def test_batch_whose_third_event_is_for_another_aggregate_writes_none(store):
    agg = new_id()
    batch = [ItemAdded(aggregate_id=agg, title="a"), ItemAdded(aggregate_id=agg, title="b"),
             ItemAdded(aggregate_id=new_id(), title="c")]
    with pytest.raises(es.AtomicWriteToMultipleAggregatesNotSupported):
        store.sink(batch)
    assert store.latest_event_id() == 0


def test_non_finite_float_is_a_type_error(store):
    with pytest.raises((TypeError, ValueError)):
        store.sink(Numbered(aggregate_id=new_id(), e=float("nan")))
    assert store.latest_event_id() == 0
