"""ESPRunner with real processes, real files and real signals (issue 3 items 6-8).

The runner runs either in this process (when the test only needs start() to
return) or in a subprocess of its own (when the test signals the runner):
``python -c 'from tests.processing_support import runner_main; ...'`` with a
JSON spec. Children report through files in the test's tmp_path: a pid file
written by setup() once the processor holds its lock, JSON lines for child
terminations, errors and critical errors, and a log file per processor.

Both start methods are used: "fork" and "spawn". Waits are bounded polls that
only expire when something hangs; nothing asserts a speed.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import eventsourcery as es
from tests import processing_support as ps
from tests._util import everything_in, wait_until
from tests.processing_support import Ping, Poison, Pong, Slow, Tick

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPAWN = multiprocessing.get_context("spawn")
LONG = 120.0  # seconds; bounds waits that only expire when something hangs
N_EVENTS = 20_000
N_KILLS = 5
COUNTER = ps.CountingProjector.processor_name


def read_text(path) -> str:
    try:
        return pathlib.Path(path).read_text()
    except FileNotFoundError:
        return ""


class RunnerProcess:
    """An ESPRunner in a subprocess of its own, described by a JSON spec (see ps.runner_main)."""

    def __init__(self, workdir: pathlib.Path, new_session: bool = False, **spec):
        self.workdir = workdir
        spec.setdefault("workdir", str(workdir))
        spec_path = workdir / "runner-spec.json"
        spec_path.write_text(json.dumps(spec))
        self.out_path = workdir / "runner.out"
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from tests.processing_support import "
                                       "runner_main; runner_main(sys.argv[1])", str(spec_path)],
                cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session)

    def child_pid(self, name=COUNTER):
        return ps.read_pid(str(self.workdir / f"{name}.pid"))

    def terminations(self):
        return [(t["name"], t["status"])
                for t in ps.read_json_lines(str(self.workdir / "terminations.jsonl"))]

    def diagnostics(self) -> str:
        logs = "".join(f"\n--- {p.name}\n{read_text(p)[-3000:]}"
                       for p in sorted(self.workdir.glob("*.log")))
        return f"runner output:\n{read_text(self.out_path)[-3000:]}{logs}"

    def stop(self, sig=signal.SIGTERM, timeout=LONG, group=False) -> int:
        """Signal the runner (or, with ``group``, its whole process group, as Ctrl-C in a terminal
        does) and wait for it to exit; returns its exit code."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the runner did not exit within {timeout} s of signal {sig}\n"
                        f"{self.diagnostics()}")

    def cleanup(self):
        """After a failure: kill the runner's live children (by their pid files), then the
        runner."""
        if self.proc.poll() is not None:
            return
        for pid_file in self.workdir.glob("*.pid"):
            pid = ps.read_pid(str(pid_file))
            stat = read_text(f"/proc/{pid}/stat")
            # its parent
            if pid and stat and int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                ps.kill_quietly(pid)
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def runners():
    started = []
    yield lambda workdir, **spec: started.append(RunnerProcess(workdir, **spec)) or started[-1]
    for r in started:
        r.cleanup()


def start_appender(store_path, kind, seed, done_path):
    proc = SPAWN.Process(target=ps.append_events,
                         args=(store_path, kind, N_EVENTS, 8, seed, done_path, 0.004), daemon=True)
    proc.start()
    return proc


def kill_at_random_moments(runner, rng, progress, name=COUNTER):
    """SIGKILL the processor's child N_KILLS times, each a random moment after it (re)started and
    processed.

    Returns the killed pids. ``progress()`` is the processor's position.
    """
    killed = []
    for _ in range(N_KILLS):
        assert wait_until(lambda: runner.child_pid(name) not in (None, *killed), timeout=LONG), (
            f"no new child after killing {killed}\n{runner.diagnostics()}")
        pid = runner.child_pid(name)
        before = progress()
        # let it get to work, when there is work
        wait_until(lambda b=before: progress() > b, timeout=2.0)
        time.sleep(rng.uniform(0, 0.3))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    # The runner brings it back once more; waiting for that also keeps the final SIGTERM away from a
    # child that is still starting (see test_term_right_after_a_child_started_is_not_lost).
    assert wait_until(lambda: runner.child_pid(name) not in (None, *killed), timeout=LONG), (
        f"no new child after killing {killed}\n{runner.diagnostics()}")
    return killed


