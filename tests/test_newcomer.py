"""Reactors' emits_events (any iterable, checked at class definition) and
Aggregate.ignores_events."""

from __future__ import annotations

import pytest

import eventsourcery as es


class NcOrderPlaced(es.Event):
    total: int


class NcStakeholderNotified(es.Event):
    who: str


class NcOther(es.Event):
    pass


class NcOrder(es.Aggregate):
    ignores_events = [NcStakeholderNotified]
    total = 0

    @es.on(NcOrderPlaced)
    def _placed(self, event: NcOrderPlaced) -> None:
        self.total += event.total

    def place(self, total: int) -> None:
        self.apply_event(NcOrderPlaced, total=total)


class NcStrictOrder(es.Aggregate):
    @es.on(NcOrderPlaced)
    def _placed(self, event: NcOrderPlaced) -> None:
        pass


class NcNotifier(es.Reactor):
    emits_events = [NcStakeholderNotified]

    @es.on(NcOrderPlaced)
    def _notify(self, event: NcOrderPlaced) -> None:
        self.emit_event(NcStakeholderNotified(aggregate_id=event.aggregate_id, who="boss"))


def test_emits_events_list_is_stored_as_a_tuple() -> None:
    assert NcNotifier.emits_events == (NcStakeholderNotified,)
    assert isinstance(NcNotifier.emits_events, tuple)


def test_emits_events_accepts_any_iterable() -> None:
    class FromGenerator(es.Reactor):
        emits_events = (c for c in [NcStakeholderNotified, NcOther])

    assert FromGenerator.emits_events == (NcStakeholderNotified, NcOther)


@pytest.mark.parametrize("bad", [42, "nc_other", NcOther, es.Event, [NcOther, "nc_order_placed"],
                                 [NcOther, int]])
def test_emits_events_is_checked_at_class_definition(bad: object) -> None:
    with pytest.raises(TypeError, match="emits_events") as info:
        type("BadReactor", (es.Reactor,), {"emits_events": bad})
    assert "BadReactor" in str(info.value)
    if isinstance(bad, list):
        assert repr(bad[1]) in str(info.value)


def test_emitting_an_undeclared_event_is_still_refused() -> None:
    class Wrong(es.Reactor):
        emits_events = [NcOther]

        @es.on(NcOrderPlaced)
        def _go(self, event: es.Event) -> None:
            self.emit_event(NcStakeholderNotified(aggregate_id=event.aggregate_id, who="x"))

    store = es.MemoryEventStore()
    store.sink(NcOrderPlaced(aggregate_id="o-1", total=1))
    reactor = Wrong(store)
    reactor.setup()
    with pytest.raises(es.EventProcessingError) as info:
        reactor.process_batch(store.get_next_from(1))
    assert isinstance(info.value.__cause__, es.UndeclaredEventEmissionError)


def test_a_reactor_emitting_onto_the_stream_leaves_an_aggregate_that_ignores_it_loadable() -> None:
    store = es.MemoryEventStore()
    repo = es.Repository(store)
    order = repo.load(NcOrder, "o-1")
    order.place(5)
    repo.save(order)
    reactor = NcNotifier(store)
    reactor.setup()
    reactor.process_batch(store.get_next_from(1))
    assert ([e.type for e in store.get_events_for_aggregate_id("o-1")]
            == ["nc_order_placed", "nc_stakeholder_notified"])

    with pytest.raises(es.UnknownEventError):
        repo.load(NcStrictOrder, "o-1")
    order = repo.load(NcOrder, "o-1")
    assert order.total == 5
    assert order.version == 2  # the ignored event counts, so the next save writes version 3
    order.place(2)
    repo.save(order)
    assert repo.load(NcOrder, "o-1").total == 7
    assert [e.version for e in store.get_events_for_aggregate_id("o-1")] == [1, 2, 3]


def test_ignores_events_is_a_tuple_and_accepts_type_names() -> None:
    class ByName(es.Aggregate):
        ignores_events = ["nc_other"]

    assert ByName.ignores_events == ("nc_other",)
    assert ByName("x", [NcOther(aggregate_id="x")]).version == 1
    assert NcOrder.ignores_events == (NcStakeholderNotified,)


def test_a_handler_wins_over_ignores_events() -> None:
    class Handles(es.Aggregate):
        ignores_events = (NcOrderPlaced,)
        seen = 0

        @es.on(NcOrderPlaced)
        def _placed(self, event: es.Event) -> None:
            self.seen += 1

    assert Handles("x", [NcOrderPlaced(aggregate_id="x", total=1)]).seen == 1


@pytest.mark.parametrize("bad", [NcOther, "nc_other", 3, [3]])
def test_ignores_events_is_checked_at_class_definition(bad: object) -> None:
    with pytest.raises(TypeError, match="ignores_events"):
        type("BadAggregate", (es.Aggregate,), {"ignores_events": bad})


# -- the README's claim: a runner started in a thread must be shut down, or the process hangs at
# exit --

RUNNER_SCRIPT = '''
import os, sys, threading, time
import eventsourcery as es

class Ticked(es.Event):
    pass

class Ticker(es.EventStreamProcessor):
    @es.on(Ticked)
    def _ticked(self, event):
        pass

path = os.path.join(sys.argv[1], "ticks.db")
store = es.SQLiteEventStore(path)
store.sink(Ticked(aggregate_id="t"))
runner = es.ESPRunner([Ticker(tracker=store.tracker())], store)
thread = threading.Thread(target=runner.start, daemon=sys.argv[2] == "daemon")
thread.start()
watch = es.SQLiteEventStore(path)
while [s.position for s in es.processor_statuses(watch)] != [1]:
    time.sleep(0.05)
if sys.argv[3] == "shutdown":
    runner.shutdown()
    thread.join()
print("main done", flush=True)
'''


@pytest.mark.parametrize("thread_kind", ["daemon", "plain"])
def test_a_runner_in_a_thread_hangs_the_exit_unless_shut_down(tmp_path, thread_kind: str) -> None:
    import os
    import pathlib
    import signal
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}

    def run(mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", RUNNER_SCRIPT, str(tmp_path / mode),
                                 thread_kind, mode], stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)

    (tmp_path / "shutdown").mkdir()
    (tmp_path / "forget").mkdir()
    clean = run("shutdown")
    try:
        assert clean.wait(timeout=30) == 0
    finally:
        if clean.poll() is None:
            os.killpg(clean.pid, signal.SIGKILL)  # never leave the script and its child running
            clean.wait(timeout=30)
    assert clean.stdout is not None and clean.stdout.read() == "main done\n"

    hung = run("forget")
    try:
        assert hung.stdout is not None and hung.stdout.readline() == "main done\n"
        with pytest.raises(subprocess.TimeoutExpired):
            hung.wait(timeout=3)  # main is done, yet the process does not exit
    finally:
        # the session this test started: the script and its child
        os.killpg(hung.pid, signal.SIGKILL)
        hung.wait(timeout=30)
