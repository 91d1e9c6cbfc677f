"""The testing helpers: es.given(...).when(...).then(...), es.given_events(...).feed(processor)."""

from __future__ import annotations

import unittest

import pytest

import eventsourcery as es


class ThOrderPlaced(es.Event):
    total: int


class ThOrderShipped(es.Event):
    to: str


class ThOrderCancelled(es.Event):
    reason: str


class ThShippingLabelPrinted(es.Event):
    to: str


class ThOrder(es.Aggregate):
    ignores_events = (ThOrderCancelled,)
    placed = False
    shipped_to: str | None = None

    @es.on(ThOrderPlaced)
    def _placed(self, event: ThOrderPlaced) -> None:
        self.placed = True

    @es.on(ThOrderShipped)
    def _shipped(self, event: ThOrderShipped) -> None:
        self.shipped_to = event.to

    def ship(self, to: str) -> str:
        if not self.placed:
            raise ValueError("cannot ship an order that was not placed")
        if self.shipped_to is not None:
            return "already shipped"
        self.apply_event(ThOrderShipped, to=to)
        return "shipped"

    def cancel_and_ship(self, to: str) -> None:
        self.apply_event(ThOrderCancelled, reason="oops")
        self.apply_event(ThOrderShipped, to=to)


class ThOrderTotals(es.Projector):
    schema = "CREATE TABLE th_totals (order_id TEXT PRIMARY KEY, total INTEGER NOT NULL)"

    @es.on(ThOrderPlaced)
    def _placed(self, event: ThOrderPlaced) -> None:
        p = self.placeholder
        self.db.execute(f"INSERT INTO th_totals VALUES ({p}, {p})",
                        (event.aggregate_id, event.total))


class ThLabelPrinter(es.Reactor):
    emits_events = [ThShippingLabelPrinted]
    schema = "CREATE TABLE th_printed (event_uuid TEXT PRIMARY KEY)"

    @es.on(ThOrderShipped)
    def _shipped(self, event: ThOrderShipped) -> None:
        p = self.placeholder
        self.db.execute(f"INSERT INTO th_printed VALUES ({p})", (event.uuid,))
        self.emit_event(ThShippingLabelPrinted(aggregate_id=event.aggregate_id, to=event.to))


# -- aggregates --------------------------------------------------------------

def test_then_passes_on_the_expected_events_and_returns_them() -> None:
    scenario = es.given(ThOrder, ThOrderPlaced(total=5), id="o-1").when(lambda o: o.ship("Paris"))
    events = scenario.then(ThOrderShipped(to="Paris"))
    assert ([(e.aggregate_id, e.version, e.to) for e in events]
            == [("o-1", None, "Paris")])  # type: ignore[attr-defined]
    assert scenario.aggregate.shipped_to == "Paris"
    assert scenario.aggregate.version == 2
    assert scenario.result == "shipped"


def test_given_events_get_the_aggregate_id_and_versions() -> None:
    scenario = es.given(ThOrder, ThOrderPlaced(total=5), ThOrderShipped(to="Rome"), id="o-9")
    assert [(e.aggregate_id, e.version) for e in scenario.given] == [("o-9", 1), ("o-9", 2)]
    assert scenario.aggregate.id == "o-9" and scenario.aggregate.shipped_to == "Rome"


def test_then_ignores_ids_uuids_versions_and_timestamps() -> None:
    import datetime
    expected = ThOrderShipped(to="Paris", uuid="other", id=99, version=7,
                              created_at=datetime.datetime(2000, 1, 1))
    es.given(ThOrder, ThOrderPlaced(total=5)).when(lambda o: o.ship("Paris")).then(expected)


def test_then_compares_the_aggregate_id_an_expected_event_names() -> None:
    scenario = es.given(ThOrder, ThOrderPlaced(total=5), id="o-1").when(lambda o: o.ship("Paris"))
    scenario.then(ThOrderShipped(to="Paris", aggregate_id="o-1"))
    with pytest.raises(AssertionError) as info:
        scenario.then(ThOrderShipped(to="Paris", aggregate_id="o-2"))
    assert info.value.args[0].splitlines()[-2:] == [
        "-ThOrderShipped(to='Paris') on 'o-2'", "+ThOrderShipped(to='Paris') on 'o-1'"]


def test_then_with_a_class_matches_any_event_of_that_class() -> None:
    es.given(ThOrder, ThOrderPlaced(total=5)).when(lambda o: o.ship("Paris")).then(ThOrderShipped)
    with pytest.raises(AssertionError):
        es.given(ThOrder, ThOrderPlaced(total=5)).when(lambda o: o.ship("Paris")).then(
            ThOrderCancelled)