# --- (1) a counting projector, SIGKILLed while events are appended --------------------------------


def locations(backend, tmp_path, *names):
    """SQLite file paths under tmp_path, or (postgres) postgresql://...?schema= URLs of fresh
    schemas."""
    if backend == "postgres":
        from tests import pg_support  # skips without a server (fails when CI=true)

        return [pg_support.store_url(pg_support.new_schema()) for _ in names]
    return [str(tmp_path / name) for name in names]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_projector_is_exactly_once_across_sigkills_under_a_restarting_runner(
        tmp_path, runners, backend):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store_path, projection, replay_path = locations(backend, tmp_path, "events.db", "projection.db",
                                                    "replay.db")
    es.open_store(store_path).close()
    runner = runners(tmp_path, store=store_path, start_method="fork", max_seconds=30, restart=True,
                     restart_delay=0.05, max_restart_delay=0.2,
                     processors=[{"kind": "counter", "db": projection}])
    done = str(tmp_path / "appended")
    appender = start_appender(store_path, "tick", seed, done)

    killed = kill_at_random_moments(runner, rng, lambda: ps.projection_position(projection))

    appender.join(LONG)
    assert os.path.exists(done), read_text(done + ".error") or "the appender did not finish"
    store = es.open_store(store_path)
    latest = store.latest_event_id()
    assert latest == N_EVENTS
    assert wait_until(lambda: ps.projection_position(projection) == latest, timeout=LONG), (
        f"seed {seed}: position {ps.projection_position(projection)} != {latest}\n"
        f"{runner.diagnostics()}")
    runner.stop(signal.SIGTERM)

    assert (runner.terminations() == [(COUNTER, -signal.SIGKILL)] * N_KILLS
            + [(COUNTER, 0)]), runner.diagnostics()
    starts = ps.read_json_lines(str(tmp_path / f"{COUNTER}.starts.jsonl"))
    assert [s["pid"] for s in starts][:N_KILLS] == killed

    replay = ps.counting_projector_class(replay_path)(replay_path)
    replay.subscribe_to(store, stop=lambda: replay.last_processed_event_id >= latest)
    got, expected = ps.projection_of(projection), ps.projection_of(replay_path)
    assert got["position"] == latest
    assert len(got["seen"]) == latest, (f"seed {seed}: {len(got['seen']) - latest:+d} effects "
                                        "(lost or repeated)")
    assert sorted(got["seen"]) == list(range(1, latest + 1))
    assert got["counts"] == expected["counts"]
    assert sum(got["counts"].values()) == latest
    assert f"[{COUNTER}] processed up to event {latest}" in read_text(tmp_path / f"{COUNTER}.log")
    store.close()


# --- (2) a reactor whose position lives in the event store ----------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_reactor_emits_exactly_once_across_sigkills_under_a_restarting_runner(
        tmp_path, runners, backend):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    (store_path,) = locations(backend, tmp_path, "events.db")
    store = es.open_store(store_path)
    name = ps.PingReactor.processor_name
    runner = runners(tmp_path, store=store_path, start_method="spawn", max_seconds=30, restart=True,
                     restart_delay=0.05, max_restart_delay=0.2,
                     processors=[{"kind": "ping_reactor"}])
    done = str(tmp_path / "appended")
    appender = start_appender(store_path, "ping", seed, done)
    tracker = store.tracker()

    kill_at_random_moments(runner, rng, lambda: tracker.last_processed_event_id(name), name=name)

    appender.join(LONG)
    assert os.path.exists(done), read_text(done + ".error") or "the appender did not finish"
    last_ping = store.latest_event_id([Ping])
    assert wait_until(lambda: tracker.last_processed_event_id(name) >= last_ping, timeout=LONG), (
        f"seed {seed}: position {tracker.last_processed_event_id(name)} != {last_ping}\n"
        f"{runner.diagnostics()}")
    runner.stop(signal.SIGTERM)
    assert (runner.terminations() == [(name, -signal.SIGKILL)] * N_KILLS
            + [(name, 0)]), runner.diagnostics()

    events = everything_in(store)
    pings = {e.id: e for e in events if isinstance(e, Ping)}
    pongs = [e for e in events if isinstance(e, Pong)]
    assert len(pings) == N_EVENTS
    answered = collections.Counter(p.ping_id for p in pongs)
    repeated = {i: n for i, n in answered.items() if n > 1}
    assert not repeated, (f"seed {seed}: pings answered more than once: "
                          f"{sorted(repeated.items())[:10]}")
    assert set(answered) == set(pings), (f"seed {seed}: {len(set(pings) - set(answered))} pings "
                                         "unanswered")
    for pong in pongs:
        cause = pings[pong.ping_id]
        assert (pong.causation_id, pong.correlation_id) == (cause.uuid, cause.uuid)
    assert tracker.last_processed_event_id(name) >= max(pings)  # past the pongs it read over, too
    effects = collections.Counter(int(x) for x in read_text(tmp_path / "effects.txt").split())
    assert set(effects) == set(pings)  # outside effects: at least once (a kill may repeat some)
    store.close()


