"""Async test plumbing (not a test module): an event loop on a thread of its own, and a sync facade
that drives an ``es.AsyncEventStore`` from sync code, so the sync store contract runs through the
async layer (tests/test_async_contract.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator

import eventsourcery as es
from tests._util import WAIT


class LoopThread:
    """An asyncio event loop running on a daemon thread; ``run(coro)`` awaits a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = WAIT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


async def _next(batches):
    try:
        return await batches.__anext__()
    except StopAsyncIteration:
        return None


async def _start(coro):
    return asyncio.ensure_future(coro)


async def _outcome(task):
    return await asyncio.shield(task)


async def _end(task, batches) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    await batches.aclose()


class SyncFacade(es.EventStore):
    """A store whose contract methods await an AsyncEventStore (on a LoopThread of its own).

    ``sink``, the reads and ``subscribe`` go through the async layer (``stop`` becomes the end of
    the ``async for``: the pending batch's task is cancelled); ``each_by_range`` is EventStore's
    own, on the async ``get_next_from``. What the async API does not offer (``transaction``, the
    tracker, locks) is the wrapped store's.
    """

    def __init__(self, store: es.EventStore) -> None:
        self.wrapped = store
        self.astore = es.AsyncEventStore(store)
        self.loop = LoopThread()

    def __repr__(self) -> str:
        return f"SyncFacade({self.wrapped!r})"

    def sink(self, event_or_events, expected_version=None):
        return self.loop.run(self.astore.sink(event_or_events, expected_version))

    def get_next_from(self, id, event_types=None, limit=1000):
        return self.loop.run(self.astore.get_next_from(id, event_types, limit))

    def latest_event_id(self, event_types=None):
        return self.loop.run(self.astore.latest_event_id(event_types))

    def get_events_for_aggregate_id(self, aggregate_id, *, from_version=1, to_version=None):
        return self.loop.run(self.astore.get_events_for_aggregate_id(
            aggregate_id, from_version=from_version, to_version=to_version))

    def aggregate_version(self, aggregate_id):
        return self.loop.run(self.astore.aggregate_version(aggregate_id))

    def subscribe(self, from_id, event_types=None, *, stop=None) -> Iterator[list[es.Event]]:
        stopper = es.Stopper(stop)
        batches = self.astore.subscribe(from_id, event_types)
        task = None
        try:
            while not stopper.is_set():
                task = self.loop.run(_start(_next(batches)))
                pending = asyncio.run_coroutine_threadsafe(_outcome(task), self.loop.loop)
                while True:  # the stop signal is this thread's to consult, between short waits
                    try:
                        batch = pending.result(0.01)
                        break
                    except concurrent.futures.TimeoutError:
                        if stopper.is_set():
                            return
                task = None
                if batch is None:
                    return
                yield batch
        finally:
            self.loop.run(_end(task, batches))

    def transaction(self):
        return self.wrapped.transaction()

    def tracker(self):
        return self.wrapped.tracker()

    def lock(self, name):
        return self.wrapped.lock(name)

    def is_running(self, name):
        return self.wrapped.is_running(name)

    def close(self) -> None:
        if self.loop.loop.is_closed():
            self.wrapped.close()
            return
        self.loop.run(self.astore.aclose())
        self.loop.close()


def eventsourcery_threads() -> list[str]:
    """The names of this process's live threads that the library started."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("eventsourcery-"))


def _socket_ports(remote_port: int) -> set[int]:
    """The local ports of this process's TCP sockets connected to ``remote_port`` (from /proc)."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def pg_sessions_of_this_process() -> int:
    """How many server sessions in pg_stat_activity belong to this process's connections (the
    counting connection left out)."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.pg_support import connect

    with connect() as conn:
        port = int(conninfo_to_dict(conn.info.dsn).get("port") or 5432)
        ports = _socket_ports(port)
        mine = conn.execute("SELECT inet_client_port()").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)",
                            (sorted(ports - {mine}),)).fetchone()
    return int(rows[0])