def test_then_with_no_events_asserts_that_none_were_applied() -> None:
    es.given(ThOrder, ThOrderPlaced(total=1), ThOrderShipped(to="A")).when(
        lambda o: o.ship("B")).then()
    with pytest.raises(AssertionError, match=r"\+ThOrderShipped\(to='B'\)"):
        es.given(ThOrder, ThOrderPlaced(total=1)).when(lambda o: o.ship("B")).then()


def test_then_fails_with_a_readable_diff() -> None:
    scenario = es.given(ThOrder, ThOrderPlaced(total=5)).when(lambda o: o.cancel_and_ship("Paris"))
    with pytest.raises(AssertionError) as info:
        scenario.then(ThOrderCancelled(reason="oops"), ThOrderShipped(to="Rome"))
    message = str(info.value)
    assert message.splitlines() == [
        "new events differ (- expected, + actual):",
        "@@ -1,2 +1,2 @@",
        " ThOrderCancelled(reason='oops')",
        "-ThOrderShipped(to='Rome')",
        "+ThOrderShipped(to='Paris')",
    ]


def test_then_fails_on_a_missing_event() -> None:
    scenario = es.given(ThOrder, ThOrderPlaced(total=5)).when(lambda o: o.ship("Paris"))
    with pytest.raises(AssertionError) as info:
        scenario.then(ThOrderShipped(to="Paris"), ThOrderCancelled(reason="x"))
    assert "-ThOrderCancelled(reason='x')" in str(info.value).splitlines()
    assert " ThOrderShipped(to='Paris')" in str(info.value).splitlines()


def test_then_fails_when_the_command_raised() -> None:
    scenario = es.given(ThOrder).when(lambda o: o.ship("Paris"))
    with pytest.raises(AssertionError, match="the command raised ValueError: cannot ship") as info:
        scenario.then(ThOrderShipped(to="Paris"))
    assert isinstance(info.value.__cause__, ValueError)


def test_then_raises_passes_and_returns_the_error() -> None:
    error = es.given(ThOrder).when(lambda o: o.ship("Paris")).then_raises(
        ValueError, match="not placed")
    assert isinstance(error, ValueError)


def test_then_raises_fails_when_nothing_was_raised() -> None:
    scenario = es.given(ThOrder, ThOrderPlaced(total=5)).when(lambda o: o.ship("Paris"))
    with pytest.raises(AssertionError, match=r"expected ValueError, but the command raised "
                                             r"nothing; new events: "
                                             r"\[\"ThOrderShipped\(to='Paris'\)\"\]"):
        scenario.then_raises(ValueError)


def test_then_raises_fails_on_another_type_or_message() -> None:
    scenario = es.given(ThOrder).when(lambda o: o.ship("Paris"))
    with pytest.raises(AssertionError, match="but the command raised ValueError: cannot ship"):
        scenario.then_raises(KeyError)
    with pytest.raises(AssertionError, match="does not match 'shipped twice'"):
        scenario.then_raises(ValueError, match="shipped twice")


def test_then_raises_without_when_says_so() -> None:
    with pytest.raises(AssertionError, match=r"call \.when"):
        es.given(ThOrder).then_raises(ValueError)


def test_given_refuses_what_is_not_an_event() -> None:
    with pytest.raises(TypeError, match="Event instances"):
        es.given(ThOrder, ThOrderPlaced)  # type: ignore[arg-type]


def test_assert_events_on_its_own() -> None:
    es.assert_events([ThOrderPlaced(total=1)], [ThOrderPlaced(total=1, uuid="u")])
    with pytest.raises(AssertionError,
                       match=r"-ThOrderPlaced\(total=2\)\n\+ThOrderPlaced\(total=1\)"):
        es.assert_events([ThOrderPlaced(total=1)], [ThOrderPlaced(total=2)])
    generic = es.Event(type="th_thing", body={"a": 1})
    with pytest.raises(AssertionError, match=r"\+Event\[th_thing\]\(a=1\)"):
        es.assert_events([generic], [])


class UnittestStyle(unittest.TestCase):
    def test_failure_is_a_unittest_failure(self) -> None:
        with self.assertRaises(AssertionError):
            es.given(ThOrder, ThOrderPlaced(total=1)).when(lambda o: o.ship("B")).then(
                ThOrderShipped(to="C"))

    def test_success(self) -> None:
        es.given(ThOrder, ThOrderPlaced(total=1)).when(lambda o: o.ship("B")).then(
            ThOrderShipped(to="B"))


def test_unittest_reports_a_failure_not_an_error() -> None:
    class Failing(unittest.TestCase):
        def test_it(self) -> None:
            es.given(ThOrder, ThOrderPlaced(total=1)).when(lambda o: o.ship("B")).then(
                ThOrderShipped(to="C"))

    result = unittest.TestResult()
    Failing("test_it").run(result)
    assert len(result.failures) == 1 and not result.errors
    assert "+ThOrderShipped(to='B')" in result.failures[0][1]


