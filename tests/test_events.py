"""Event classes (SPEC section 1): dataclass behaviour, type names, body, identity."""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid

import pytest

import eventsourcery as es
from tests.events import (
    DottedName,
    HTTPRequestMade,
    ItemAdded,
    TestEvent2,
    Timed,
    Type1,
    UserSignedUp,
    everything,
)

METADATA = ("id", "uuid", "aggregate_id", "version", "created_at", "correlation_id", "causation_id",
            "metadata")


# --- class creation ------------------------------------------------------------------


def test_subclass_is_a_dataclass_with_metadata_and_own_fields():
    assert dataclasses.is_dataclass(ItemAdded)
    names = [f.name for f in dataclasses.fields(ItemAdded)]
    assert set(METADATA) <= set(names)
    assert "title" in names
    assert "type" not in names and "body" not in names


def test_event_is_frozen():
    e = ItemAdded(aggregate_id="a", title="t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.title = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.id = 5


def test_event_is_keyword_only():
    with pytest.raises(TypeError):
        ItemAdded("a", "t")  # type: ignore[misc]


def test_required_field_is_required_and_defaults_apply():
    with pytest.raises(TypeError):
        ItemAdded(aggregate_id="a")  # no title
    assert UserSignedUp(aggregate_id="a").email == "someone@example.com"


def test_metadata_defaults():
    e = ItemAdded(title="t")
    assert e.id is None
    assert e.version is None
    assert e.created_at is None
    assert e.correlation_id is None
    assert e.causation_id is None
    assert isinstance(e.uuid, str)


def test_a_field_with_a_required_field_after_a_defaulted_one_is_fine():
    # keyword-only dataclasses allow it: metadata has defaults, own fields need not
    class RequiredAfterMetadata(es.Event):
        first: int
        second: str = "x"
        third: int

    e = RequiredAfterMetadata(first=1, third=3)
    assert (e.first, e.second, e.third) == (1, "x", 3)


@pytest.mark.parametrize(
    "cls,name",
    [
        (ItemAdded, "item_added"),
        (TestEvent2, "test_event2"),
        (UserSignedUp, "user_signed_up"),
        (Type1, "type1"),
        (HTTPRequestMade, "http_request_made"),
        (DottedName, "dotted.name"),
    ],
)
def test_type_names(cls, name):
    assert cls.type == name
    assert cls(aggregate_id="a", **({"title": "t"} if cls is ItemAdded else {})).type == name
    assert es.event_class(name) is cls


def test_type_name_is_snake_case_of_the_class_name():
    class WidgetSnakeCased(es.Event):
        pass

    class IOError2Raised(es.Event):
        pass

    class ABTestStartedV2(es.Event):
        pass

    assert WidgetSnakeCased.type == "widget_snake_cased"
    assert IOError2Raised.type == "io_error2_raised"
    assert ABTestStartedV2.type == "ab_test_started_v2"


def test_type_override():
    class WidgetOverridden(es.Event, type="test_events.widget.overridden"):
        title: str = ""

    assert WidgetOverridden.type == "test_events.widget.overridden"
    assert WidgetOverridden().type == "test_events.widget.overridden"
    assert es.event_class("test_events.widget.overridden") is WidgetOverridden
    assert es.event_class("widget_overridden") is None


def test_event_class_lookup_unknown_is_none():
    assert es.event_class("no.such.type.anywhere") is None


@pytest.mark.parametrize("bad", [123, b"bytes", "", ["x"]], ids=["int", "bytes", "empty", "list"])
def test_non_string_type_name_is_a_type_error(bad):
    with pytest.raises(TypeError):

        class BadTypeName(es.Event, type=bad):
            pass

    assert es.event_class(bad if isinstance(bad, str) else "bad_type_name") is None


def test_two_classes_claiming_one_type_name_is_an_error_naming_both():
    class FirstClaimant(es.Event, type="claimed.twice"):
        pass

    with pytest.raises(es.Error) as excinfo:

        class SecondClaimant(es.Event, type="claimed.twice"):
            pass

    message = str(excinfo.value)
    assert "FirstClaimant" in message
    assert "SecondClaimant" in message
    assert es.event_class("claimed.twice") is FirstClaimant


def test_two_classes_with_one_derived_type_name_is_an_error_naming_both():
    def first():
        class SameName(es.Event):
            pass

        return SameName

    def second():
        class SameName(es.Event):
            pass

        return SameName

    cls = first()
    with pytest.raises(Exception) as excinfo:
        second()
    message = str(excinfo.value)
    assert "first.<locals>.SameName" in message
    assert "second.<locals>.SameName" in message
    assert es.event_class("same_name") is cls


def test_redefining_the_same_class_replaces_it():
    def define(extra_field: bool):
        if extra_field:

            class Redefined(es.Event):
                a: int = 0
                b: int = 0

        else:

            class Redefined(es.Event):
                a: int = 0

        return Redefined

    old = define(False)
    new = define(True)  # same module and qualified name: no error
    assert new is not old
    assert es.event_class("redefined") is new
    assert new(a=1, b=2).body == {"a": 1, "b": 2}


def test_redefined_class_is_used_when_reading(store):
    def define(generation):
        class Reloaded(es.Event, type="reload_test.reloaded"):
            n: int = generation

        return Reloaded

    define(1)
    store.sink(define(1)(aggregate_id="a"))
    current = define(2)
    (read,) = store.get_next_from(1)
    assert type(read) is current
    assert read.n == 1


def test_reserved_field_names_are_rejected():
    with pytest.raises(TypeError):

        class HasTypeField(es.Event):
            type: str = "x"  # type: ignore[assignment]


# --- body ------------------------------------------------------------------------------


def test_body_is_the_own_fields():
    e = ItemAdded(aggregate_id="a", title="t", correlation_id="c")
    assert e.body == {"title": "t"}
    assert TestEvent2(aggregate_id="a").body == {"my": "data"}
    assert Type1(aggregate_id="a").body == {}


def test_body_is_json_ready():
    e = everything("a")
    body = e.body
    assert json.loads(json.dumps(body)) == body
    assert set(body) == {f.name for f in dataclasses.fields(e)} - set(METADATA)
    t = datetime.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
    assert datetime.datetime.fromisoformat(Timed(time=t).body["time"]) == t


# --- identity ----------------------------------------------------------------------------


def test_equal_by_value_and_hashable():
    u = str(uuid.uuid4())
    a = ItemAdded(aggregate_id="x", title="t", uuid=u)
    b = ItemAdded(aggregate_id="x", title="t", uuid=u)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != ItemAdded(aggregate_id="x", title="other", uuid=u)
    assert a != ItemAdded(aggregate_id="x", title="t")  # another uuid
    assert a != ItemAdded(aggregate_id="y", title="t", uuid=u)
    assert a != ItemAdded(aggregate_id="x", title="t", uuid=u, id=3)


def test_events_of_different_classes_are_not_equal():
    u = str(uuid.uuid4())
    assert UserSignedUp(aggregate_id="x", uuid=u) != Type1(aggregate_id="x", uuid=u)
    assert ItemAdded(aggregate_id="x", title="t") != "not an event"


def test_events_with_list_fields_are_hashable():
    e = everything("a")
    assert isinstance(hash(e), int)
    assert e in {e}


def test_dataclasses_replace():
    e = ItemAdded(aggregate_id="x", title="t", correlation_id="c")
    r = dataclasses.replace(e, title="u", id=7)
    assert type(r) is ItemAdded
    assert (r.title, r.id, r.aggregate_id, r.uuid, r.correlation_id) == ("u", 7, "x", e.uuid, "c")
    assert (e.title, e.id) == ("t", None)


def test_dataclasses_replace_of_a_generic_event_keeps_type_and_body():
    e = es.Event(type="generic.thing", body={"a": 1}, aggregate_id="x")
    r = dataclasses.replace(e, aggregate_id="y")
    assert r.aggregate_id == "y"
    assert r.type == "generic.thing"
    assert r.body == {"a": 1}
    assert r.uuid == e.uuid


# --- uuid and aggregate_id -------------------------------------------------------------


def test_uuid_default_is_lower_case_unique_and_v4_or_v7():
    uuids = [ItemAdded(title="t").uuid for _ in range(2000)]
    assert len(set(uuids)) == len(uuids)
    for u in uuids[:50]:
        parsed = uuid.UUID(u)
        assert str(parsed) == u  # canonical, lower-case form
        assert parsed.version in (4, 7)
        assert parsed.variant == uuid.RFC_4122


def test_uuid_v7_default_is_time_ordered_when_v7():
    uuids = [ItemAdded(title="t").uuid for _ in range(200)]
    if uuid.UUID(uuids[0]).version == 7:
        millis = [int(u.replace("-", "")[:12], 16) for u in uuids]
        assert millis == sorted(millis)


def test_aggregate_id_given_as_uuid_becomes_str():
    agg = uuid.uuid4()
    e = ItemAdded(aggregate_id=agg, title="t")
    assert e.aggregate_id == str(agg)
    assert type(e.aggregate_id) is str
    assert (dataclasses.replace(e, aggregate_id=uuid.UUID(int=5)).aggregate_id
            == str(uuid.UUID(int=5)))


# --- generic events --------------------------------------------------------------------


def test_generic_event():
    e = es.Event(type="legacy.thing_happened", body={"a": 1, "b": [1, 2]}, aggregate_id="x")
    assert type(e) is es.Event
    assert e.type == "legacy.thing_happened"
    assert e.body == {"a": 1, "b": [1, 2]}
    assert e.aggregate_id == "x"
    assert isinstance(e.uuid, str)


def test_generic_events_compare_by_value():
    u = str(uuid.uuid4())
    a = es.Event(type="t", body={"a": 1}, aggregate_id="x", uuid=u)
    assert a == es.Event(type="t", body={"a": 1}, aggregate_id="x", uuid=u)
    assert a != es.Event(type="t", body={"a": 2}, aggregate_id="x", uuid=u)
    assert a != es.Event(type="u", body={"a": 1}, aggregate_id="x", uuid=u)


def test_generic_event_rejects_typed_fields():
    with pytest.raises(TypeError):
        es.Event(type="t", title="no such field")  # type: ignore[call-arg]


def test_default_uuids_are_time_ordered_version_7():
    import uuid as uuid_module

    first = [es.new_uuid() for _ in range(200)]
    parsed = [uuid_module.UUID(u) for u in first]
    assert all(u.version == 7 and u.variant == uuid_module.RFC_4122 for u in parsed)
    assert all(str(u) == s for u, s in zip(parsed, first, strict=True))
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)  # the leading 48 bits are a clock, so later uuids sort later
