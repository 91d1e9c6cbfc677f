"""Aggregates and the repository (SPEC section 3; Ruby aggregate_root_spec and repository_spec)."""

from __future__ import annotations

import uuid

import pytest

import eventsourcery as es
from tests._util import ids, new_id
from tests.events import ItemAdded, ItemRejected, Numbered, Type1, Type2, UserSignedUp


class Basket(es.Aggregate):
    titles: tuple = ()
    rejected: int = 0

    @es.on(ItemAdded)
    def _added(self, event):
        self.titles = self.titles + (event.title,)

    @es.on(ItemRejected)
    def _rejected(self, event):
        self.rejected += 1

    def add(self, title):
        if title in self.titles:
            raise ValueError(f"{title} already in basket {self.id}")
        self.apply_event(ItemAdded, title=title)


class Ordered(es.Aggregate):
    """Several handlers for one type, and one handler for several types."""

    def __init__(self, id, events=()):
        self.calls = []
        super().__init__(id, events)

    @es.on(Type1)
    def _first(self, event):
        self.calls.append(("first", event.type))

    @es.on(Type1, Type2)
    def _second(self, event):
        self.calls.append(("second", event.type))

    @es.on(Type1)
    def _third(self, event):
        self.calls.append(("third", event.type))


def added(agg_id, title, **kw):
    return ItemAdded(aggregate_id=agg_id, title=title, **kw)


# --- the aggregate ------------------------------------------------------------------------


def test_new_aggregate_has_version_0_and_no_changes():
    b = Basket("b1")
    assert b.id == "b1"
    assert b.version == 0
    assert b.changes == []
    assert b.titles == ()


def test_aggregate_id_given_as_uuid_becomes_str():
    agg = uuid.uuid4()
    assert Basket(agg).id == str(agg)


def test_history_is_replayed_and_counted():
    history = [added("b1", "x"), added("b1", "y"), ItemRejected(aggregate_id="b1")]
    b = Basket("b1", history)
    assert b.titles == ("x", "y")
    assert b.rejected == 1
    assert b.version == 3
    assert b.changes == []


def test_history_may_be_any_iterable():
    b = Basket("b1", (added("b1", t) for t in "abc"))
    assert b.titles == ("a", "b", "c") and b.version == 3


def test_several_handlers_per_type_run_in_definition_order():
    o = Ordered("o1", [Type1(aggregate_id="o1"), Type2(aggregate_id="o1")])
    assert o.calls == [("first", "type1"), ("second", "type1"), ("third", "type1"),
                       ("second", "type2")]
    assert o.version == 2


def test_apply_event_with_class_and_fields():
    b = Basket("b1")
    returned = b.apply_event(ItemAdded, title="milk")
    assert b.titles == ("milk",)
    assert b.version == 1
    assert b.changes == [returned]
    (change,) = b.changes
    assert type(change) is ItemAdded
    assert change.aggregate_id == "b1"
    assert change.title == "milk"
    assert change.id is None and change.version is None


def test_apply_event_with_an_instance_fills_in_the_aggregate_id():
    b = Basket("b1")
    b.apply_event(ItemAdded(title="eggs", correlation_id="corr"))
    (change,) = b.changes
    assert change.aggregate_id == "b1"
    assert change.title == "eggs"
    assert change.correlation_id == "corr"
    assert b.titles == ("eggs",)
    assert b.version == 1


def test_apply_event_with_an_instance_of_the_same_aggregate():
    b = Basket("b1")
    e = added("b1", "eggs")
    b.apply_event(e)
    assert b.changes == [e]


def test_commands_apply_events_and_changes_keep_their_order():
    b = Basket("b1", [added("b1", "old")])
    b.add("a")
    b.add("b")
    b.apply_event(ItemRejected)
    assert [type(c) for c in b.changes] == [ItemAdded, ItemAdded, ItemRejected]
    assert [c.title for c in b.changes[:2]] == ["a", "b"]
    assert b.version == 4
    with pytest.raises(ValueError):
        b.add("a")
    assert len(b.changes) == 3 and b.version == 4


