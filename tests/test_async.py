"""The asyncio API (SPEC section 7) on every store: AsyncRepository with Repository's semantics,
cancellation that leaves nothing behind (threads, Postgres sessions, half-written sinks), the
loop never blocked while 8 tasks run commands, subscribe's end, wait_for_async, and the runner
started from an event loop. The store contract through the async layer is
tests/test_async_contract.py."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import eventsourcery as es
from tests._util import WAIT, new_id
from tests.async_support import eventsourcery_threads, pg_sessions_of_this_process
from tests.events import CounterIncremented, ItemAdded


class Tally(es.Aggregate):
    snapshot_every = 2
    count: int = 0
    last: int = -1

    @es.on(CounterIncremented)
    def _incremented(self, event):
        self.count += 1
        self.last = event.seq

    def increment(self, worker=0):
        self.apply_event(CounterIncremented, worker=worker, seq=self.count)


def run(coro, timeout=WAIT):
    """Run a test coroutine on a new event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sessions(store_kind) -> int | None:
    return pg_sessions_of_this_process() if store_kind == "postgres" else None


def item(aggregate_id, n=0):
    return ItemAdded(aggregate_id=aggregate_id, title=f"t{n}")


# --- AsyncRepository: Repository's own load and save ---------------------------------------------


def test_async_repository_loads_and_saves_with_snapshots(store):
    async def main():
        async with es.AsyncEventStore(store) as astore:
            arepo = es.AsyncRepository(astore)
            tally_id = new_id()
            for _ in range(5):
                tally = await arepo.load(Tally, tally_id)
                tally.increment()
                stored = await arepo.save(tally)
                assert [e.version for e in stored] == [tally.version]
                assert tally.changes == []
            snapshots = store.snapshots(tally_id)
            # taken by the save that reached version 4
            assert [s.version for s in snapshots][:1] == [4]
            loaded = await arepo.load(Tally, tally_id)
            assert (loaded.version, loaded.count, loaded.last) == (5, 5, 4)
            sync = es.Repository(store).load(Tally, tally_id)
            assert (sync.version, sync.count, sync.last) == (5, 5, 4)

    run(main())


def test_async_repository_saves_several_aggregates_atomically(store):
    async def main():
        async with es.AsyncEventStore(store) as astore:
            arepo = es.AsyncRepository(astore)
            a_id, b_id = new_id(), new_id()
            a, b = await arepo.load(Tally, a_id), await arepo.load(Tally, b_id)
            a.increment()
            b.increment()
            assert [e.aggregate_id for e in await arepo.save(a, b)] == [a_id, b_id]
            a, b = await arepo.load(Tally, a_id), await arepo.load(Tally, b_id)
            a.increment()
            b.increment()
            await astore.sink(CounterIncremented(aggregate_id=b_id, worker=9, seq=9))  # b moved on
            with pytest.raises(es.ConcurrencyError, match=b_id):
                await arepo.save(a, b)
            assert await astore.aggregate_version(a_id) == 1  # nothing of a was written
            assert len(a.changes) == 1 and len(b.changes) == 1  # and no changes were cleared
            with pytest.raises(TypeError, match="at least one aggregate"):
                await arepo.save()

    run(main())


# --- cancellation --------------------------------------------------------------------------------


def test_a_cancelled_sink_is_stored_entirely_or_not_at_all_and_settled_when_the_task_ends(
        store, store_kind):
    rng = random.Random(20)
    before_threads, before_sessions = eventsourcery_threads(), sessions(store_kind)

    async def main():
        astore = es.AsyncEventStore(store, max_threads=4)
        outcomes = {}
        for _ in range(40):
            agg = new_id()
            # others first, so that the cancelled sink is sometimes still queued, sometimes running
            others = [asyncio.create_task(astore.sink(item(new_id())))
                      for _ in range(rng.randrange(8))]
            batch = [item(agg, k) for k in range(20)]
            sinks = [asyncio.create_task(astore.sink(batch, expected_version=0)), *others]
            await asyncio.sleep(rng.uniform(0, 0.004))
            started = time.monotonic()
            sinks[0].cancel()
            try:
                await sinks[0]
                completed = True
            except asyncio.CancelledError:
                completed = False
            assert time.monotonic() - started < 1.5  # the task ended within about a second
            settled = await astore.aggregate_version(agg)
            assert settled in (0, 20), settled  # all or nothing
            assert settled == 20 or not completed
            outcomes[agg] = settled
            await asyncio.gather(*sinks[1:])
        if store_kind == "postgres":
            assert sessions(store_kind) > before_sessions  # the count sees the store's sessions
        await astore.aclose()
        return outcomes

    outcomes = run(main())
    # nothing was written after the cancelled task had ended
    assert {agg: store.aggregate_version(agg) for agg in outcomes} == outcomes
    assert eventsourcery_threads() == before_threads
    assert sessions(store_kind) == before_sessions


