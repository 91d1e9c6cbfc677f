"""Snapshots (SPEC 3): a cache of aggregate state that makes loads start late, never changes what a
load returns, and never reaches subscribers. Runs on every store through the ``store`` fixture."""

from __future__ import annotations

import datetime
import decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventsourcery as es
from tests._util import new_id


class Deposited(es.Event, type="snaptest.deposited"):
    amount: decimal.Decimal
    on: datetime.date


class Account(es.Aggregate):
    snapshot_every = 3
    balance: decimal.Decimal = decimal.Decimal(0)
    history: tuple = ()
    last_on: datetime.date | None = None
    count: int = 0

    @es.on(Deposited)
    def _deposited(self, event):
        self.balance += event.amount
        self.history = (*self.history[-3:], str(event.amount))
        self.last_on = event.on
        self.count += 1

    def deposit(self, amount, on=datetime.date(2030, 1, 1)):
        self.apply_event(Deposited, amount=decimal.Decimal(amount), on=on)


def state(aggregate):
    return {k: v for k, v in vars(aggregate).items() if k != "changes"}


def full_replay(store, cls, aggregate_id):
    return cls(aggregate_id, store.get_events_for_aggregate_id(aggregate_id))


def deposit_and_save(repo, aggregate_id, amounts):
    account = repo.load(Account, aggregate_id)
    for amount in amounts:
        account.deposit(amount)
    repo.save(account)
    return account


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(saves=st.lists(st.lists(st.integers(1, 99), min_size=1, max_size=7), min_size=1, max_size=8),
       every=st.integers(1, 6))
def test_a_load_from_a_snapshot_equals_a_full_replay(store, saves, every):
    class Snapshotted(Account):
        snapshot_every = every

    repo = es.Repository(store)
    aggregate_id = new_id()
    for amounts in saves:
        account = repo.load(Snapshotted, aggregate_id)
        assert state(account) == state(full_replay(store, Snapshotted, aggregate_id))
        for amount in amounts:
            account.deposit(amount)
        repo.save(account)
    loaded = repo.load(Snapshotted, aggregate_id)
    assert state(loaded) == state(full_replay(store, Snapshotted, aggregate_id))
    assert loaded.version == sum(len(a) for a in saves) and loaded.changes == []
    assert type(loaded.balance) is decimal.Decimal and type(loaded.history) is tuple
    snapshots = store.snapshots(aggregate_id)
    total = sum(len(a) for a in saves)
    if total >= every:
        assert (len(snapshots) == 1 and snapshots[0].version <= total
                and snapshots[0].version >= every)


def test_a_snapshot_is_taken_when_a_save_reaches_or_passes_a_multiple(store):
    repo = es.Repository(store)
    agg = new_id()
    deposit_and_save(repo, agg, [1, 2])
    assert store.snapshots(agg) == []
    deposit_and_save(repo, agg, [3, 4])  # 2 -> 4 passes 3
    (snap,) = store.snapshots(agg)
    assert ((snap.version, snap.snapshot_version, snap.aggregate_type)
            == (4, 1, f"{__name__}.Account"))
    assert snap.last_event_uuid == store.get_events_for_aggregate_id(agg)[-1].uuid
    deposit_and_save(repo, agg, [5])  # 4 -> 5: no multiple of 3 reached
    assert store.snapshots(agg)[0].version == 4
    deposit_and_save(repo, agg, [6])  # 5 -> 6
    assert store.snapshots(agg)[0].version == 6


def test_the_load_replays_only_the_events_after_the_snapshot(store, monkeypatch):
    repo = es.Repository(store)
    agg = new_id()
    deposit_and_save(repo, agg, [1, 2, 3, 4])
    reads = []
    original = store.get_events_for_aggregate_id

    def spy(aggregate_id, **bounds):
        reads.append(bounds)
        return original(aggregate_id, **bounds)

    monkeypatch.setattr(store, "get_events_for_aggregate_id", spy)
    assert repo.load(Account, agg).balance == 10
    # the snapshot is at 4: its last event is read to check it
    assert reads == [{"from_version": 4}]


def test_subscribers_never_see_snapshots(store):
    repo = es.Repository(store)
    agg = new_id()
    deposit_and_save(repo, agg, [1, 2, 3])
    assert store.snapshots(agg)
    assert [e.type for e in store.get_next_from(1)] == ["snaptest.deposited"] * 3
    assert store.latest_event_id() == 3