# --- (3) SIGTERM to the runner during a slow batch ------------------------------------------------


def test_sigterm_to_the_runner_during_a_slow_batch_finishes_the_batch_and_stops_cleanly(
        tmp_path, runners):
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink([Slow(aggregate_id="slow", seconds=0.4) for _ in range(8)])
    projection = str(tmp_path / "projection.db")
    max_seconds = 20
    runner = runners(tmp_path, store=store_path, start_method="spawn", max_seconds=max_seconds,
                     processors=[{"kind": "counter", "db": projection}])
    markers = str(tmp_path / f"{COUNTER}.in_batch.jsonl")
    assert wait_until(lambda: len(ps.read_json_lines(markers)) >= 1,
                      timeout=LONG), runner.diagnostics()
    store.sink([Tick(aggregate_id="late") for _ in range(5)])  # the next batch, after the slow one

    code = runner.stop(signal.SIGTERM, timeout=max_seconds + 15)

    assert code == 0, f"start() did not return True\n{runner.diagnostics()}"
    assert runner.terminations() == [(COUNTER, 0)]
    assert len(ps.read_json_lines(markers)) == 8  # the batch ran once, to its end
    got = ps.projection_of(projection)
    assert got["seen"] == list(range(1, got["position"] + 1)), "rows do not match the position"
    assert got["position"] == 8, "the processor did not stop after the batch it was in"
    assert got["counts"] == {"slow": 8}
    log = read_text(tmp_path / f"{COUNTER}.log")
    assert f"[{COUNTER}] processed up to event 8" in log
    store.close()


# --- (5) TERM, then KILL after max_seconds_for_processes_to_terminate -----------------------------


def test_a_child_that_ignores_term_is_killed_after_the_timeout(tmp_path, runners):
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink([Tick(aggregate_id="t") for _ in range(3)])
    store.sink(Slow(aggregate_id="slow", seconds=LONG * 10))  # longer than any wait here
    projection = str(tmp_path / "projection.db")
    runner = runners(tmp_path, store=store_path, start_method="fork", max_seconds=1.0,
                     processors=[{"kind": "counter", "db": projection}])
    markers = str(tmp_path / f"{COUNTER}.in_batch.jsonl")
    assert wait_until(lambda: len(ps.read_json_lines(markers)) == 1,
                      timeout=LONG), runner.diagnostics()
    child = runner.child_pid()

    code = runner.stop(signal.SIGTERM, timeout=1.0 + 30)

    assert runner.terminations() == [(COUNTER, -signal.SIGKILL)], runner.diagnostics()
    assert code != 0  # start() returned False: a child did not end cleanly
    assert (not os.path.exists(f"/proc/{child}")
            or "zombie" in read_text(f"/proc/{child}/status").lower())
    got = ps.projection_of(projection)
    # the killed batch left nothing
    assert (got["position"], got["seen"], got["counts"]) == (0, [], {})
    store.close()


# --- (4) a poison event with NoRetry; (6) log lines; start() in this process ----------------------


