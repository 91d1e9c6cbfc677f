"""Workload (aio): N = 8 asyncio tasks running commands (load + 1 event + save) through
es.AsyncRepository, against 8 threads running the same commands through es.Repository; one store
object each way, a fresh store per run, the two interleaved (thr8 tsk8 thr8 ...), on every
backend. eventsourcery only: the peer has no asyncio API, and the raw ceiling has no repository.
The goal: the tasks' throughput at least 0.8 of the threads', their p99 latency at most 2x."""

from __future__ import annotations

import asyncio
import gc
import time

import eventsourcery as es

from . import common as C
from .sys_es import BenchCounter

N = 8  # tasks, and threads
GOAL_THROUGHPUT, GOAL_P99 = 0.8, 2.0


def run_tasks(store: es.EventStore, n_tasks: int, n_cmd: int) -> tuple[float, list[float]]:
    """n_tasks tasks on one event loop, each running its share of n_cmd commands on 10 aggregates of
    its own (as (i)'s threads do). Returns (wall seconds, per-command latencies)."""

    async def main() -> tuple[float, list[float]]:
        astore = es.AsyncEventStore(store)
        try:
            arepo = es.AsyncRepository(astore)
            await astore.latest_event_id()
            per = n_cmd // n_tasks
            clock = time.perf_counter

            async def work(k: int) -> list[float]:
                ids = [f"task-{k}-{j}" for j in range(10)]
                lat = []
                for i in range(per):
                    t0 = clock()
                    agg = await arepo.load(BenchCounter, ids[i % 10])
                    agg.add(C.TITLE, i)
                    await arepo.save(agg)
                    lat.append(clock() - t0)
                return lat

            t0 = clock()
            lats = await asyncio.gather(*(work(k) for k in range(n_tasks)))
            wall = clock() - t0
        finally:
            await astore.aclose()
        return wall, [x for lat in lats for x in lat]

    return asyncio.run(main())


def workload(harness, backend: str) -> None:
    """Record rows aio.thr8 and aio.tsk8 (the latter with its ratios to the former)."""
    s = harness.sizes
    t = next((t for t in harness.targets.get(backend, []) if t.name == "eventsourcery"), None)
    if t is None:
        harness.skip("aio", backend, "eventsourcery", "no eventsourcery target")
        return
    n_cmd = 160 if s.quick else s.i_commands  # --quick: a short smoke run (20 commands per task)
    times: dict[str, list[float]] = {"thr8": [], "tsk8": []}
    lat: dict[str, list[float]] = {"thr8": [], "tsk8": []}
    for r in range(s.runs):
        for variant in times:
            gc.collect()
            spec = t.new_store()
            try:
                if variant == "thr8":
                    wall, xs = t.i(spec, N, n_cmd, "cmd", prefix=f"r{r}-")
                else:
                    with t.open(spec) as store:
                        wall, xs = run_tasks(store, N, n_cmd)
            except Exception as e:  # noqa: BLE001
                harness.error(f"aio.{variant}/{backend}", e)
                return
            finally:
                t.drop_store(spec)
            times[variant].append(wall)
            lat[variant].extend(xs)
    rows = {variant: harness.add("aio", backend, "eventsourcery", n_cmd // N * N, times[variant],
                                 variant=variant, concurrency=N, **C.latency_fields(lat[variant]))
            for variant in times}
    threads, tasks = rows["thr8"], rows["tsk8"]
    if threads.get("events_per_s") and tasks.get("events_per_s") and threads.get("p99_ms"):
        tasks["throughput_vs_threads"] = tasks["events_per_s"] / threads["events_per_s"]
        tasks["p99_vs_threads"] = tasks["p99_ms"] / threads["p99_ms"]
        tasks["goals_met"] = (tasks["throughput_vs_threads"] >= GOAL_THROUGHPUT
                              and tasks["p99_vs_threads"] <= GOAL_P99)


def notes(row: dict) -> str:
    """The table's notes for an (aio) row."""
    if row.get("p50_ms") is None:
        return ""
    text = f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  max {row['max_ms']:.1f} ms"
    if row.get("throughput_vs_threads") is not None:
        text += (f"  x{row['throughput_vs_threads']:.2f} of threads' commands/s, "
                 f"p99 x{row['p99_vs_threads']:.2f} (goal >= {GOAL_THROUGHPUT}, <= {GOAL_P99})")
    return text