def test_clear_changes_keeps_the_version():
    b = Basket("b1")
    b.add("a")
    b.add("b")
    b.clear_changes()
    assert b.changes == []
    assert b.version == 2
    assert b.titles == ("a", "b")


def test_unknown_event_raises_unknown_event_error_in_history():
    with pytest.raises(es.UnknownEventError) as excinfo:
        Basket("b1", [UserSignedUp(aggregate_id="b1")])
    assert "user_signed_up" in str(excinfo.value)
    assert "Basket" in str(excinfo.value)


def test_unknown_event_raises_unknown_event_error_in_apply_event():
    b = Basket("b1")
    with pytest.raises(es.UnknownEventError):
        b.apply_event(UserSignedUp)
    assert issubclass(es.UnknownEventError, es.Error)


def test_on_unknown_event_is_configurable():
    calls = []
    saved = es.config.on_unknown_event
    try:
        es.configure(
            on_unknown_event=lambda event, aggregate: calls.append((event.type, aggregate)))
        b = Basket("b1", [UserSignedUp(aggregate_id="b1"), added("b1", "x")])
        assert [c[0] for c in calls] == ["user_signed_up"]
        assert calls[0][1] is b
        assert b.version == 2  # an unknown event still counts
        assert b.titles == ("x",)
        b.apply_event(UserSignedUp)
        assert len(calls) == 2 and b.version == 3 and len(b.changes) == 1
    finally:
        es.configure(on_unknown_event=saved)
    with pytest.raises(es.UnknownEventError):
        Basket("b2", [UserSignedUp(aggregate_id="b2")])


def test_generic_event_of_a_handled_type_is_applied():
    b = Basket("b1", [es.Event(type="item_rejected", body={}, aggregate_id="b1")])
    assert b.rejected == 1


def test_handlers_are_inherited():
    class SpecialBasket(Basket):
        special = 0

        @es.on(Numbered)
        def _numbered(self, event):
            self.special += event.e

    s = SpecialBasket("s1", [added("s1", "x"), Numbered(aggregate_id="s1", e=5)])
    assert s.titles == ("x",) and s.special == 5 and s.version == 2


def test_handlers_by_type_name():
    class ByName(es.Aggregate):
        seen = 0

        @es.on("item_added")
        def _added(self, event):
            self.seen += 1

    assert ByName("x", [added("x", "t")]).seen == 1


# --- the repository ---------------------------------------------------------------------


def test_load_of_a_new_aggregate(store):
    repo = es.Repository(store)
    b = repo.load(Basket, new_id())
    assert b.version == 0 and b.changes == [] and b.titles == ()


def test_save_then_load(store):
    repo = es.Repository(store)
    agg = new_id()
    b = repo.load(Basket, agg)
    b.add("a")
    b.add("b")
    repo.save(b)
    assert b.changes == []
    assert b.version == 2
    events = store.get_events_for_aggregate_id(agg)
    assert [(e.version, e.title) for e in events] == [(1, "a"), (2, "b")]
    loaded = repo.load(Basket, agg)
    assert loaded.titles == ("a", "b")
    assert loaded.version == 2
    assert loaded.changes == []


def test_load_with_a_uuid_id(store):
    repo = es.Repository(store)
    agg = uuid.uuid4()
    b = repo.load(Basket, agg)
    b.add("a")
    repo.save(b)
    assert repo.load(Basket, agg).titles == ("a",)
    assert repo.load(Basket, str(agg)).version == 1


def test_save_uses_expected_version_version_minus_changes(store):
    calls = []

    class SpyStore:
        def sink(self, events, expected_version=None):
            calls.append((list(events), expected_version))
            return store.sink(events, expected_version=expected_version)

        def get_events_for_aggregate_id(self, aggregate_id):
            return store.get_events_for_aggregate_id(aggregate_id)

    repo = es.Repository(SpyStore())
    agg = new_id()
    b = repo.load(Basket, agg)
    b.add("a")
    repo.save(b)
    b.add("b")
    b.add("c")
    repo.save(b)
    assert [(len(events), expected) for events, expected in calls] == [(1, 0), (2, 1)]


