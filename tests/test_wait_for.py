"""processor.wait_for: False on timeout, and a warning (once a wait) when no instance runs the
processor."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest

import eventsourcery as es


class WfSeen(es.Event):
    pass


class WfWatcher(es.Reactor):
    processor_name = "wf_watcher"

    @es.on(WfSeen)
    def _seen(self, event: WfSeen) -> None:
        pass


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("[wf_watcher] wait_for(")]


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


def _run_until_stopped(watcher: WfWatcher, store: es.EventStore) -> None:
    watcher.subscribe_to(
        store, stop=lambda: watcher.last_processed_event_id >= store.latest_event_id())


def test_wait_for_warns_once_a_wait_when_no_instance_runs_the_processor(
        store: es.EventStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="eventsourcery")
    store.sink(WfSeen(aggregate_id="w-1"))
    watcher = WfWatcher(store)
    watcher.setup()

    # never ran: the wait runs out (False), and the log says why, once (though it checked twice)
    assert watcher.wait_for(1, timeout=1.3) is False
    assert _warnings(caplog) == ["[wf_watcher] wait_for(1): no instance runs it (it never ran "
                                 "here), so the wait will run out unless an instance starts"]
    # once per wait: a second wait says it again
    caplog.clear()
    assert watcher.wait_for(1, timeout=0.05) is False
    assert len(_warnings(caplog)) == 1

    # ran, then stopped: it names the last owner
    _run_until_stopped(watcher, store)
    assert watcher.wait_for(1, timeout=0) is True  # no wait, no warning
    store.sink(WfSeen(aggregate_id="w-1"))
    caplog.clear()
    assert watcher.wait_for(2, timeout=0.05) is False
    here = es._instance_name()  # type: ignore[attr-defined]
    assert _warnings(caplog) == [f"[wf_watcher] wait_for(2): no instance runs it (the last one, "
                                 f"{here}, stopped), so the wait will run out unless an instance "
                                 "starts"]

    # a recorded owner whose process is gone (killed without a chance to say it stopped)
    watcher.tracker.acquire("wf_watcher", f"{_dead_pid()}@{here.partition('@')[2]}")
    caplog.clear()
    assert watcher.wait_for(2, timeout=0.05) is False
    assert len(_warnings(caplog)) == 1 and "is gone" in _warnings(caplog)[0], _warnings(caplog)

    # a standby about to take the name over: no warning
    watcher.tracker.report("wf_watcher", watcher.tracker.record("wf_watcher").generation, "stopped")
    watcher.tracker.standby("wf_watcher", "12345@elsewhere")
    caplog.clear()
    assert watcher.wait_for(2, timeout=0.05) is False
    assert _warnings(caplog) == []


def test_wait_for_a_running_processor_does_not_warn(store: es.EventStore,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="eventsourcery")
    watcher = WfWatcher(store)
    stop = threading.Event()
    runner = threading.Thread(target=watcher.subscribe_to, args=(store, stop))
    runner.start()
    try:
        for _ in range(3000):  # until it has taken the name (bounded: 30 s)
            if watcher.tracker.record("wf_watcher").state == "running":
                break
            threading.Event().wait(0.01)
        assert watcher.tracker.record("wf_watcher").state == "running"
        assert watcher.wait_for(0, timeout=0) is True
        stored = store.sink(WfSeen(aggregate_id="w-2"))
        assert watcher.wait_for(stored[-1].id or 0, timeout=30) is True
        # an event not stored yet: the wait runs out, but an instance runs it, so no warning
        assert watcher.wait_for(store.latest_event_id() + 1, timeout=1.2) is False
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert _warnings(caplog) == []


def test_a_tracker_that_keeps_no_owners_never_warns(caplog: pytest.LogCaptureFixture) -> None:
    class PositionsOnly(es.Tracker):
        def __init__(self) -> None:
            self.kept: dict[str, int] = {}

        def setup(self, name: str) -> None:
            self.kept.setdefault(name, 0)

        def last_processed_event_id(self, name: str) -> int:
            return self.kept.get(name, 0)

        def processed_event(self, name: str, event_id: int) -> None:
            self.kept[name] = event_id

        def positions(self) -> dict[str, int]:
            return dict(self.kept)

    caplog.set_level(logging.WARNING, logger="eventsourcery")
    processor = es.EventStreamProcessor(PositionsOnly())
    assert processor.wait_for(1, timeout=0.05) is False
    assert [r for r in caplog.records if "wait_for" in r.getMessage()] == []


def test_wait_for_async_waits_and_warns_as_wait_for_does(
        store: es.EventStore, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    caplog.set_level(logging.WARNING, logger="eventsourcery")
    store.sink(WfSeen(aggregate_id="w-1"))
    watcher = WfWatcher(store)
    watcher.setup()
    assert asyncio.run(watcher.wait_for_async(1, timeout=1.3)) is False
    assert _warnings(caplog) == ["[wf_watcher] wait_for(1): no instance runs it (it never ran "
                                 "here), so the wait will run out unless an instance starts"]
    with pytest.raises(TypeError):
        asyncio.run(watcher.wait_for_async("1"))  # type: ignore[arg-type]
    _run_until_stopped(watcher, store)
    caplog.clear()
    assert asyncio.run(watcher.wait_for_async(1, timeout=5)) is True
    assert _warnings(caplog) == []