def test_a_cancelled_call_that_had_not_started_never_runs(store):
    async def main():
        astore = es.AsyncEventStore(store, max_threads=1)
        gate = threading.Event()
        blocker = asyncio.create_task(astore._call(gate.wait, WAIT))
        agg = new_id()
        queued = asyncio.create_task(astore.sink(item(agg)))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        gate.set()
        await blocker
        await astore.aclose()
        assert store.aggregate_version(agg) == 0

    run(main())


async def _thread_and_sessions_end(store_kind, before_threads, before_sessions, within=2.0):
    """How long it took until the library's threads and Postgres sessions were back to before."""
    started = time.monotonic()
    while True:
        now = eventsourcery_threads(), sessions(store_kind)
        if now == (before_threads, before_sessions) or time.monotonic() - started > within:
            assert now == (before_threads, before_sessions)
            return time.monotonic() - started
        await asyncio.sleep(0.02)


def test_breaking_out_of_subscribe_ends_its_thread_and_connection(store, store_kind):
    store.sink([item("s", n) for n in range(3)])

    async def main():
        astore = es.AsyncEventStore(store)
        before = eventsourcery_threads(), sessions(store_kind)
        seen = []
        async for batch in astore.subscribe(1):
            seen += [e.id for e in batch]
            assert "eventsourcery-subscribe_0" in eventsourcery_threads()
            break
        assert seen == [1, 2, 3]
        assert await _thread_and_sessions_end(store_kind, *before) < 1.5
        await astore.aclose()

    run(main())


def test_cancelling_a_task_that_waits_in_subscribe_ends_it_and_its_thread(store, store_kind):
    store.sink(item("s"))

    async def main():
        astore = es.AsyncEventStore(store)
        before = eventsourcery_threads(), sessions(store_kind)
        got = asyncio.Event()
        seen = []

        async def follow():
            async for batch in astore.subscribe(1, event_types=[ItemAdded]):
                seen.extend(e.id for e in batch)
                got.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(got.wait(), WAIT)
        await asyncio.sleep(0.1)  # waiting for new events now
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.5
        assert await _thread_and_sessions_end(store_kind, *before) < 1.5
        assert seen == [1]
        await astore.aclose()

    run(main())


def test_aclose_ends_a_running_subscription_and_the_store_can_be_used_again(store, store_kind):
    before = eventsourcery_threads(), sessions(store_kind)

    async def main():
        astore = es.AsyncEventStore(store)
        await astore.sink(item("x"))
        seen = []

        async def follow():
            async for batch in astore.subscribe(1):
                seen.extend(e.id for e in batch)

        task = asyncio.create_task(follow())
        while not seen:
            await asyncio.sleep(0.01)
        await astore.aclose()
        await asyncio.wait_for(task, 1.5)  # the loop ended by itself
        assert seen == [1]
        async with astore:  # made again when needed, closed again
            assert await astore.latest_event_id() == 1
            await astore.sink(item("x"))
        assert store.latest_event_id() == 2

    run(main())
    assert (eventsourcery_threads(), sessions(store_kind)) == before


def test_live_events_arrive_through_subscribe(store):
    async def main():
        async with es.AsyncEventStore(store) as astore:
            seen = []

            async def follow():
                async for batch in astore.subscribe(2):
                    seen.extend(e.id for e in batch)
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(follow())
            for n in range(4):
                await astore.sink(item("live", n))
                await asyncio.sleep(0.01)
            await asyncio.wait_for(task, WAIT)
            assert seen == [2, 3, 4]

    run(main())


# --- the loop is never blocked -------------------------------------------------------------------