def run_in_this_process(runner, watchdog=LONG):
    """runner.start() here, with a watchdog that shuts it down if it hangs; returns start()'s
    value."""
    timer = threading.Timer(watchdog, runner.shutdown)
    timer.start()
    try:
        return runner.start()
    finally:
        timer.cancel()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_poison_event_with_no_retry_ends_the_child_and_the_runner_reports_it(
        tmp_path, start_method):
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink([Tick(aggregate_id="t") for _ in range(4)])
    store.sink(Poison(aggregate_id="p"))
    store.sink([Tick(aggregate_id="t") for _ in range(2)])
    projection = str(tmp_path / "projection.db")
    projector = ps.CountingProjector(projection, workdir=str(tmp_path), batch_size=1,
                                     error_handler_name="none")
    projector.setup()  # opens its connection here, in the parent: the child must open its own
    terminations = []

    runner = es.ESPRunner([projector], es.SQLiteEventStore(store_path),
                          max_seconds_for_processes_to_terminate=10,
                          after_fork=ps.configure_child, start_method=start_method,
                          after_subprocess_termination=lambda p, r, status: terminations.append(
                              (p.processor_name, r, status)))
    ok = run_in_this_process(runner)

    assert ok is False
    assert len(terminations) == 1
    name, reported_runner, status = terminations[0]
    assert (name, reported_runner) == (COUNTER, runner)
    assert status != 0 and status > 0, f"the child should exit with an error status, not {status}"
    assert runner.exit_statuses == {COUNTER: [status]}
    critical = ps.read_json_lines(str(tmp_path / "critical.jsonl"))
    assert len(critical) == 1, critical
    assert critical[0]["name"] == COUNTER and critical[0]["pid"] != os.getpid()
    assert critical[0]["type"] == "EventProcessingError"
    assert critical[0]["cause"] == "RuntimeError: poison event 5"
    errors = ps.read_json_lines(str(tmp_path / "errors.jsonl"))
    assert [(e["type"], e["message"]) for e in errors] == [("RuntimeError", "poison event 5")]
    got = ps.projection_of(projection)
    # batch_size=1: events before the poison
    assert (got["position"], got["seen"]) == (4, [1, 2, 3, 4])
    store.close()


def test_log_lines_and_process_title_name_the_processor_and_a_clean_stop_returns_true(tmp_path):
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink([Tick(aggregate_id="t", n=i) for i in range(25)])
    projection = str(tmp_path / "projection.db")
    projector = ps.CountingProjector(projection, workdir=str(tmp_path))
    runner = es.ESPRunner([projector], es.SQLiteEventStore(store_path),
                          after_fork=ps.configure_child, start_method="spawn")
    seen = {}

    def watch():
        try:
            if wait_until(lambda: ps.projection_position(projection) == 25, timeout=LONG):
                pid = ps.read_pid(str(tmp_path / f"{COUNTER}.pid"))
                seen["comm"] = read_text(f"/proc/{pid}/comm").strip()
                seen["running"] = es.processor_statuses(
                    store, es.SQLiteTracker(projection))[0].running
        finally:
            runner.shutdown()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ok = run_in_this_process(runner)
    watcher.join(LONG)

    assert ok is True
    assert runner.exit_statuses == {COUNTER: [0]}
    log = read_text(tmp_path / f"{COUNTER}.log")
    assert f"[{COUNTER}] processed up to event 25" in log
    assert seen.get("running") is True
    if os.path.exists("/proc/self/comm"):
        assert COUNTER[:8] in seen.get("comm", ""), seen
    (status,) = es.processor_statuses(store, es.SQLiteTracker(projection))
    assert (status.name, status.position, status.lag, status.running) == (COUNTER, 25, 0, False)
    store.close()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_term_right_after_a_child_started_is_not_lost(tmp_path, start_method):
    """shutdown() (or SIGTERM/SIGINT to the runner) right after a child was started: the child has
    done nothing yet, so it must stop at once and count as a clean stop, neither be killed by the
    TERM (spawn: exit status -15, start() returns False) nor ignore it (fork: it inherits the
    runner's own handler until it installs its own, so the TERM is swallowed and the child is KILLed
    after max_seconds_for_processes_to_terminate).

    The runner runs in a fresh interpreter (ps.early_shutdown_main), as in production: there the
    first spawned child also starts multiprocessing's resource tracker, which unblocks TERM and INT
    in the parent. A forked child is held 0.5 s in an at-fork hook (before ESPRunner's code runs in
    it) so that the TERM always lands in that window."""
    store_path = str(tmp_path / "events.db")
    es.SQLiteEventStore(store_path).close()
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.processing_support import "
                               "early_shutdown_main; early_shutdown_main(*sys.argv[1:])",
         store_path, str(tmp_path), start_method],
        cwd=str(ROOT), capture_output=True, text=True, timeout=LONG)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    statuses = report["exit_statuses"][COUNTER]
    assert statuses != [-signal.SIGKILL], "the child ignored the TERM and was KILLed"
    assert report["ok"] is True, ("start() returned False after its own shutdown; exit statuses "
                                  f"{statuses}")


