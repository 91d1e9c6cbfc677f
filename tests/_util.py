"""Small helpers shared by the tests (not a test module)."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import uuid

import pytest

#: Upper bound for waits that only fail when something hangs (never reached on success).
WAIT = 30.0


def new_id() -> str:
    return str(uuid.uuid4())


def ids(events) -> list:
    return [e.id for e in events]


def everything_in(store) -> list:
    """Every event in the store, in id order."""
    out, nxt = [], 1
    while True:
        page = store.get_next_from(nxt, limit=1000)
        if not page:
            return out
        out.extend(page)
        nxt = page[-1].id + 1


def assert_same_value(actual, expected, where="value"):
    """Equal *and* of the same types, recursively (bool is not int, tuple is not list)."""
    assert type(actual) is type(expected), (
        f"{where}: {type(actual).__name__} {actual!r} != {type(expected).__name__} {expected!r}"
    )
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for n, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_value(a, e, f"{where}[{n}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for k in expected:
            assert_same_value(actual[k], expected[k], f"{where}[{k!r}]")
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        for f in dataclasses.fields(expected):
            assert_same_value(getattr(actual, f.name), getattr(expected, f.name),
                              f"{where}.{f.name}")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def wait_until(predicate, timeout=WAIT, interval=0.005) -> bool:
    """Poll predicate until true (returns True) or timeout (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Consumer:
    """Iterates store.subscribe(...) in a background thread, recording batches.

    ``on_batch(consumer)`` runs after each batch (e.g. to set the stop).
    """

    def __init__(self, store, from_id, event_types=None, stop=None, on_batch=None):
        self.batches = []
        self.error = None
        self.returned = False
        self.stop = stop if stop is not None else threading.Event()
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._store, self._from_id, self._types = store, from_id, event_types
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        try:
            if self._types is None:
                iterator = self._store.subscribe(self._from_id, stop=self.stop)
            else:
                iterator = self._store.subscribe(self._from_id, self._types, stop=self.stop)
            for batch in iterator:
                with self._lock:
                    self.batches.append(list(batch))
                if self._on_batch is not None:
                    self._on_batch(self)
            self.returned = True
        except BaseException as exc:  # reported by the test
            self.error = exc

    @property
    def events(self):
        with self._lock:
            return [e for b in self.batches for e in b]

    @property
    def seen_ids(self):
        return [e.id for e in self.events]

    def finish(self, timeout=WAIT):
        """Join the thread; True when it has returned (or raised)."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


PROCESS_DEADLINE = 120.0  # seconds; reached only when a worker process hangs


def collect(out_q, n, procs, timeout=PROCESS_DEADLINE) -> list:
    """n reports from worker processes; a worker's error report fails the test with its
    traceback."""
    reports: list = []
    while len(reports) < n:
        try:
            msg = out_q.get(timeout=timeout)
        except queue.Empty:
            alive = [p.pid for p in procs if p.is_alive()]
            pytest.fail(f"only {len(reports)} of {n} reports arrived; still alive: {alive}; exit "
                        f"codes: {[p.exitcode for p in procs]}")
        if msg[0] == "error":
            pytest.fail(f"worker {msg[1]} failed:\n{msg[2]}")
        reports.append(msg)
    return reports


def join_all(procs, timeout=PROCESS_DEADLINE) -> list:
    """Join worker processes, killing any still alive after ``timeout``; returns their exit
    codes."""
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]
