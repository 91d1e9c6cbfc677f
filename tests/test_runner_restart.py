"""ESPRunner restarts a child that dies (issue 19 point 3, SPEC section 4).

``restart=True`` is the default: a child that dies (here: ``kill -9``, an ``after_fork`` that
raises, a fenced child) starts again after a backoff that grows while it keeps dying and resets once
it has run for a while; ``after_subprocess_termination`` is called for every death. A child that
stopped on purpose (exit status 0, or its error handler gave up) is not restarted, nor is any child
once shutdown was requested.

The backoff policy is tested on its own, deterministically; the rest with real processes and
signals.
Every wait is bounded (LONG only expires when something hangs); no test asserts a speed, only that a
restart did not come before its wait and that a shutdown did not wait out a long backoff.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import re
import shutil
import signal
import threading
import time

import pytest

import eventsourcery as es
from tests import processing_support as ps
from tests._util import wait_until
from tests.processing_support import Tick
from tests.test_runner import (
    COUNTER,
    LONG,
    locations,
    read_text,
    run_in_this_process,
)

N_KILLS = 5
RESTARTING = re.compile(r"restarting it in ([0-9.e+-]+) s \(death (\d+) in a row\)")


def runner_log(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("ESPRunner: process ")
    ]


def restart_waits(caplog) -> list[tuple[float, int]]:
    """(wait, deaths in a row) of every "restarting it in" line the runner logged, in order."""
    return [
        (float(m[1]), int(m[2]))
        for line in runner_log(caplog)
        for m in [RESTARTING.search(line)]
        if m
    ]


class Terminations:
    """An after_subprocess_termination callback: records (processor, status, monotonic time)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ends: list[tuple[str, int, float]] = []

    def __call__(self, processor, runner, status):
        with self.lock:
            self.ends.append((processor.processor_name, status, time.monotonic()))

    def statuses(self) -> list[int]:
        with self.lock:
            return [status for _, status, _ in self.ends]


class RunnerThread:
    """runner.start() in a thread of this process (no signal handlers there); stop() ends it."""

    def __init__(self, runner: es.ESPRunner):
        self.runner = runner
        self.result: list[object] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(runner.start()), daemon=True
        )
        self.thread.start()

    def stop(self, timeout: float = LONG) -> object:
        self.runner.shutdown()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), (
            f"start() did not return within {timeout} s of shutdown()"
        )
        assert self.result, "start() raised"
        return self.result[0]


def live_pid(workdir: pathlib.Path, not_in=()) -> int | None:
    """The pid of the child that announced itself last (once it holds its lock, in
    <workdir>/<COUNTER>.starts.jsonl, written after its pid file) if it is a live process not in
    ``not_in``."""
    pids = starts(workdir)
    pid = pids[-1] if pids else None
    if pid is None or pid in not_in or not os.path.exists(f"/proc/{pid}"):
        return None
    return pid


def starts(workdir: pathlib.Path) -> list[int]:
    return [s["pid"] for s in ps.read_json_lines(str(workdir / f"{COUNTER}.starts.jsonl"))]


# --- the policy, deterministically ----------------------------------------------------------------