# -- processors --------------------------------------------------------------

def test_feed_a_projector_on_memory() -> None:
    run = es.given_events(ThOrderPlaced(total=5, aggregate_id="o-1"), ThOrderPlaced(total=7)).feed(
        ThOrderTotals(":memory:"))
    assert (run.rows("SELECT order_id, total FROM th_totals ORDER BY total")
            == [("o-1", 5), ("test-aggregate", 7)])
    assert [(e.id, e.version) for e in run.given] == [(1, 1), (2, 1)]
    assert run.processor.last_processed_event_id == 2
    assert run.emitted == []


def test_feed_a_reactor_on_a_memory_store_shows_what_it_emitted() -> None:
    store = es.MemoryEventStore()
    run = es.given_events(ThOrderPlaced(total=5, aggregate_id="o-1"),
                          ThOrderShipped(to="Paris", aggregate_id="o-1")).feed(
                              ThLabelPrinter(store))
    emitted = run.then_emitted(ThShippingLabelPrinted(to="Paris"))
    assert [(e.id, e.aggregate_id, e.version, e.causation_id) for e in emitted] == [
        (3, "o-1", 3, run.given[1].uuid)]
    assert run.rows("SELECT event_uuid FROM th_printed") == [(run.given[1].uuid,)]
    assert run.store is store


class ThMisdirectedLabelPrinter(ThLabelPrinter):
    """Emits its label onto the wrong aggregate: a test that names the aggregate must catch it."""

    @es.on(ThOrderShipped)
    def _shipped(self, event: ThOrderShipped) -> None:
        label = f"{event.aggregate_id}-label"
        self.emit_event(ThShippingLabelPrinted(aggregate_id=label, to=event.to))


def test_then_emitted_compares_where_the_event_goes() -> None:
    shipped = ThOrderShipped(to="Paris", aggregate_id="o-1")
    right = es.given_events(shipped).feed(ThLabelPrinter(es.MemoryEventStore()))
    right.then_emitted(ThShippingLabelPrinted(to="Paris", aggregate_id="o-1"))
    wrong = es.given_events(shipped).feed(ThMisdirectedLabelPrinter(es.MemoryEventStore()))
    with pytest.raises(AssertionError) as info:
        wrong.then_emitted(ThShippingLabelPrinted(to="Paris", aggregate_id="o-1"))
    assert info.value.args[0].splitlines() == [
        "emitted events differ (- expected, + actual):", "@@ -1 +1 @@",
        "-ThShippingLabelPrinted(to='Paris') on 'o-1'",
        "+ThShippingLabelPrinted(to='Paris') on 'o-1-label'"]
    # an expected class, or an event that names no aggregate, matches on any aggregate
    wrong.then_emitted(ThShippingLabelPrinted)
    wrong.then_emitted(ThShippingLabelPrinted(to="Paris"))


def test_assert_events_compares_the_aggregate_id_only_where_expected_names_one() -> None:
    actual = [ThOrderPlaced(total=1, aggregate_id="a"), ThOrderPlaced(total=2, aggregate_id="b")]
    es.assert_events(actual, [ThOrderPlaced(total=1, aggregate_id="a"), ThOrderPlaced(total=2)])
    es.assert_events(actual, [ThOrderPlaced, ThOrderPlaced(total=2, aggregate_id="b")])
    with pytest.raises(AssertionError) as info:
        es.assert_events(actual, [ThOrderPlaced(total=1, aggregate_id="b"), ThOrderPlaced(total=2)])
    assert info.value.args[0].splitlines()[1:] == [
        "@@ -1,2 +1,2 @@", "-ThOrderPlaced(total=1) on 'b'", "+ThOrderPlaced(total=1) on 'a'",
        " ThOrderPlaced(total=2)"]


def test_then_emitted_fails_with_a_diff() -> None:
    run = es.given_events(ThOrderShipped(to="Paris")).feed(ThLabelPrinter(es.MemoryEventStore()))
    with pytest.raises(AssertionError) as info:
        run.then_emitted()
    assert info.value.args[0].splitlines() == [
        "emitted events differ (- expected, + actual):", "@@ -0,0 +1 @@",
        "+ThShippingLabelPrinted(to='Paris')"]


def test_feed_a_plain_processor() -> None:
    class Seen(es.EventStreamProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        @es.on(ThOrderPlaced)
        def _placed(self, event: ThOrderPlaced) -> None:
            self.seen.append(event.total)

    run = es.given_events(ThOrderPlaced(total=1), ThOrderShipped(to="x"),
                          ThOrderPlaced(total=2)).feed(Seen())
    assert run.processor.seen == [1, 2]
    with pytest.raises(TypeError, match="no database"):
        run.rows("SELECT 1")