def test_a_runner_that_fails_to_start_a_child_leaves_no_child_running(tmp_path):
    """The second processor cannot be sent to a spawned child (its database is an open connection):
    start() raises, and the first processor's child, already started, must not be left running
    without its runner."""
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink(Tick(aggregate_id="t"))
    good = ps.CountingProjector(str(tmp_path / "projection.db"), workdir=str(tmp_path))
    unsendable = ps.OtherCounter(sqlite3.connect(str(tmp_path / "other.db")))
    runner = es.ESPRunner([good, unsendable], es.SQLiteEventStore(store_path), start_method="spawn",
                          max_seconds_for_processes_to_terminate=5)
    try:
        with pytest.raises(TypeError, match="open connection"):
            run_in_this_process(runner)
        left = [p for p in multiprocessing.active_children() if p.name.startswith("eventsourcery:")]
        assert left == [], f"children left running after start() raised: {left}"
    finally:
        for p in multiprocessing.active_children():
            if p.name.startswith("eventsourcery:"):
                p.kill()
                p.join()
        store.close()


def test_a_failing_after_subprocess_termination_callback_neither_leaks_children_nor_signal_handlers(
        tmp_path):
    """The user's callback raises for every child that ends. Whether start() then raises or not,
    every child is reaped and recorded, and the runner's SIGTERM/SIGINT handlers are replaced by the
    previous ones."""
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink(Tick(aggregate_id="t"))
    processors = [ps.CountingProjector(str(tmp_path / "projection.db"), workdir=str(tmp_path)),
                  ps.OtherCounter(str(tmp_path / "other.db"), workdir=str(tmp_path))]

    def failing_callback(processor, runner, status):
        raise RuntimeError(f"callback failed for {processor.processor_name}")

    runner = es.ESPRunner(processors, es.SQLiteEventStore(store_path), start_method="spawn",
                          max_seconds_for_processes_to_terminate=10,
                          after_subprocess_termination=failing_callback)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    runner.shutdown()
    try:
        try:
            run_in_this_process(runner)
        except RuntimeError:
            pass  # raising the callback's error is fine; what it leaves behind is not
        left = [p for p in multiprocessing.active_children() if p.name.startswith("eventsourcery:")]
        assert left == [], f"children left running: {left}"
        assert {sig: signal.getsignal(sig)
                for sig in before} == before, "the runner's signal handlers stayed"
        assert sorted(name for name, codes in runner.exit_statuses.items() if codes) == sorted(
            p.processor_name
                for p in processors), f"not every end was recorded: {runner.exit_statuses}"
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for p in multiprocessing.active_children():
            if p.name.startswith("eventsourcery:"):
                p.kill()
                p.join()
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_a_signal_to_the_whole_process_group_is_a_clean_stop(tmp_path, runners, sig):
    """Ctrl-C in a terminal signals the runner and its children at once; then the runner TERMs the
    children, which may be exiting already. Every child must still end with status 0."""
    store_path = str(tmp_path / "events.db")
    store = es.SQLiteEventStore(store_path)
    store.sink([Tick(aggregate_id="t") for _ in range(3)])
    projection = str(tmp_path / "projection.db")
    runner = runners(tmp_path, new_session=True, store=store_path, start_method="spawn",
                     max_seconds=20, processors=[{"kind": "counter", "db": projection}])
    assert wait_until(lambda: ps.projection_position(projection) == 3,
                      timeout=LONG), runner.diagnostics()

    code = runner.stop(sig, timeout=35, group=True)

    assert code == 0, f"start() did not return True\n{runner.diagnostics()}"
    assert runner.terminations() == [(COUNTER, 0)]
    store.close()