def test_backoff_doubles_while_a_child_keeps_dying_up_to_its_maximum_and_resets_after_a_good_run():
    backoff = es._RestartBackoff(initial=0.5, maximum=6.0, reset_after=60.0)

    quick = [backoff.next_delay(ran_for=0.01) for _ in range(6)]
    assert quick == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    assert backoff.deaths == 6
    assert backoff.next_delay(ran_for=59.9) == 6.0  # not long enough: still at the cap
    assert backoff.deaths == 7

    assert backoff.next_delay(ran_for=60.0) == 0.5  # a good run starts a new series
    assert backoff.deaths == 1
    assert [backoff.next_delay(ran_for=1.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.next_delay(ran_for=3600.0) == 0.5
    assert backoff.deaths == 1


def test_each_child_backs_off_on_its_own(tmp_path):
    runner = es.ESPRunner(
        [ps.CountingProjector(":memory:"), ps.OtherCounter(":memory:")],
        es.SQLiteEventStore(tmp_path / "events.db"),
        restart_delay=1.0,
        max_restart_delay=8.0,
    )
    first, second = (child.backoff for child in runner._children.values())
    assert first is not second
    assert [first.next_delay(0.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert second.next_delay(0.0) == 1.0


def test_restart_is_the_default_with_sensible_waits(tmp_path):
    runner = es.ESPRunner([ps.CountingProjector(":memory:")],
                          es.SQLiteEventStore(tmp_path / "e.db"))
    assert runner.restart is True
    assert 0 < runner.restart_delay <= 5 and runner.restart_delay <= runner.max_restart_delay <= 300
    assert runner.restart_reset_after >= runner.max_restart_delay


@pytest.mark.parametrize(
    "options, wrong",
    [
        ({"restart_delay": 0}, "restart_delay"),
        ({"restart_delay": -1.0}, "restart_delay"),
        ({"restart_delay": float("nan")}, "restart_delay"),
        ({"restart_delay": 10.0, "max_restart_delay": 5.0}, "max_restart_delay"),
        ({"restart_reset_after": 0}, "restart_reset_after"),
    ],
)
def test_backoff_arguments_that_would_spin_or_never_wait_are_refused(options, wrong, tmp_path):
    store = es.SQLiteEventStore(tmp_path / "e.db")
    with pytest.raises(ValueError, match=wrong):
        es.ESPRunner([ps.CountingProjector(":memory:")], store, **options)


def test_describe_exit_names_the_signal():
    assert es._describe_exit(-signal.SIGKILL) == "killed by SIGKILL (9)"
    assert es._describe_exit(1) == "exit status 1"


# --- kill -9, repeatedly, while events are sunk ---------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_child_killed_again_and_again_is_restarted_and_catches_up_with_every_event_once(
    tmp_path, backend, caplog
):
    """The default runner (restart not given) restarts the child after each of N_KILLS kill -9s,
    which land while the events just sunk are being processed; each time the processor catches
    up."""
    caplog.set_level(logging.INFO, logger="eventsourcery")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store_url, projection = locations(backend, tmp_path, "events.db", "projection.db")
    store = es.open_store(store_url)
    watcher = ps.counting_projector_class(projection)(projection)  # wait_for, from this process
    terminations = Terminations()
    runner = es.ESPRunner(
        [ps.counting_projector_class(projection)(projection, workdir=str(tmp_path))],
        es.open_store(store_url),
        start_method="spawn",
        restart_delay=0.05,
        max_restart_delay=0.4,
        after_subprocess_termination=terminations,
        max_seconds_for_processes_to_terminate=30,
    )
    running = RunnerThread(runner)
    killed: list[int] = []
    try:
        for kill in range(N_KILLS):
            assert wait_until(lambda: live_pid(tmp_path, killed) is not None, timeout=LONG), (
                f"seed {seed}: no new child after kill {kill}"
            )
            pid = live_pid(tmp_path, killed)
            stored = [
                e
                for a in range(4)
                for e in store.sink(
                    [Tick(aggregate_id=f"t{a}", n=i) for i in range(rng.randint(1, 100))]
                )
            ]
            time.sleep(rng.uniform(0, 0.2))  # somewhere in those events' processing, or after it
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            assert wait_until(lambda n=kill + 1: len(terminations.statuses()) == n, timeout=LONG)
            assert wait_until(lambda: live_pid(tmp_path, killed) is not None, timeout=LONG), (
                f"seed {seed}: no new child after kill {kill + 1}"
            )
            assert watcher.wait_for(stored[-1].id, timeout=LONG), (
                f"seed {seed}: the processor did not catch up after kill {kill + 1}"
            )
        stored = store.sink([Tick(aggregate_id="last")])
        assert watcher.wait_for(stored[-1].id, timeout=LONG)
    finally:
        ok = running.stop()

    latest = store.latest_event_id()
    got = ps.projection_of(projection)
    assert got["position"] == latest
    assert sorted(got["seen"]) == list(range(1, latest + 1)), (
        f"seed {seed}: {len(got['seen']) - latest:+d} rows: events lost or processed twice"
    )
    assert sum(got["counts"].values()) == latest
    assert len(set(starts(tmp_path))) == N_KILLS + 1  # a new pid for each restart
    assert starts(tmp_path)[:N_KILLS] == killed
    assert terminations.statuses() == [-signal.SIGKILL] * N_KILLS + [0]
    assert runner.exit_statuses == {COUNTER: [-signal.SIGKILL] * N_KILLS + [0]}
    assert ok is False  # not every end was clean
    deaths = [line for line in runner_log(caplog) if "killed by SIGKILL (9)" in line]
    assert len(deaths) == N_KILLS and all("restarting it in" in line for line in deaths), (
        runner_log(caplog)
    )
    store.close()
    watcher.close()


# --- a child that dies at once, every time --------------------------------------------------------

QUICK_DEATHS = 4


def die_at_first_starts(processor) -> None:
    """after_fork: record this start (monotonic time); raise for the first QUICK_DEATHS starts, as a
    broken import or configuration would."""
    path = os.path.join(processor.workdir, "after_fork.jsonl")
    n = len(ps.read_json_lines(path)) + 1
    ps.append_json_line(path, {"pid": os.getpid(), "at": time.monotonic()})
    if n <= QUICK_DEATHS:
        raise RuntimeError(f"setup failed (start {n})")


def test_a_child_that_dies_at_once_backs_off_to_the_cap_and_a_good_run_resets_the_wait(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="eventsourcery")
    store_path = str(tmp_path / "events.db")
    es.SQLiteEventStore(store_path).sink(Tick(aggregate_id="t"))
    projection = str(tmp_path / "projection.db")
    initial, maximum, reset_after = 0.1, 0.4, 3.0
    terminations = Terminations()
    runner = es.ESPRunner(
        [ps.CountingProjector(projection, workdir=str(tmp_path))],
        es.SQLiteEventStore(store_path),
        start_method="fork",
        after_fork=die_at_first_starts,
        after_subprocess_termination=terminations,
        restart_delay=initial,
        max_restart_delay=maximum,
        restart_reset_after=reset_after,
        max_seconds_for_processes_to_terminate=30,
    )
    running = RunnerThread(runner)
    try:
        # The fifth start lives: it processes the event, runs longer than reset_after, is killed.
        assert wait_until(lambda: live_pid(tmp_path) is not None, timeout=LONG), runner_log(caplog)
        assert wait_until(lambda: ps.projection_position(projection) == 1, timeout=LONG)
        good = live_pid(tmp_path)
        time.sleep(reset_after + 0.5)
        os.kill(good, signal.SIGKILL)
        assert wait_until(lambda: live_pid(tmp_path, [good]) is not None, timeout=LONG), runner_log(
            caplog
        )
    finally:
        running.stop()

    assert terminations.statuses() == [1] * QUICK_DEATHS + [-signal.SIGKILL, 0]
    waits = restart_waits(caplog)
    assert waits == [(0.1, 1), (0.2, 2), (0.4, 3), (0.4, 4), (0.1, 1)], runner_log(caplog)
    # Every death is logged with its status, and no restart came before its wait was over.
    log = runner_log(caplog)
    assert sum("exit status 1: restarting it in" in line for line in log) == QUICK_DEATHS
    started_at = [s["at"] for s in ps.read_json_lines(str(tmp_path / "after_fork.jsonl"))]
    assert len(started_at) == QUICK_DEATHS + 2
    died = [at for _, _, at in terminations.ends[:-1]]  # the last end is the shutdown's
    for died_at, (wait, _), next_start in zip(died, waits, started_at[1:], strict=True):
        assert next_start >= died_at + wait - 0.01, "started again before its wait was over"


# --- what is not restarted ------------------------------------------------------------------------


def test_with_restart_false_a_killed_child_is_only_reported(tmp_path):
    store_path = str(tmp_path / "events.db")
    es.SQLiteEventStore(store_path).sink(Tick(aggregate_id="t"))
    terminations = Terminations()
    runner = es.ESPRunner(
        [ps.CountingProjector(str(tmp_path / "projection.db"), workdir=str(tmp_path))],
        es.SQLiteEventStore(store_path),
        start_method="fork",
        restart=False,
        restart_delay=0.05,
        after_subprocess_termination=terminations,
    )

    def kill_the_child():
        if wait_until(lambda: live_pid(tmp_path) is not None, timeout=LONG):
            os.kill(live_pid(tmp_path), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_child, daemon=True)
    killer.start()
    ok = run_in_this_process(runner)  # returns by itself: no child left to supervise
    killer.join(LONG)

    assert ok is False
    assert terminations.statuses() == [-signal.SIGKILL]
    assert runner.exit_statuses == {COUNTER: [-signal.SIGKILL]}
    assert len(starts(tmp_path)) == 1


def test_a_child_stopped_by_sigterm_from_outside_the_runner_is_not_restarted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eventsourcery")
    store_path = str(tmp_path / "events.db")
    es.SQLiteEventStore(store_path).sink(Tick(aggregate_id="t"))
    runner = es.ESPRunner(
        [ps.CountingProjector(str(tmp_path / "projection.db"), workdir=str(tmp_path))],
        es.SQLiteEventStore(store_path),
        start_method="fork",
        restart_delay=0.05,
    )

    def stop_the_child():
        if wait_until(lambda: live_pid(tmp_path) is not None, timeout=LONG):
            os.kill(live_pid(tmp_path), signal.SIGTERM)

    stopper = threading.Thread(target=stop_the_child, daemon=True)
    stopper.start()
    ok = run_in_this_process(runner)
    stopper.join(LONG)

    assert ok is True
    assert runner.exit_statuses == {COUNTER: [0]}
    assert len(starts(tmp_path)) == 1
    assert any(
        "asked to stop" in line and "not restarting it" in line for line in runner_log(caplog)
    )


def test_a_child_whose_error_handler_gave_up_is_not_restarted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eventsourcery")
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink(Tick(aggregate_id="t"))
    store.sink(ps.Poison(aggregate_id="p"))
    store.close()
    projector = ps.CountingProjector(
        str(tmp_path / "projection.db"), workdir=str(tmp_path), error_handler_name="none"
    )
    runner = es.ESPRunner(
        [projector],
        es.SQLiteEventStore(store_path),
        start_method="fork",
        after_fork=ps.configure_child,
        restart_delay=0.05,
    )
    ok = run_in_this_process(runner)  # returns by itself once the child gave up

    assert ok is False
    assert runner.exit_statuses == {COUNTER: [es._EXIT_GAVE_UP]}
    assert len(starts(tmp_path)) == 1
    assert any("error handler gave up: not restarting it" in line for line in runner_log(caplog))


# --- shutdown while a restart is pending ----------------------------------------------------------


def test_shutdown_during_a_restart_wait_returns_at_once_and_starts_nothing(tmp_path):
    store_path = str(tmp_path / "events.db")
    es.SQLiteEventStore(store_path).sink(Tick(aggregate_id="t"))
    long_wait = 600.0
    terminations = Terminations()
    runner = es.ESPRunner(
        [ps.CountingProjector(str(tmp_path / "projection.db"), workdir=str(tmp_path))],
        es.SQLiteEventStore(store_path),
        start_method="fork",
        restart_delay=long_wait,
        max_restart_delay=long_wait,
        after_subprocess_termination=terminations,
    )
    running = RunnerThread(runner)
    try:
        assert wait_until(lambda: live_pid(tmp_path) is not None, timeout=LONG)
        os.kill(live_pid(tmp_path), signal.SIGKILL)
        assert wait_until(lambda: terminations.statuses() == [-signal.SIGKILL], timeout=LONG)
    finally:
        ok = running.stop(timeout=LONG)  # far less than long_wait: it did not wait for the restart

    assert ok is False
    assert runner.exit_statuses == {COUNTER: [-signal.SIGKILL]}
    assert len(starts(tmp_path)) == 1
    assert all(
        child.restart_at is None and child.process is None for child in runner._children.values()
    )


def test_sigterm_to_the_runner_during_a_restart_wait_stops_it_without_a_restart(tmp_path, runners):
    store_path = str(tmp_path / "events.db")
    es.SQLiteEventStore(store_path).sink(Tick(aggregate_id="t"))
    runner = runners(
        tmp_path,
        store=store_path,
        start_method="fork",
        max_seconds=30,
        restart=True,
        restart_delay=600.0,
        max_restart_delay=600.0,
        processors=[{"kind": "counter", "db": str(tmp_path / "projection.db")}],
    )
    assert wait_until(lambda: live_pid(tmp_path) is not None, timeout=LONG), runner.diagnostics()
    os.kill(live_pid(tmp_path), signal.SIGKILL)
    assert wait_until(
        lambda: runner.terminations() == [(COUNTER, -signal.SIGKILL)], timeout=LONG
    ), runner.diagnostics()

    code = runner.stop(signal.SIGTERM, timeout=LONG)  # far less than the wait

    assert code == 3, runner.diagnostics()  # start() returned False: a child was killed
    assert runner.terminations() == [(COUNTER, -signal.SIGKILL)]
    assert len(starts(tmp_path)) == 1


# --- a standby: another runner holds the processor's name -----------------------------------------


def _two_runners_on_one_store(tmp_path):
    """A store, a projection, a folder for each of two runners (a and b), and their runner spec:
    one counting projector, restarted quickly."""
    store_path = str(tmp_path / "events.db")
    projection = str(tmp_path / "projection.db")
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    spec = {
        "store": store_path,
        "start_method": "spawn",
        "max_seconds": 30,
        "restart": True,
        "restart_delay": 0.05,
        "max_restart_delay": 0.2,
        "processors": [{"kind": "counter", "db": projection, "error_handler": "constant"}],
    }
    return es.SQLiteEventStore(store_path), projection, dirs, spec


def test_two_runners_a_killed_owner_hands_over_to_the_standby_and_comes_back_as_a_standby(
    tmp_path, runners
):
    """Runner A's child owns the processor, runner B's waits as a standby. kill -9 of A's child: B's
    takes over (as a rule), A restarts its child, which waits as a standby in its turn (it neither
    dies again nor processes anything twice)."""
    store, projection, dirs, spec = _two_runners_on_one_store(tmp_path)
    a = runners(dirs[0], **spec)
    assert wait_until(lambda: a.child_pid() is not None, timeout=LONG), a.diagnostics()
    b = runners(dirs[1], **spec)
    assert wait_until(lambda: "standby" in read_text(dirs[1] / f"{COUNTER}.log"), timeout=LONG), (
        b.diagnostics()
    )
    first = store.sink([Tick(aggregate_id="t", n=i) for i in range(100)])
    assert wait_until(lambda: ps.projection_position(projection) == first[-1].id, timeout=LONG)

    killed = a.child_pid()
    os.kill(killed, signal.SIGKILL)
    # B's standby takes over, and A's new child waits as a standby (A's first child owned the
    # name: it never logged "standby"); or, rarely, A's new child is first to take the name back
    # from the killed one, and B's stays a standby. Either way one owns the name, the other waits.
    assert wait_until(
        lambda: b.child_pid() is not None or a.child_pid() not in (None, killed), timeout=LONG
    ), a.diagnostics() + b.diagnostics()
    if b.child_pid() is not None:
        assert wait_until(
            lambda: "standby" in read_text(dirs[0] / f"{COUNTER}.log"), timeout=LONG
        ), a.diagnostics()
    second = store.sink([Tick(aggregate_id="t", n=i) for i in range(100)])
    assert wait_until(lambda: ps.projection_position(projection) == second[-1].id, timeout=LONG)
    assert a.terminations() == [(COUNTER, -signal.SIGKILL)]  # its new child did not die again

    assert a.stop(signal.SIGTERM) == 3  # its first child was killed
    assert b.stop(signal.SIGTERM) == 0
    assert a.terminations() == [(COUNTER, -signal.SIGKILL), (COUNTER, 0)], a.diagnostics()
    assert b.terminations() == [(COUNTER, 0)], b.diagnostics()
    got = ps.projection_of(projection)
    assert sorted(got["seen"]) == list(range(1, second[-1].id + 1))
    store.close()


def test_a_child_fenced_by_another_instance_is_restarted_and_waits_as_a_standby(tmp_path, runners):
    """A tmp cleaner removes the SQLite store's lock directory, and runner B's child takes the name
    from runner A's. A's child is fenced at its next commit (exit status 1), is restarted, and waits
    as a standby until B's child is killed; then one of them takes over. Every event is counted
    once."""
    store, projection, dirs, spec = _two_runners_on_one_store(tmp_path)
    a = runners(dirs[0], **spec)
    assert wait_until(lambda: a.child_pid() is not None, timeout=LONG), a.diagnostics()
    first = store.sink([Tick(aggregate_id="t", n=i) for i in range(50)])
    assert wait_until(lambda: ps.projection_position(projection) == first[-1].id, timeout=LONG)
    shutil.rmtree(spec["store"] + ".locks")
    b = runners(dirs[1], **spec)
    assert wait_until(lambda: b.child_pid() is not None, timeout=LONG), (
        b.diagnostics()
    )  # B took the name
    second = store.sink([Tick(aggregate_id="t", n=i) for i in range(50)])
    assert wait_until(lambda: a.terminations() == [(COUNTER, 1)], timeout=LONG), a.diagnostics()
    assert wait_until(lambda: "standby" in read_text(dirs[0] / f"{COUNTER}.log"), timeout=LONG), (
        a.diagnostics()
    )
    assert "exit status 1: restarting it in" in read_text(a.out_path)
    assert wait_until(lambda: ps.projection_position(projection) == second[-1].id, timeout=LONG)

    os.kill(b.child_pid(), signal.SIGKILL)
    third = store.sink([Tick(aggregate_id="t", n=i) for i in range(50)])
    assert wait_until(lambda: ps.projection_position(projection) == third[-1].id, timeout=LONG), (
        a.diagnostics() + b.diagnostics()
    )

    assert a.stop(signal.SIGTERM) == 3  # its first child was fenced
    assert b.stop(signal.SIGTERM) == 3  # its first child was killed
    assert a.terminations() == [(COUNTER, 1), (COUNTER, 0)], a.diagnostics()
    assert b.terminations() == [(COUNTER, -signal.SIGKILL), (COUNTER, 0)], b.diagnostics()
    got = ps.projection_of(projection)
    assert sorted(got["seen"]) == list(range(1, third[-1].id + 1))
    store.close()
