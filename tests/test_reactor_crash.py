"""The README's reactor patterns under ``kill -9`` at random moments (issue 19 point 1).

A reactor whose position lives in the event store's database writes its own
tables, emits an event and has an effect outside the database for every
event it handles. Its ESPRunner (in a subprocess of its own session, with
the reactor in a child of it) is killed with SIGKILL, runner and child
together, at random moments while it works, and a new runner is started
each time (this test does not rely on the runner's own restarts). Then:
every emission is stored exactly once, every table row is written exactly
once, and the outside effect happened at least once per event and at most
once more per kill.

Two reactors follow the README: ``Mailer`` checks a table keyed by the event's
uuid before its effect (the idempotent-reactor pattern); ``Notifier`` writes
no guard at all and relies on emission being exactly-once with its position
(its effect is idempotent at its target, keyed by the event's uuid).
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

import eventsourcery as es
from tests import pg_support
from tests._util import wait_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
N_EVENTS = 1_500
N_KILLS = 30
LONG = 60.0  # seconds; bounds waits that only expire when something hangs


class Issued(es.Event, type="reactor_crash.issued"):
    n: int


class Mailed(es.Event, type="reactor_crash.mailed"):
    n: int


class Notified(es.Event, type="reactor_crash.notified"):
    n: int


def _effect(workdir: str, what: str, event: es.Event) -> None:
    """An effect outside the database: one line appended to a file (it survives SIGKILL)."""
    with open(os.path.join(workdir, f"{what}.effects"), "a") as f:
        f.write(f"{event.uuid}\n")
    time.sleep(0.001)  # the outside world takes its time


class Mailer(es.Reactor):
    """The README's idempotent reactor: check the table, do the effect, write the row, emit."""

    processor_name = "crash_mailer"
    emits_events = [Mailed]
    schema = """CREATE TABLE IF NOT EXISTS crash_mailed (event_uuid TEXT PRIMARY KEY);
                CREATE TABLE IF NOT EXISTS crash_mail_log (event_uuid TEXT NOT NULL)"""

    def __init__(self, store: es.EventStore, workdir: str) -> None:
        super().__init__(store)
        self.workdir = workdir

    @es.on(Issued)
    def _issued(self, event: Issued) -> None:
        p = self.placeholder
        seen = f"SELECT 1 FROM crash_mailed WHERE event_uuid = {p}"
        if self.db.execute(seen, (event.uuid,)).fetchone():
            return
        _effect(self.workdir, "mail", event)
        self.db.execute(f"INSERT INTO crash_mailed VALUES ({p})", (event.uuid,))
        self.db.execute(f"INSERT INTO crash_mail_log VALUES ({p})", (event.uuid,))
        self.emit_event(Mailed(aggregate_id=event.aggregate_id, n=event.n))


class Notifier(es.Reactor):
    """The README's advice: the effect idempotent at its target, always ``emit_event``."""

    processor_name = "crash_notifier"
    emits_events = [Notified]

    def __init__(self, store: es.EventStore, workdir: str) -> None:
        super().__init__(store)
        self.workdir = workdir

    @es.on(Issued)
    def _issued(self, event: Issued) -> None:
        _effect(self.workdir, "notify", event)
        self.emit_event(Notified(aggregate_id=event.aggregate_id, n=event.n))


def run_runner(target: str, workdir: str) -> None:
    """Entry point of a runner subprocess: ESPRunner with both reactors until SIGTERM or SIGKILL."""
    es.configure(error_handler=es.NoRetry)
    store = es.open_store(target)
    runner = es.ESPRunner([Mailer(store, workdir), Notifier(store, workdir)], store,
                          max_seconds_for_processes_to_terminate=LONG)
    sys.exit(0 if runner.start() else 3)


def _start_runner(target: str, workdir: pathlib.Path, log) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_reactor_crash import run_runner; "
         "run_runner(sys.argv[1], sys.argv[2])", target, str(workdir)],
        cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _lines(path: pathlib.Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def _effects(workdir: pathlib.Path) -> int:
    return len(_lines(workdir / "mail.effects")) + len(_lines(workdir / "notify.effects"))


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return f"{pg_support.require_postgres()}?schema={pg_support.new_schema()}"


def test_reactor_patterns_are_exactly_once_across_sigkills(target, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    rng = random.Random(19)
    store = es.open_store(target)
    issued: list[es.Event] = []
    for start in range(0, N_EVENTS, 100):  # one aggregate per 100 events
        issued += store.sink([Issued(aggregate_id=f"inv-{start}", n=n)
                              for n in range(start, start + 100)])
    uuids = {e.uuid for e in issued}
    last_id = issued[-1].id
    log_path = tmp_path / "runner.log"
    kills = 0
    with open(log_path, "ab") as log:
        runner = _start_runner(target, workdir, log)
        try:
            while kills < N_KILLS:
                before = _effects(workdir)
                # let the new runner get to work (when there is work left), then kill it at a
                # random moment
                wait_until(lambda b=before: _effects(workdir) > b, timeout=LONG)
                time.sleep(rng.uniform(0.0, 0.15))
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait(LONG)
                kills += 1
                runner = _start_runner(target, workdir, log)
            for reactor in (Mailer(store, str(workdir)), Notifier(store, str(workdir))):
                assert reactor.wait_for(last_id, timeout=LONG), (
                    f"{reactor.processor_name} stopped short of event {last_id}\n"
                    f"{log_path.read_text()[-3000:]}")
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(LONG) == 0, log_path.read_text()[-3000:]
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait(LONG)

    events = []
    next_id = 1
    while page := store.get_next_from(next_id, limit=1000):
        events += page
        next_id = page[-1].id + 1
    for emitted_type, effects in ((Mailed, "mail.effects"), (Notified, "notify.effects")):
        causes = collections.Counter(e.causation_id for e in events if isinstance(e, emitted_type))
        what = emitted_type.__name__
        assert set(causes) == uuids, f"{what}: {len(uuids - set(causes))} emissions lost"
        assert set(causes.values()) == {1}, f"{what} emitted twice: {causes.most_common(3)}"
        done = collections.Counter(_lines(workdir / effects))
        assert set(done) == uuids, f"{effects}: {len(uuids - set(done))} effects never happened"
        assert sum(done.values()) <= len(uuids) + kills, f"{effects}: {sum(done.values())} effects"
    database = Mailer(store, str(workdir)).database
    rows = collections.Counter(
        r[0] for r in database.fetch_all("SELECT event_uuid FROM crash_mail_log"))
    assert set(rows) == uuids, f"{len(uuids - set(rows))} rows lost"
    assert set(rows.values()) == {1}, f"rows written twice: {rows.most_common(3)}"
    assert {r[0] for r in database.fetch_all("SELECT event_uuid FROM crash_mailed")} == uuids
    store.close()
