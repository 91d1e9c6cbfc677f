"""Workload (web): the event browser's pages over a 1,000,000-event SQLite store.

The store is the harness's template (one event the library wrote, the rest cloned into its own
table, 10 events per aggregate); every 1,000th event is then given a second type, so that a filter
by type has a sparse view (1,000 events spread over the whole store) and a dense one (999,000).
The browser serves it as ``python -m eventsourcery STORE serve`` does (read-only, in a thread,
on a free port of 127.0.0.1), and each measurement is the time from sending one HTTP request for a
page of 50 events to having read its JSON answer:

  first   the newest page, no filter
  rare    the newest page of the sparse type
  dense   the newest page of the dense type
  agg     the newest page of one aggregate (in the middle of the store: its 10 events)
  old     the page before id 500,000 (keyset: ?before=500000)
  old.r   the page of the sparse type before id 500,000

The first request of each kind is counted too (no warm-up beyond opening the store). Setup (the
store and the type change) is not timed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import eventsourcery as es  # noqa: E402

#: The size of the store the pages are read from.
EVENTS = 1_000_000
SPARSE_TYPE = "bench_item_flagged"
PAGE = 50


def prepare(path: str) -> tuple[str, str]:
    """Give every 1,000th event of the store at ``path`` the sparse type; returns (the dense type,
    an aggregate id in the middle of the store)."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=OFF")
        dense = con.execute("SELECT type FROM events WHERE id = 1").fetchone()[0]
        con.execute("UPDATE events SET type = ? WHERE id % 1000 = 0", (SPARSE_TYPE,))
        middle = con.execute("SELECT aggregate_id FROM events WHERE id = ?", (EVENTS // 2 + 3,))
        aggregate = middle.fetchone()[0]
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return dense, aggregate


def run(path: str, *, runs: int, log=print) -> list[dict]:
    """Serve the store at ``path`` and time each page ``runs`` times; rows for the harness."""
    import eventsourcery_web as web

    dense, aggregate = prepare(path)
    store = es._cli_open_store(path, read_only=True)
    server = web.make_server(store, port=0, target=path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    pages = {
        "first": f"limit={PAGE}",
        "rare": f"limit={PAGE}&type={SPARSE_TYPE}",
        "dense": f"limit={PAGE}&type={dense}",
        "agg": f"limit={PAGE}&aggregate_id={aggregate}",
        "old": f"limit={PAGE}&before={EVENTS // 2}",
        "old.r": f"limit={PAGE}&type={SPARSE_TYPE}&before={EVENTS // 2}",
    }
    rows = []
    try:
        for variant, query in pages.items():
            times, shown = [], 0
            for _ in range(runs):
                t0 = time.perf_counter()
                url = f"{server.url}api/events?{query}"
                with urllib.request.urlopen(url, timeout=60) as answer:
                    page = json.loads(answer.read())
                times.append(time.perf_counter() - t0)
                shown = len(page["events"])
            median = sorted(times)[len(times) // 2]
            log(f"  web.{variant}: {shown} events, median {median * 1e3:.1f} ms")
            rows.append({"variant": variant, "events": shown, "runs_s": times,
                         "extra": {"store_events": EVENTS, "max_ms": max(times) * 1e3}})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(60)
        store.close()
    return rows