def test_save_returns_the_stored_events(store):
    repo = es.Repository(store)
    b = repo.load(Basket, new_id())
    b.add("a")
    stored = repo.save(b)
    assert ids(stored) == [1]
    assert stored[0].version == 1


def test_stale_save_raises_concurrency_error_and_writes_nothing(store):
    repo = es.Repository(store)
    agg = new_id()
    first = repo.load(Basket, agg)
    second = repo.load(Basket, agg)
    first.add("from first")
    second.add("from second")
    second.add("and more")
    repo.save(first)
    with pytest.raises(es.ConcurrencyError):
        repo.save(second)
    assert [e.title for e in store.get_events_for_aggregate_id(agg)] == ["from first"]
    assert store.latest_event_id() == 1
    # reloading and retrying works
    retry = repo.load(Basket, agg)
    retry.add("from second")
    repo.save(retry)
    assert ([e.title for e in store.get_events_for_aggregate_id(agg)]
            == ["from first", "from second"])


def test_stale_save_of_an_existing_aggregate(store):
    repo = es.Repository(store)
    agg = new_id()
    b = repo.load(Basket, agg)
    b.add("a")
    repo.save(b)
    one, two = repo.load(Basket, agg), repo.load(Basket, agg)
    one.add("b")
    two.add("c")
    repo.save(two)
    with pytest.raises(es.ConcurrencyError):
        repo.save(one)
    assert [e.title for e in store.get_events_for_aggregate_id(agg)] == ["a", "c"]


def test_save_without_changes_does_nothing(store):
    repo = es.Repository(store)
    agg = new_id()
    b = repo.load(Basket, agg)
    repo.save(b)
    assert store.latest_event_id() == 0
    b.add("a")
    repo.save(b)
    stale = Basket(agg)  # version 0, but unchanged: nothing to write, nothing to check
    repo.save(stale)
    assert store.latest_event_id() == 1


def test_save_without_changes_does_not_touch_the_store():
    class ExplodingStore:
        def sink(self, *args, **kwargs):
            raise AssertionError("sink called")

        def get_events_for_aggregate_id(self, aggregate_id):
            return []

    repo = es.Repository(ExplodingStore())
    repo.save(repo.load(Basket, "x"))


# --- saving several aggregates at once (SPEC 3: repo.save(a, b, ...)) -----------------------------


def test_save_of_several_aggregates_writes_all_their_changes(store):
    repo = es.Repository(store)
    first, second = repo.load(Basket, new_id()), repo.load(Basket, new_id())
    first.add("apple")
    second.add("pear")
    second.add("plum")
    stored = repo.save(first, second)
    assert [(e.aggregate_id, e.version, e.title) for e in stored] == [
        (first.id, 1, "apple"), (second.id, 1, "pear"), (second.id, 2, "plum")]
    assert first.changes == [] and second.changes == []
    assert repo.load(Basket, second.id).titles == ("pear", "plum")
    assert repo.save(first, second) == []  # nothing left to write


def test_one_conflict_in_a_save_of_several_writes_nothing_and_keeps_every_change(store):
    repo = es.Repository(store)
    ok_id, contended_id = new_id(), new_id()
    store.sink(ItemAdded(aggregate_id=contended_id, title="first"))
    ok, contended = repo.load(Basket, ok_id), repo.load(Basket, contended_id)
    store.sink(ItemAdded(aggregate_id=contended_id, title="written meanwhile"), expected_version=1)
    ok.add("apple")
    contended.add("pear")
    with pytest.raises(es.ConcurrencyError, match=contended_id):
        repo.save(ok, contended)
    assert store.get_events_for_aggregate_id(ok_id) == []
    assert store.latest_event_id() == 2
    assert ([e.title for e in ok.changes] == ["apple"]
            and [e.title for e in contended.changes] == ["pear"])
    repo.save(ok)  # the one without a conflict can still be saved on its own
    assert [e.title for e in store.get_events_for_aggregate_id(ok_id)] == ["apple"]


def test_save_needs_an_aggregate():
    with pytest.raises(TypeError):
        es.Repository(es.MemoryEventStore()).save()
