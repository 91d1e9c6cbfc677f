"""The event browser's JSON API and server (SPEC §9), without a browser: the fields of the CLI's
``--json`` output, keyset paging newest first, read-only browsing, actions behind a token, and the
library fix a threaded server needs (statuses read from several threads leave no stray file)."""

from __future__ import annotations

import os
import threading

import eventsourcery as es
from tests import processing_support as ps
from tests._util import WAIT
from tests.processing_support import Ping


def test_statuses_read_from_eight_threads_at_once_leave_no_wal_or_shm_beside_a_projection(tmp_path) -> None:
    db, projection = tmp_path / "events.db", tmp_path / "projection.db"
    with es.SQLiteEventStore(db) as store:
        for n in range(5):
            store.sink(Ping(aggregate_id="p", n=n))
        projector = ps.CountingProjector(str(projection))  # its position lives in its own file
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 5)
        projector.close()
    files = sorted(os.listdir(tmp_path))
    store = es.SQLiteEventStore(db, read_only=True)
    try:
        for _ in range(5):  # each round: 8 threads open, read and close the projection's file together
            barrier = threading.Barrier(8, timeout=WAIT)
            seen: list[int] = []

            def read() -> None:
                barrier.wait()
                statuses = {s.name: s for s in es.processor_statuses(store)}
                seen.append(statuses["event_counter"].position)

            threads = [threading.Thread(target=read) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            assert seen == [5] * 8
            assert not [f for f in os.listdir(tmp_path) if f.startswith("projection.db-")]
    finally:
        store.close()
    assert sorted(os.listdir(tmp_path)) == files