def test_the_loop_is_never_late_by_100ms_while_8_tasks_run_commands(store):
    async def main():
        async with es.AsyncEventStore(store) as astore:
            arepo = es.AsyncRepository(astore)
            deadline = time.monotonic() + 1.5
            commands = [0] * 8

            async def commander(worker):
                tally_id = new_id()
                while time.monotonic() < deadline:
                    tally = await arepo.load(Tally, tally_id)
                    tally.increment(worker)
                    await arepo.save(tally)
                    commands[worker] += 1

            lateness = []

            async def timer():
                loop = asyncio.get_running_loop()
                while time.monotonic() < deadline:
                    due = loop.time() + 0.01
                    await asyncio.sleep(0.01)
                    lateness.append(loop.time() - due)

            tasks = [asyncio.create_task(commander(w)) for w in range(8)]
            tasks.append(asyncio.create_task(timer()))
            await asyncio.gather(*tasks)
            return commands, lateness

    commands, lateness = run(main())
    assert max(lateness) < 0.1, f"the loop was late by {max(lateness) * 1000:.0f} ms"
    assert len(lateness) >= 10
    assert all(n >= 3 for n in commands), commands  # every task ran commands all along


# --- wait_for_async ------------------------------------------------------------------------------


class Seen(es.EventStreamProcessor):
    @es.on(ItemAdded)
    def _added(self, event):
        pass


def test_wait_for_async_waits_for_the_position_without_blocking_the_loop(store):
    processor = Seen(tracker=store.tracker())
    stop = threading.Event()
    thread = threading.Thread(target=es.run_processor, args=(processor, store),
                              kwargs={"stop": stop})

    async def main():
        async with es.AsyncEventStore(store) as astore:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick_task = asyncio.create_task(ticker())
            stored = await astore.sink(item("w"))
            assert await processor.wait_for_async(stored[-1].id, timeout=WAIT)
            started, ticked = time.monotonic(), ticks
            assert not await processor.wait_for_async(stored[-1].id + 100, timeout=0.3)
            assert 0.3 <= time.monotonic() - started < 1.5
            assert ticks - ticked >= 10  # the loop ran while the wait went on
            waiting = asyncio.create_task(processor.wait_for_async(stored[-1].id + 100))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert time.monotonic() - started < 1.0
            with pytest.raises(TypeError, match="event_id"):
                await processor.wait_for_async("1")
            tick_task.cancel()

    thread.start()
    try:
        run(main())
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()


# --- the runner beside an event loop -------------------------------------------------------------


def test_start_in_background_refuses_to_fork(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "events.db")
    runner = es.ESPRunner([Seen(tracker=store.tracker())], store, start_method="fork")
    with pytest.raises(ValueError, match="spawn"):
        runner.start_in_background()
    with pytest.raises(RuntimeError, match="start_in_background"):
        runner.stop()
    store.close()


def test_a_runner_that_fails_in_the_background_raises_from_stop(tmp_path):
    class Local(es.EventStreamProcessor):  # a spawned child cannot import it
        @es.on(ItemAdded)
        def _added(self, event):
            pass

    store = es.SQLiteEventStore(tmp_path / "events.db")
    runner = es.ESPRunner([Local(tracker=store.tracker())], store, start_method="spawn")
    started = time.monotonic()
    runner.start_in_background()
    assert time.monotonic() - started < 1.0  # returned at once
    with pytest.raises(Exception, match="(?i)pickle"):
        runner.stop()
    assert [t for t in eventsourcery_threads() if t == "eventsourcery-runner"] == []
    store.close()


def test_a_runner_started_in_the_background_runs_until_stop_async(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "events.db")
    stored = store.sink(item("r"))
    own_store = es.SQLiteEventStore(tmp_path / "events.db")  # the runner closes its connections
    runner = es.ESPRunner([Seen(tracker=store.tracker())], own_store, start_method="spawn")

    async def main():
        runner.start_in_background()
        assert "eventsourcery-runner" in eventsourcery_threads()
        watcher = Seen(tracker=store.tracker())
        assert await watcher.wait_for_async(stored[-1].id, timeout=WAIT)  # processed in the child
        return await runner.stop_async()

    assert run(main()) is True
    assert runner.exit_statuses == {"seen": [0]}
    assert "eventsourcery-runner" not in eventsourcery_threads()
    store.close()


def test_a_forked_child_runs_calls_on_threads_of_its_own(tmp_path):
    import multiprocessing

    store = es.SQLiteEventStore(tmp_path / "events.db")
    astore = es.AsyncEventStore(store)
    run(astore.sink(item("parent")))  # the parent's worker threads exist now
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_sinks, args=(astore, out))
    child.start()
    try:
        assert out.get(timeout=WAIT) == 2
    finally:
        child.join(WAIT)
    assert child.exitcode == 0
    run(astore.aclose())


def _child_sinks(astore, out):
    out.put(asyncio.run(asyncio.wait_for(astore.sink(item("child")), WAIT))[-1].id)
