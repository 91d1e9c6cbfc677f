"""Concurrent first opens of one new SQLite file: processes that open it at once take turns.

Switching a new file to WAL needs it to itself, and SQLite answers BUSY *at once* to a connection
that asks while another does the same (waiting there could deadlock: busy_timeout does not apply).
Such an open is tried again with a bounded backoff of the library's own, so every opener succeeds,
on a store's file and on a projector's own file alike, even with more processes than cores and the
cores busy; and an open that never gets through says what happened (how many tries, over how long,
at which step), instead of claiming it waited out busy_timeout.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
import traceback

import pytest

import eventsourcery as es
from tests.events import ItemAdded

BOUND = 60.0  # seconds any one wait may take; reached only when something hangs
PROCESSES = max(12, 3 * (os.cpu_count() or 1))  # more than cores
FILES = 40  # new files per test, each opened by PROCESSES processes at once
HOG_SECONDS = 3.0


class _Sizes(es.Projector):
    """A projector whose own file (its tables and its position) is created by its first
    ``setup()``."""

    processor_name = "first_open_sizes"
    schema = "CREATE TABLE IF NOT EXISTS sizes (aggregate_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"

    @es.on(ItemAdded)
    def _added(self, event):
        self.db.execute(f"INSERT INTO sizes VALUES ({self.placeholder}, 1) ON CONFLICT "
                        "(aggregate_id) DO UPDATE SET n = n + 1", (event.aggregate_id,))


def _open_store(path: str, worker: int) -> None:
    store = es.SQLiteEventStore(path)
    try:
        store.sink(ItemAdded(aggregate_id=f"w{worker}", title="opened"))
        store.latest_event_id()
    finally:
        store.close()


def _open_projector(path: str, worker: int) -> None:
    projector = _Sizes(path)
    try:
        projector.setup()
        projector.process_batch([ItemAdded(aggregate_id=f"w{worker}", title="opened",
                                           id=worker + 1)])
    finally:
        projector.close()


def _opener(kind: str, paths: list[str], worker: int, start, out) -> None:
    """One process: for each new file in turn, wait for the others, then open it; report "ok" or the
    error, per file."""
    for path in paths:
        try:
            start.wait(BOUND)
            (_open_store if kind == "store" else _open_projector)(path, worker)
            out.put((path, worker, "ok"))
        except BaseException as exc:  # reported to the parent, which asserts
            out.put((path, worker, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _hog(until: float) -> None:
    while time.monotonic() < until:
        pass


def _rounds(kind: str, tmp_path) -> list[str]:
    """FILES new files, each opened by PROCESSES processes at once (they wait for each other before
    each file), beside a CPU hog on every core; the failures reported (empty when every open
    succeeded)."""
    context = multiprocessing.get_context("fork")
    paths = [str(tmp_path / f"{kind}-{n}.db") for n in range(FILES)]
    start = context.Barrier(PROCESSES)
    out = context.Queue()
    hogs = [context.Process(target=_hog, args=(time.monotonic() + HOG_SECONDS,), daemon=True)
            for _ in range(os.cpu_count() or 1)]
    openers = [context.Process(target=_opener, args=(kind, paths, worker, start, out))
               for worker in range(PROCESSES)]
    results: dict[str, dict[int, str]] = {path: {} for path in paths}
    try:
        for process in hogs + openers:
            process.start()
        for _ in range(FILES * PROCESSES):
            path, worker, result = out.get(timeout=BOUND)
            results[path][worker] = result
    finally:
        for process in openers + hogs:
            process.join(HOG_SECONDS + BOUND)
            if process.is_alive():
                process.kill()
                process.join(BOUND)
    failures = [f"{os.path.basename(path)}, process {w}: {r}" for path in paths
                for w, r in sorted(results[path].items()) if r != "ok"]
    for path in paths:  # what each opener wrote is there, once
        opened = sorted(f"w{w}" for w, r in results[path].items() if r == "ok")
        if kind == "store":
            with es.SQLiteEventStore(path) as store:
                assert sorted(e.aggregate_id for e in store.get_next_from(1)) == opened
        else:
            conn = sqlite3.connect(path)
            try:
                assert sorted(row[0]
                              for row in conn.execute("SELECT aggregate_id FROM sizes")) == opened
            finally:
                conn.close()
    return failures


@pytest.mark.parametrize("kind", ["store", "projector"])
def test_processes_opening_one_new_file_at_once_on_busy_cores_all_succeed(kind, tmp_path):
    failures = _rounds(kind, tmp_path)
    assert failures == [], "\n".join(failures[:3])


# --- the retries and the message, shown deterministically -----------------------------------------


def _busy_first(times: int):
    """A ``prepare`` hook that answers as SQLite does to a connection that must not wait (BUSY, at
    once) ``times`` times, then does nothing; ``calls`` counts its calls."""
    calls = []

    def prepare(conn: sqlite3.Connection) -> None:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise sqlite3.OperationalError("database is locked")
    return prepare, calls


def test_an_open_answered_busy_at_once_is_tried_again_until_it_gets_through(tmp_path):
    prepare, calls = _busy_first(4)
    database = es.SQLiteDatabase(tmp_path / "p.db", prepare=prepare, busy_timeout=10)
    database.ensure_open()
    with database.transaction() as conn:
        conn.execute("CREATE TABLE t (x)")
    database.close()
    assert len(calls) == 5
    pauses = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    # it paused between tries (2 ms and growing, with jitter)
    assert all(p > 0.0005 for p in pauses)


def test_an_open_that_never_gets_through_says_what_happened_once_busy_timeout_has_passed(tmp_path):
    prepare, calls = _busy_first(10**9)
    database = es.SQLiteDatabase(tmp_path / "p.db", prepare=prepare, busy_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(es.StoreError) as caught:
        database.ensure_open()
    waited = time.monotonic() - started
    message = str(caught.value)
    assert 0.2 <= waited < BOUND
    assert len(calls) > 3  # tried again and again, not once
    assert f"through {len(calls)} tries over" in message
    assert "other connections kept it locked while it was being opened" in message
    assert "create or check its schema" in message  # the step that was refused
    assert "busy_timeout=0.3 s" in message
    assert "stayed locked by another writer for busy_timeout" not in message
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