def test_a_snapshot_of_another_snapshot_version_is_ignored(store):
    repo = es.Repository(store)
    agg = new_id()
    deposit_and_save(repo, agg, [1, 2, 3])

    class Renamed(Account):
        snapshot_version = 2

    # the same aggregate type, a new meaning of its state
    Renamed.__qualname__ = Account.__qualname__
    Renamed.__module__ = Account.__module__

    def restore(self, state):
        raise AssertionError("an old snapshot was used")

    Renamed.restore_snapshot = restore
    assert repo.load(Renamed, agg).balance == 6


def test_a_snapshot_that_cannot_be_decoded_is_ignored_and_the_events_replayed(store, caplog):
    repo = es.Repository(store)
    agg = new_id()
    deposit_and_save(repo, agg, [1, 2, 3])
    (snap,) = store.snapshots(agg)
    store.save_snapshot(snap._replace(state='{"balance": "not a number"}'))
    with caplog.at_level("WARNING", logger="eventsourcery"):
        loaded = repo.load(Account, agg)
    assert state(loaded) == state(full_replay(store, Account, agg))
    assert "cannot be used" in caplog.text
    store.save_snapshot(snap._replace(state="not json"))
    assert repo.load(Account, agg).balance == 6


def test_a_snapshot_of_a_history_that_is_not_there_is_ignored(store):
    repo = es.Repository(store)
    agg = new_id()
    deposit_and_save(repo, agg, [1, 2, 3])
    (snap,) = store.snapshots(agg)
    store.save_snapshot(snap._replace(version=3, last_event_uuid="another-event"))
    assert repo.load(Account, agg).balance == 6
    store.save_snapshot(snap._replace(version=50))  # beyond the history
    assert repo.load(Account, agg).balance == 6


class Unsnappable(es.Aggregate):
    snapshot_every = 1
    seen: list  # a set would come back as a list: the state does not survive encoding

    def __init__(self, id, events=()):
        self.seen = set()
        super().__init__(id, events)

    @es.on(Deposited)
    def _deposited(self, event):
        self.seen = self.seen | {str(event.amount)}


def test_a_state_that_does_not_survive_encoding_is_not_snapshotted(store, caplog):
    repo = es.Repository(store)
    agg = new_id()
    u = repo.load(Unsnappable, agg)
    u.apply_event(Deposited, amount=decimal.Decimal(1), on=datetime.date(2030, 1, 1))
    with caplog.at_level("WARNING", logger="eventsourcery"):
        repo.save(u)
    assert store.snapshots(agg) == []
    assert "does not survive encoding" in caplog.text
    assert repo.load(Unsnappable, agg).seen == {"1"}


class Custom(es.Aggregate):
    snapshot_every = 2

    def __init__(self, id, events=()):
        self.amounts = set()
        super().__init__(id, events)

    @es.on(Deposited)
    def _deposited(self, event):
        self.amounts.add(int(event.amount))

    def snapshot_state(self):
        return {"amounts": sorted(self.amounts)}

    def restore_snapshot(self, state):
        self.amounts = set(state["amounts"])


def test_a_class_can_say_how_its_state_is_captured_and_restored(store):
    repo = es.Repository(store)
    agg = new_id()
    c = repo.load(Custom, agg)
    for n in (3, 1, 2):
        c.apply_event(Deposited, amount=decimal.Decimal(n), on=datetime.date(2030, 1, 1))
    repo.save(c)
    assert store.snapshots(agg)[0].state == '{"amounts":[1,2,3]}'
    assert repo.load(Custom, agg).amounts == {1, 2, 3}


def test_a_snapshot_saved_in_a_transaction_that_rolls_back_is_not_kept(store):
    repo = es.Repository(store)
    agg = new_id()
    with pytest.raises(RuntimeError):
        with store.transaction():
            deposit_and_save(repo, agg, [1, 2, 3])
            raise RuntimeError("rolled back")
    assert store.snapshots(agg) == []
    assert store.get_events_for_aggregate_id(agg) == []


def test_delete_snapshots_forgets_them(store):
    repo = es.Repository(store)
    agg, other = new_id(), new_id()
    deposit_and_save(repo, agg, [1, 2, 3])
    deposit_and_save(repo, other, [1, 2, 3])
    store.delete_snapshots(agg)
    assert store.snapshots(agg) == [] and len(store.snapshots(other)) == 1
    assert repo.load(Account, agg).balance == 6


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_snapshot_every_must_be_a_positive_int(bad):
    with pytest.raises(TypeError, match="snapshot_every"):
        class Bad(es.Aggregate):  # noqa: F841
            snapshot_every = bad
