"""A store opened with ``read_only=True`` (as the command line's read commands open one) reads
and never writes, on SQLite and Postgres alike; ``create=False`` opens only an existing store."""

from __future__ import annotations

import pytest

import eventsourcery as es
from tests.events import Numbered


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "events.db"
        with es.SQLiteEventStore(path) as store:
            store.sink(Numbered(aggregate_id="a", e=1))
        return str(path)
    from tests.pg_support import postgres_store, store_url

    with postgres_store() as store:
        store.sink(Numbered(aggregate_id="a", e=1))
        return store_url(store.schema)


def test_a_read_only_store_reads_and_refuses_every_write(store_url):
    with es.open_store(store_url, read_only=True) as store:
        assert [e.e for e in store.get_next_from(1)] == [1]
        with pytest.raises(es.StoreError):
            store.sink(Numbered(aggregate_id="a", e=2))
        with pytest.raises(es.StoreError):
            store.tracker().processed_event("p", 1)
    with es.open_store(store_url) as store:
        assert [e.e for e in store.get_next_from(1)] == [1]  # nothing was written
        assert store.tracker().positions() == {}


def test_create_false_opens_only_an_existing_sqlite_store(tmp_path):
    missing = tmp_path / "missing.db"
    for read_only in (False, True):
        with pytest.raises(es.StoreError, match="does not exist"):
            es.open_store(str(missing), create=False, read_only=read_only)
        with pytest.raises(es.StoreError, match="does not exist"):
            es.SQLiteEventStore(missing, create=False, read_only=read_only)
    assert not missing.exists()
