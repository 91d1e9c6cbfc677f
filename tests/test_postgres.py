"""The Postgres store, tracker, projector and reactor against a real server (issue 4).

The store contract itself runs on Postgres through the ``store`` fixture
(tests/test_store_contract.py); this file holds what is Postgres-specific:

(1) a scripted two-writer/one-reader interleaving, run with the write lock
    (ids follow commit order) and without it (the script fails);
(2) writer processes plus a tailing subscriber that must see the final log
    exactly, in order;
(3) processes racing the first write of new aggregates: one wins, the others
    get ConcurrencyError (with and without the write lock);
(4) the processor lock across processes, released by kill -9, and tracker
    positions: tests/test_tracker_and_lock_contract.py, run on every store;
(5) the Reactor exactly-once on Postgres, and where a projector's tables live
    (the projector contract is tests/test_projector_contract.py, on Postgres too);
(7) a dead LISTEN connection is replaced, or subscribe raises: never a stall.
(6), kill -9 under ESPRunner, is tests/test_runner.py, parametrized over Postgres.

Every test uses schemas of its own (tests/pg_support.py); without a server the
tests are skipped, except with CI=true.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import pickle
import threading
import time

import pytest

import eventsourcery as es
from tests import pg_support as pg
from tests._util import WAIT, Consumer, collect, everything_in, join_all, new_id, wait_until
from tests.events import ItemAdded, Numbered

if pg.IN_CI:
    import eventsourcery_pg as es_pg  # in CI a missing psycopg is a failure, not a skip
else:
    es_pg = pytest.importorskip("eventsourcery_pg")

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")
DEADLINE = 120.0  # seconds; reached only when something hangs


class Ping(es.Event, type="pgtest.ping"):
    n: int = 0


class Pong(es.Event, type="pgtest.pong"):
    ping_id: int


@pytest.fixture
def url():
    return pg.require_postgres()


@pytest.fixture
def schema(url):
    return pg.new_schema()


@pytest.fixture
def store(url, schema):
    s = es_pg.PostgresEventStore(url, schema=schema)
    yield s
    s.close()


@pytest.fixture
def admin(url):
    conn = pg.connect()
    yield conn
    conn.close()


# =================================================================================================
# (1) scripted interleaving: two writers and a reader
# =================================================================================================


def backend_wait(admin, pid):
    row = admin.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()
    return row if row else (None, None)


def interleave(url, schema, admin, *, lock_writes):
    """W1 writes in an open transaction, W2 writes meanwhile, R tails the log; returns (trace,
    outcome).

    The script: W1 sinks (its ids are taken, not committed); W2 sinks from
    another connection; R reads; W1 commits; W2 finishes; R reads on from
    the position after the last id it saw, as every subscriber does.
    """
    stores = [es_pg.PostgresEventStore(url, schema=schema, _lock_writes=lock_writes)
              for _ in range(3)]
    w1, w2, reader = stores
    trace = [f"write lock {'ENABLED' if lock_writes else 'DISABLED'}"]
    outcome = {"w2": None, "w2_error": None, "w2_pid": None, "reader_seen": []}
    position = 1

    def read(label):
        nonlocal position
        start = position
        batch = reader.get_next_from(start)
        outcome["reader_seen"].extend(e.id for e in batch)
        if batch:
            position = batch[-1].id + 1
        trace.append(f"{label}: R reads ids >= {start} -> {[e.id for e in batch]}")

    connected = threading.Event()

    def w2_sink():
        try:
            outcome["w2_pid"] = w2.connection.info.backend_pid  # its thread's own connection
            connected.set()
            outcome["w2"] = w2.sink(ItemAdded(aggregate_id="agg-w2", title="second"))[0]
        except Exception as exc:
            outcome["w2_error"] = exc

    try:
        with w1.transaction():
            (first,) = w1.sink(ItemAdded(aggregate_id="agg-w1", title="first"))
            trace.append(f"t1: W1 sink 'first' -> id {first.id}, transaction still open")
            thread = threading.Thread(target=w2_sink, daemon=True)
            thread.start()
            assert connected.wait(WAIT), outcome
            w2_pid = outcome["w2_pid"]
            wait_until(lambda: not thread.is_alive() or backend_wait(admin, w2_pid)[0] == "Lock",
                       timeout=10)
            state = ("finished" if not thread.is_alive()
                     else "blocked, waiting on lock {1} ({0})".format(*backend_wait(admin, w2_pid)))
            trace.append(f"t2: W2 sink 'second' from another connection: {state}")
            read("t3")
        trace.append(f"t4: W1 commits id {first.id}")
        thread.join(WAIT)
        if outcome["w2_error"] is not None:
            exc = outcome["w2_error"]
            trace.append(f"t5: W2 failed: {type(exc).__name__}: {exc}")
        else:
            trace.append(f"t5: W2 committed -> id {outcome['w2'].id}")
        read("t6")
        read("t7")
        outcome["log"] = [(e.id, e.title) for e in everything_in(reader)]
        trace.append(f"final log: {outcome['log']}; R saw ids {outcome['reader_seen']}")
    finally:
        for s in stores:
            s.close()
    return trace, outcome


def check_gapless(outcome):
    """Both writes succeed, ids follow commit order, and the tailing reader saw the whole log."""
    assert outcome["w2_error"] is None, ("W2's write (another aggregate) failed: "
                                         f"{outcome['w2_error']!r}")
    assert outcome["log"] == [(1, "first"), (2, "second")], outcome["log"]
    assert outcome["reader_seen"] == [1, 2], f"the tailing reader saw {outcome['reader_seen']}"


def test_interleaving_with_the_write_lock_keeps_commit_order(url, schema, admin):
    trace, outcome = interleave(url, schema, admin, lock_writes=True)
    print("\n".join(trace))
    # W2 waited for W1's commit
    assert any("waiting on lock advisory" in line for line in trace), trace
    check_gapless(outcome)


def test_interleaving_without_the_write_lock_fails(url, schema, admin):
    """The same script with the lock disabled: the check above fails (W1 and W2 both took id 1)."""
    trace, outcome = interleave(url, schema, admin, lock_writes=False)
    print("\n".join(trace))
    with pytest.raises(AssertionError) as failure:
        check_gapless(outcome)
    print(f"check_gapless failed as expected: {failure.value}")
    assert isinstance(outcome["w2_error"], es.ConcurrencyError)


# =================================================================================================
# (2) writer processes and a tailing subscriber
# =================================================================================================


def test_concurrent_writer_processes_and_a_tailing_subscriber_see_one_gapless_log(
        url, schema, store):
    n_writers, commands = 4, 150
    shared = [new_id() for _ in range(3)]
    es.configure(subscription_batch_size=7)
    consumer = Consumer(store, 1).start()  # tails from the empty store on, live
    out_q, start = SPAWN.Queue(), SPAWN.Event()
    procs = [SPAWN.Process(target=pg.writer, args=(url, schema, w, commands, shared, start, out_q))
             for w in range(n_writers)]
    try:
        for p in procs:
            p.start()
        start.set()
        reports = collect(out_q, n_writers, procs)
        assert join_all(procs) == [0] * n_writers
        final = everything_in(store)
        assert wait_until(lambda: len(consumer.events) >= len(final)), (
            f"the subscriber saw {len(consumer.events)} of {len(final)} events")
        time.sleep(0.2)  # nothing more may arrive
    finally:
        consumer.stop.set()
        consumer.finish()
        join_all(procs, timeout=10)
    assert consumer.error is None, repr(consumer.error)

    ids = [e.id for e in final]
    assert ids == list(range(1, len(ids) + 1))
    saves = sum(r[2] for r in reports)
    batch_events = sum(r[5] for r in reports)
    assert len(final) == saves + batch_events
    assert sum(r[3] for r in reports) > 0, "no conflicts: the retry path went untested"
    # exactly the final log, in order, each event once
    assert [(e.id, e.uuid) for e in consumer.events] == [(e.id, e.uuid) for e in final]
    assert all(1 <= len(b) <= 7 for b in consumer.batches)
    for agg in shared + [f"writer-{w}" for w in range(n_writers)]:
        versions = [e.version for e in store.get_events_for_aggregate_id(agg)]
        assert versions == list(range(1, len(versions) + 1)), agg
    counters = collections.Counter((e.worker, e.seq) for e in final
                                   if e.type == "counter_incremented")
    assert len(counters) == saves and max(counters.values()) == 1


# =================================================================================================
# (3) racing first writes
# =================================================================================================


@pytest.mark.parametrize("lock_writes", [True, False], ids=["write_lock", "no_write_lock"])
def test_processes_racing_a_first_write_one_wins_the_others_get_concurrency_error(
        url, schema, store, lock_writes):
    """The aggregate row's compare-and-set decides, even without the write lock: never a raw unique
    violation."""
    n_procs, rounds = 6, 8
    aggregate_ids = [new_id() for _ in range(rounds)]
    barrier, out_q = SPAWN.Barrier(n_procs), SPAWN.Queue()
    procs = [SPAWN.Process(target=pg.first_writer,
                           args=(url, schema, w, aggregate_ids, barrier, out_q, lock_writes))
             for w in range(n_procs)]
    try:
        for p in procs:
            p.start()
        reports = collect(out_q, n_procs, procs)
        assert join_all(procs) == [0] * n_procs
    finally:
        join_all(procs, timeout=10)
    outcomes = {w: results for _, w, results in reports}
    for r, agg in enumerate(aggregate_ids):
        per_round = sorted(outcomes[w][r] for w in range(n_procs))
        assert per_round == ["conflict"] * (n_procs - 1) + ["won"], (r, per_round)
        (event,) = store.get_events_for_aggregate_id(agg)
        assert event.version == 1 and outcomes[event.worker][r] == "won"
    assert store.latest_event_id() == rounds


def test_processes_creating_one_store_at_the_same_moment_all_succeed(url, schema):
    n_procs = 6
    barrier, out_q = SPAWN.Barrier(n_procs), SPAWN.Queue()
    procs = [SPAWN.Process(target=pg.open_store_at_once, args=(url, schema, barrier, out_q))
             for _ in range(n_procs)]
    try:
        for p in procs:
            p.start()
        collect(out_q, n_procs, procs)
        assert join_all(procs) == [0] * n_procs
    finally:
        join_all(procs, timeout=10)
    with es_pg.PostgresEventStore(url, schema=schema) as store:
        assert [e.id for e in everything_in(store)] == list(range(1, n_procs + 1))


# =================================================================================================
# (5) Reactor exactly-once on Postgres; the Postgres specifics of projectors
# =================================================================================================


class SeenProjector(es_pg.Projector):
    processor_name = "pg_seen"
    schema = ("CREATE TABLE IF NOT EXISTS pg_seen (event_id bigint PRIMARY KEY, aggregate_id text "
              "NOT NULL)")

    @es.on()
    def _any(self, event):
        self.db.execute("INSERT INTO pg_seen (event_id, aggregate_id) VALUES (%s, %s)",
                        (event.id, event.aggregate_id))


def committed(admin, sql, params=()):
    return admin.execute(sql, params).fetchall()


def test_a_projectors_tables_and_position_live_in_its_schema_not_in_public(
        url, schema, store, admin):
    store.sink([Numbered(aggregate_id="x", e=n) for n in range(3)])
    projector = SeenProjector(url, schema=schema)
    projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 3)
    assert committed(admin, "SELECT to_regclass(%s) IS NOT NULL, to_regclass('public.pg_seen') IS "
                            "NULL", (f'"{schema}".pg_seen',)) == [(True, True)]
    assert committed(admin, f'SELECT count(*) FROM "{schema}".pg_seen') == [(3,)]
    assert committed(admin, f'SELECT position FROM "{schema}".eventsourcery_trackers WHERE name = '
                            '%s', ("pg_seen",)) == [(3,)]
    projector.close()


def test_projector_keeps_its_position_in_its_own_database(url, store, admin):
    store.sink([Numbered(aggregate_id="x", e=n) for n in range(3)])
    projection_schema = pg.new_schema()
    projector = SeenProjector(pg.store_url(projection_schema))
    projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 3)
    again = SeenProjector(url, schema=projection_schema)
    assert again.last_processed_event_id == 3
    assert committed(admin, f'SELECT count(*) FROM "{projection_schema}".pg_seen') == [(3,)]
    projector.close()
    again.close()


class PgPonger(es.Reactor):
    processor_name = "pg_ponger"
    emits_events = (Pong,)
    schema = "CREATE TABLE IF NOT EXISTS pg_ponger_log (event_id bigint PRIMARY KEY)"
    fail_once: set[int] = set()

    @es.on(Ping)
    def _ping(self, event):
        self.db.execute("INSERT INTO pg_ponger_log (event_id) VALUES (%s)", (event.id,))
        self.emit_event(Pong(aggregate_id=f"pong-{event.aggregate_id}", ping_id=event.id))
        if event.id in self.fail_once:
            self.fail_once.discard(event.id)
            raise RuntimeError(f"failing once on {event.id}")


def test_reactor_emits_and_moves_its_position_in_one_transaction(url, schema, store, admin):
    for n in range(30):
        store.sink(Ping(aggregate_id=f"ping-{n % 3}", n=n,
                        correlation_id=f"corr-{n}" if n % 2 else None))
    reactor = PgPonger(store, batch_size=5)
    reactor.fail_once = {12}
    with pytest.raises(es.EventProcessingError):
        reactor.subscribe_to(store, stop=lambda: reactor.last_processed_event_id >= 30)
    # in the batch 11-15, 11 committed (its pong, log row and position); 12 rolled back alone
    pongs = [e for e in everything_in(store) if isinstance(e, Pong)]
    assert sorted(p.ping_id for p in pongs) == list(range(1, 12))
    assert reactor.last_processed_event_id == 11
    assert committed(admin, f'SELECT count(*) FROM "{schema}".pg_ponger_log') == [(11,)]

    es.run_processor(reactor, store, stop=lambda: reactor.last_processed_event_id >= 30,
                     error_handler=es.ConstantRetry(0))
    events = everything_in(store)
    pings = {e.id: e for e in events if isinstance(e, Ping)}
    pongs = [e for e in events if isinstance(e, Pong)]
    assert collections.Counter(p.ping_id for p in pongs) == collections.Counter(list(pings))
    for pong in pongs:
        cause = pings[pong.ping_id]
        assert pong.causation_id == cause.uuid
        assert pong.correlation_id == (cause.correlation_id or cause.uuid)
    # the rolled-back pongs left no hole
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert committed(admin, f'SELECT count(*) FROM "{schema}".pg_ponger_log') == [(30,)]
    statuses = {s.name: s for s in es.processor_statuses(store)}
    assert statuses["pg_ponger"].position >= 30 and not statuses["pg_ponger"].running


# =================================================================================================
# (7) subscribe: notifications, the fallback poll, and a dead listener
# =================================================================================================


def listener_pids(admin, schema):
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                         (f"eventsourcery listener {schema}"[:63],)).fetchall()
    return sorted(r[0] for r in rows)


def test_subscribe_wakes_on_notify_long_before_the_poll_interval(url, schema):
    store = es_pg.PostgresEventStore(url, schema=schema, poll_interval=60.0)
    consumer = Consumer(store, 1).start()
    try:
        time.sleep(0.3)  # it is waiting now
        started = time.monotonic()
        store.sink(ItemAdded(aggregate_id=new_id(), title="live"))
        assert wait_until(lambda: consumer.seen_ids == [1], timeout=10)
        assert time.monotonic() - started < 10
    finally:
        consumer.stop.set()
        consumer.finish()
        store.close()
    assert consumer.error is None, repr(consumer.error)


def test_subscribe_polls_for_a_missed_notification(url, schema, admin):
    store = es_pg.PostgresEventStore(url, schema=schema, poll_interval=0.3)
    consumer = Consumer(store, 1).start()
    try:
        time.sleep(0.3)
        # a row written without the function sends no NOTIFY: only the poll finds it
        admin.execute(f'INSERT INTO "{schema}".events (id, uuid, aggregate_id, type, version, '
                      'created_at, body) ' "VALUES (1, %s, 'quiet', 'item_added', 1, now(), "
                                           "'{\"title\": \"quiet\"}')", (new_id(),))
        assert wait_until(lambda: consumer.seen_ids == [1], timeout=10)
    finally:
        consumer.stop.set()
        consumer.finish()
        store.close()
    assert consumer.error is None, repr(consumer.error)


def test_a_killed_listener_connection_is_replaced_and_nothing_is_missed(url, schema, admin, caplog):
    store = es_pg.PostgresEventStore(url, schema=schema, poll_interval=60.0)
    store.sink(ItemAdded(aggregate_id=new_id(), title="before"))
    consumer = Consumer(store, 1).start()
    try:
        assert wait_until(lambda: consumer.seen_ids == [1])
        assert wait_until(lambda: len(listener_pids(admin, schema)) == 1)
        (old_pid,) = listener_pids(admin, schema)
        with caplog.at_level(logging.WARNING, logger="eventsourcery"):
            admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
            # may be committed before the new LISTEN
            store.sink(ItemAdded(aggregate_id=new_id(), title="during"))
            assert wait_until(lambda: listener_pids(admin, schema) not in ([], [old_pid]),
                              timeout=10), ("the listener was not replaced")
            store.sink(ItemAdded(aggregate_id=new_id(), title="after"))
            # well within the 60 s poll: found by the re-read after reconnecting, and by NOTIFY
            assert wait_until(lambda: consumer.seen_ids == [1, 2, 3], timeout=10), consumer.seen_ids
        assert any("connection lost" in r.getMessage() for r in caplog.records)
    finally:
        consumer.stop.set()
        consumer.finish()
        store.close()
    assert consumer.error is None, repr(consumer.error)
    assert [e.title for e in consumer.events] == ["before", "during", "after"]


def test_a_listener_that_cannot_reconnect_raises_instead_of_stalling(
        url, schema, admin, monkeypatch):
    store = es_pg.PostgresEventStore(url, schema=schema, poll_interval=60.0, reconnect_timeout=1.0)
    store.sink(ItemAdded(aggregate_id=new_id(), title="before"))
    consumer = Consumer(store, 1).start()
    try:
        assert wait_until(lambda: consumer.seen_ids == [1])
        assert wait_until(lambda: len(listener_pids(admin, schema)) == 1)

        def no_server(*args, **kwargs):
            raise es.StoreError("cannot connect to Postgres (test): server gone")

        monkeypatch.setattr(es_pg, "_connect", no_server)
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                      "application_name = %s", (f"eventsourcery listener {schema}"[:63],))
        assert consumer.finish(timeout=20), "subscribe stalled on a dead connection"
    finally:
        consumer.stop.set()
        consumer.finish()
        monkeypatch.undo()
        store.close()
    assert isinstance(consumer.error, es.StoreError), repr(consumer.error)
    assert "could not reconnect" in str(consumer.error)


# =================================================================================================
# connections, processes, URLs
# =================================================================================================


def test_store_and_reactor_pickle_without_their_connections(store):
    """(A projector's pickling is in test_projector_contract.py.)"""
    store.sink(ItemAdded(aggregate_id="p", title="t"))
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get_next_from(1)[0].title == "t"
    assert copy.connection is not store.connection
    copy.close()
    reactor_copy = pickle.loads(pickle.dumps(PgPonger(store)))
    assert reactor_copy.store.latest_event_id() == 1
    assert reactor_copy.store.connection is not store.connection
    reactor_copy.store.close()


def _sink_in_child(store, out_q):
    try:
        out_q.put(store.sink(ItemAdded(aggregate_id="child", title="from the child"))[0].id)
    except BaseException as exc:
        out_q.put(repr(exc))


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(store):
    store.sink(ItemAdded(aggregate_id="parent", title="before"))
    parent_pid = store.connection.info.backend_pid
    out_q = FORK.Queue()
    child = FORK.Process(target=_sink_in_child, args=(store, out_q))
    child.start()
    child.join(DEADLINE)
    assert out_q.get(timeout=10) == 2
    assert child.exitcode == 0
    assert store.connection.info.backend_pid == parent_pid  # the parent's session survived
    assert store.sink(ItemAdded(aggregate_id="parent", title="after"))[0].id == 3


def test_open_store_with_a_schema_in_the_url(schema):
    with es.open_store(pg.store_url(schema)) as s:
        assert isinstance(s, es_pg.PostgresEventStore)
        assert s.schema == schema
        s.sink(ItemAdded(aggregate_id="u", title="t"))
    with es_pg.PostgresEventStore(pg.store_url(schema)) as s:
        assert s.latest_event_id() == 1
    with pytest.raises(ValueError, match="schema"):
        es_pg.PostgresEventStore(pg.store_url(schema), schema="another")
    with pytest.raises(ValueError):
        es_pg.PostgresEventStore(pg.require_postgres(), schema="no; DROP TABLE x")


def test_an_unreachable_server_is_a_store_error():
    with pytest.raises(es.StoreError, match="cannot connect"):
        es_pg.PostgresEventStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_a_password_is_not_shown(url, schema):
    assert "secret" not in es_pg.describe_conninfo("postgresql://u:secret@h/db")
    with es_pg.PostgresEventStore(url, schema=schema) as s:
        assert schema in repr(s)


def test_body_is_stored_as_json_text_in_the_given_key_order(store, admin, schema):
    store.sink(es.Event(type="ordered", body={"z": 1, "a": [1.0, -0.0, 1e300], "m": None},
                        aggregate_id="o"))
    (body,) = admin.execute(f'SELECT body::text FROM "{schema}".events').fetchone()
    assert body == '{"z":1,"a":[1.0,-0.0,1e+300],"m":null}'
    assert list(store.get_next_from(1)[0].body) == ["z", "a", "m"]


def test_a_reactor_transaction_holds_the_write_lock_until_it_commits(url, schema, store):
    """Documents the cost of emitted events + position in one transaction: other writers wait for
    the commit."""
    other = es_pg.PostgresEventStore(url, schema=schema)
    done = threading.Event()
    try:
        with store.transaction():
            store.sink(ItemAdded(aggregate_id="r", title="emitted"))
            writer = threading.Thread(
                target=lambda: (other.sink(ItemAdded(aggregate_id="w", title="w")), done.set()))
            writer.start()
            assert not done.wait(0.5)
        assert done.wait(WAIT)
        writer.join()
        assert [e.title for e in everything_in(store)] == ["emitted", "w"]
    finally:
        other.close()


def test_an_older_store_schema_is_upgraded_and_a_newer_one_refused(url, schema, admin):
    with es_pg.PostgresEventStore(url, schema=schema) as s:
        s.sink(ItemAdded(aggregate_id="v", title="kept"))
    # make it look like a pre-release (version 1) store
    admin.execute(f'CREATE TABLE "{schema}".eventsourcery_aggregates (aggregate_id text PRIMARY '
                  'KEY, version bigint)')
    admin.execute(f'UPDATE "{schema}".eventsourcery_schema SET version = 1')
    with es_pg.PostgresEventStore(url, schema=schema) as s:
        assert s.sink(ItemAdded(aggregate_id="v", title="new"), expected_version=1)[0].id == 2
    assert admin.execute(f'SELECT version FROM "{schema}".eventsourcery_schema').fetchall() == [
        (es_pg.SCHEMA_VERSION,)]
    assert admin.execute("SELECT to_regclass(%s)",
                         (f'"{schema}".eventsourcery_aggregates',)).fetchone() == (None,)
    admin.execute(f'UPDATE "{schema}".eventsourcery_schema SET version = %s',
                  (es_pg.SCHEMA_VERSION + 1,))
    with pytest.raises(es.StoreError, match="upgrade eventsourcery"):
        es_pg.PostgresEventStore(url, schema=schema)


def test_an_older_store_opened_with_create_false_is_refused_untouched(url, schema, admin):
    with es_pg.PostgresEventStore(url, schema=schema) as s:
        s.sink(ItemAdded(aggregate_id="v", title="kept"))
    admin.execute(f'UPDATE "{schema}".eventsourcery_schema SET version = %s',
                  (es_pg.SCHEMA_VERSION - 1,))
    admin.execute(f'DROP FUNCTION "{schema}".eventsourcery_write_groups')
    with pytest.raises(es.StoreError, match="not upgraded when opened with create=False"):
        es_pg.PostgresEventStore(url, schema=schema, create=False)
    assert admin.execute(f'SELECT version FROM "{schema}".eventsourcery_schema').fetchall() == [
        (es_pg.SCHEMA_VERSION - 1,)]
    assert admin.execute("SELECT to_regprocedure(%s)", (
        # nothing was created
        f'"{schema}".eventsourcery_write_groups(text[], bigint[], integer[], text[], text[], '
        'timestamptz[], text[], text[], text[], text[], boolean)',)).fetchone() == (None,)
