"""Erasure (issue: a person's right to erasure): ``store.erase_aggregate`` on every store."""

from __future__ import annotations

import threading

import pytest

import eventsourcery as es
from tests._util import new_id
from tests.events import ItemAdded

SECRET = "ada.lovelace@example.com-" * 8  # distinctive bytes to look for in the database files


class Profile(es.Aggregate):
    snapshot_every = 2
    email: str | None = None

    @es.on(ItemAdded)
    def _added(self, event):
        self.email = event.title


def history(store, agg, n=3):
    repo = es.Repository(store)
    profile = repo.load(Profile, agg)
    for i in range(n):
        profile.apply_event(ItemAdded, title=f"{SECRET}{i}", metadata={"who": SECRET})
    repo.save(profile)


def test_erase_turns_the_aggregates_events_into_tombstones_and_appends_aggregate_erased(store):
    agg, other = new_id(), new_id()
    store.sink(ItemAdded(aggregate_id=other, title="kept"))
    history(store, agg)
    store.sink(ItemAdded(aggregate_id=other, title="kept too"), expected_version=1)
    before = store.get_next_from(1)
    erased = store.erase_aggregate(agg, reason="GDPR request 17")
    assert isinstance(erased, es.AggregateErased)
    assert ((erased.id, erased.version, erased.erased_events, erased.reason)
            == (6, 4, 3, "GDPR request 17"))
    after = store.get_next_from(1)
    assert [e.id for e in after] == [1, 2, 3, 4, 5, 6]  # no id changed, no hole
    for old, new in zip(before, after[:5], strict=True):
        assert (new.id, new.uuid, new.aggregate_id, new.version, new.created_at) == (
            old.id, old.uuid, old.aggregate_id, old.version, old.created_at)
        if old.aggregate_id == agg:
            assert (new.type, new.body, new.metadata) == (es.ERASED_TYPE, {}, {})
        else:
            assert new == old
    assert SECRET not in repr(store.get_next_from(1))


def test_an_erased_aggregate_cannot_be_loaded_and_its_snapshots_are_gone(store):
    agg = new_id()
    history(store, agg)
    assert store.snapshots(agg)
    store.erase_aggregate(agg)
    assert store.snapshots(agg) == []
    with pytest.raises(es.AggregateErasedError, match=agg):
        es.Repository(store).load(Profile, agg)


def test_erasing_again_returns_the_same_event_and_an_unknown_aggregate_erases_nothing(store):
    agg = new_id()
    history(store, agg)
    first = store.erase_aggregate(agg)
    assert store.erase_aggregate(agg) == first
    assert store.latest_event_id() == 4
    assert store.erase_aggregate(new_id()) is None
    assert store.latest_event_id() == 4


def test_an_erasure_in_a_transaction_that_rolls_back_leaves_everything_as_it_was(store):
    agg = new_id()
    history(store, agg)
    before, snapshots = store.get_next_from(1), store.snapshots(agg)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.erase_aggregate(agg)
            raise RuntimeError("changed my mind")
    assert store.get_next_from(1) == before
    assert store.snapshots(agg) == snapshots
    assert es.Repository(store).load(Profile, agg).email == f"{SECRET}2"


class Emails(es.Projector):
    schema = "CREATE TABLE IF NOT EXISTS emails (profile_id TEXT, email TEXT)"

    @es.on(ItemAdded)
    def _added(self, event):
        self.db.execute(f"INSERT INTO emails VALUES ({self.placeholder}, {self.placeholder})",
                        (event.aggregate_id, event.title))

    @es.on(es.AggregateErased)
    def _erased(self, event):
        self.db.execute(f"DELETE FROM emails WHERE profile_id = {self.placeholder}",
                        (event.aggregate_id,))


def test_processors_learn_of_the_erasure_and_never_stumble_on_the_tombstones(store, tmp_path):
    agg, other = new_id(), new_id()
    history(store, agg)
    store.sink(ItemAdded(aggregate_id=other, title="bob@example.com"))
    # caught up before the erasure: forgets on AggregateErased
    early = Emails(str(tmp_path / "early.db"))
    early.setup()
    early.process_batch(store.get_next_from(1))
    store.erase_aggregate(agg)
    late = Emails(str(tmp_path / "late.db"))  # first run after it: never sees the data
    late.setup()
    for projector in (early, late):
        stop = threading.Event()
        for batch in store.subscribe(projector.last_processed_event_id + 1,
                                     projector.processes_event_types, stop=stop):
            projector.process_batch(batch)
            if projector.last_processed_event_id >= store.latest_event_id():
                stop.set()
        assert (projector.db.execute("SELECT profile_id, email FROM emails").fetchall()
                == [(other, "bob@example.com")])
        projector.close()
    # a catch-all reader meets the tombstones
    everything = next(store.subscribe(1, stop=lambda: False))
    assert [e.id for e in everything] == [1, 2, 3, 4, 5]
    assert ([e.type for e in everything] == [es.ERASED_TYPE] * 3
            + ["item_added", "eventsourcery.aggregate_erased"])


def test_sqlite_erasure_leaves_no_copy_in_the_database_files(tmp_path):
    path = tmp_path / "people.db"
    store = es.SQLiteEventStore(path)
    agg = new_id()
    history(store, agg, n=20)
    store.sink(ItemAdded(aggregate_id=new_id(), title="kept"))
    wal = tmp_path / "people.db-wal"

    def files_hold_the_secret():
        data = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        return SECRET.encode() in data

    assert files_hold_the_secret()
    store.erase_aggregate(agg)
    assert not files_hold_the_secret()
    store.close()
    assert not files_hold_the_secret()
    with es.SQLiteEventStore(path) as again:
        assert [e.title for e in again.get_next_from(1) if e.type == "item_added"] == ["kept"]
