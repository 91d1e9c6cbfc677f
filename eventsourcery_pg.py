"""eventsourcery_pg: the Postgres event store, tracker and projector for eventsourcery (psycopg 3).

One Postgres database can serve app servers and processors on many hosts::

    import eventsourcery as es
    import eventsourcery_pg as es_pg

    store = es_pg.PostgresEventStore("postgresql://app@db/app")   # or es.open_store(url)

    class Outstanding(es.Projector):        # the same class runs on SQLite, given a file path
        schema = "CREATE TABLE IF NOT EXISTS outstanding (id TEXT PRIMARY KEY, title TEXT)"

        @es.on(TodoAdded)
        def _added(self, event):
            p = self.placeholder                # "%s" here, "?" on SQLite
            self.db.execute(f"INSERT INTO outstanding VALUES ({p}, {p})",
                            (event.aggregate_id, event.title))

    es.ESPRunner([Outstanding("postgresql://app@db/app"), Notifier(store)], store).start()

How it keeps the store contract:

* **Gapless, commit-ordered ids.** Every ``sink`` is one call of a server-side
  function (one round trip; ``eventsourcery_write_event`` with scalar
  parameters for one event, ``eventsourcery_write_events`` with arrays for a
  batch). It first takes a transaction-scoped advisory
  lock (one per store schema), so at most one transaction at a time is
  between "take ids" and "commit"; ids are then ``max(id) + 1, + 2, ...`` of
  the committed log. A reader that has seen id ``n`` can never later meet a
  smaller id, and a rolled-back write leaves no hole. (Without the lock two
  writers would take the same ids, and the primary key would turn one away.)
* **Optimistic concurrency.** Under that lock the function compares
  ``expected_version`` with the aggregate's highest stored version (read from
  the ``(aggregate_id, version)`` index): no other write can come between the
  check and the commit. Every conflict, including two first writes of one new
  aggregate, is an ``es.ConcurrencyError``; a unique-index violation, should
  one ever happen, is reported as one too, and a duplicate event uuid as
  ``es.DuplicateEventError``. The cost of the lock: writes to one store are
  serialised, and a transaction that sinks (a reactor's batch) holds the lock
  until it commits.
* **subscribe** listens (LISTEN/NOTIFY) on a connection of its own: catch up,
  then read again on each (coalesced) notification, and at least every
  ``poll_interval`` seconds in case one is missed. A dead listener connection
  is replaced; if no new one can be opened, subscribe raises ``es.StoreError``.
* **Lost connections.** A connection found dead while idle (the server
  restarted, or ended the session) is opened again before anything is sent.
  A ``sink`` whose connection is lost while it runs reconnects and looks its
  uuids up: it returns the stored copies if the write committed, else raises
  ``es.StoreError`` saying they were not stored. No psycopg exception leaves
  a store method: each is an ``es.StoreError`` (``es.CorruptEventError`` for
  damaged data) with it as ``__cause__``.
* **Trackers** keep positions in ``eventsourcery_trackers`` in the same
  database; a running processor holds the store's lock of its name, a session
  advisory lock on a connection of its own, which the server releases when
  the process dies.

The module is built on the core's public backend interface only:
``PostgresDatabase`` is an ``es.Database`` (a connection per thread,
re-opened after a fork, so stores, trackers and projectors can be sent to
ESPRunner's child processes) that says how to connect and how Postgres names,
creates and drops tables; ``es.open_store`` and ``es.Projector`` reach this
module's ``open_store`` and ``open_database`` through ``es.BACKENDS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import select
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

try:
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("eventsourcery_pg needs psycopg 3 (>= 3.1), which cannot be imported here "
                      f"({exc}); install it with: pip install 'psycopg[binary]>=3.1'") from None

import eventsourcery as es

__all__ = ["PostgresEventStore", "PostgresDatabase", "PostgresTracker", "Projector",
           "SCHEMA_VERSION", "open_store", "open_database", "split_schema", "describe_conninfo"]

#: The version of the tables and function this module creates (kept in ``eventsourcery_schema``); an
#: older store is upgraded on first use. Version 1 (pre-release) kept aggregate versions in a table
#: of their own, ``eventsourcery_aggregates``; version 3 added the events' ``metadata`` column;
#: version 4 added ``eventsourcery_write_event``, the write of one event, with scalar parameters;
#: version 5 ``eventsourcery_write_groups``, the sinks of several threads in one transaction.
SCHEMA_VERSION = 5

#: SQLSTATE raised by the write function when ``expected_version`` does not match.
_CONFLICT_SQLSTATE = "ES409"

Connection = psycopg.Connection[Any]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _check_schema_name(schema: str) -> str:
    if not isinstance(schema, str) or not _IDENTIFIER.match(schema):
        raise ValueError(
            f"schema must be a plain SQL identifier (letters, digits, _), not {schema!r}")
    return schema


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote(name: str) -> str:
    """A (possibly schema-qualified) name as quoted SQL identifiers."""
    return ".".join(_quote_identifier(part) for part in name.split("."))


def _advisory_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for these names."""
    digest = hashlib.blake2b("\x00".join(("eventsourcery", *parts)).encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _channel(schema: str) -> str:
    return "eventsourcery" if schema == "public" else f"eventsourcery.{schema}"[:63]


#: pg_locks (as ``l``) rows of a granted advisory lock on one bigint key (the two halves of
#: ``_key_halves``) in this database: a session lock or a transaction's
_HELD_ADVISORY_LOCK = ("l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM "
                       "pg_database WHERE datname = current_database()) AND l.classid::bigint = %s "
                       "AND l.objid::bigint = %s AND l.objsubid = 1")


def _key_halves(key: int) -> tuple[int, int]:
    """The (classid, objid) under which pg_locks shows an advisory lock on ``key``."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def split_schema(conninfo: str, schema: str | None = None) -> tuple[str, str]:
    """``(conninfo, schema)``: a ``schema=`` parameter of a ``postgresql://`` URL taken out (libpq
    rejects it).

    ``schema`` given as an argument wins when the URL has none; the two must
    agree when both are given. The default schema is ``public``.
    """
    in_url = None
    if conninfo.startswith(("postgresql://", "postgres://")) and "?" in conninfo:
        base, _, query = conninfo.partition("?")
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        found = [value for key, value in pairs if key == "schema"]
        if found:
            in_url = found[-1]
            rest = [(key, value) for key, value in pairs if key != "schema"]
            conninfo = base + ("?" + urllib.parse.urlencode(rest) if rest else "")
    if schema is not None and in_url is not None and schema != in_url:
        raise ValueError(f"schema {schema!r} given, but the URL names schema {in_url!r}")
    return conninfo, _check_schema_name(schema or in_url or "public")


def describe_conninfo(conninfo: str) -> str:
    """``conninfo`` without its password, for messages and reprs."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "<unparsable conninfo>"
    params.pop("password", None)
    return make_conninfo("", **params)


def _connect(conninfo: str, *, application_name: str, keepalives: bool = False) -> Connection:
    """A new autocommit connection; connection failures become es.StoreError."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise es.StoreError(f"cannot parse the Postgres conninfo: {exc}") from exc
    extra: dict[str, Any] = {"application_name": application_name[:63], "connect_timeout": 10}
    if keepalives:
        # a listener idles for long stretches: let TCP notice a vanished server or peer
        extra.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    extra = {k: v for k, v in extra.items() if k not in given}
    try:
        return psycopg.connect(conninfo, autocommit=True, **extra)
    except psycopg.Error as exc:
        raise es.StoreError(
            f"cannot connect to Postgres ({describe_conninfo(conninfo)}): {exc}") from exc


# ---------------------------------------------------------------------------
# Schema: tables and the write function, created on first use.
# ---------------------------------------------------------------------------

def _store_ddl(schema: str) -> str:
    s = _quote(schema)
    lock_key = _advisory_key("write", schema)
    channel = _channel(schema).replace("'", "''")
    return f"""
CREATE TABLE IF NOT EXISTS {s}.events (
    id bigint PRIMARY KEY,
    uuid text NOT NULL,
    aggregate_id text NOT NULL,
    type text NOT NULL,
    version bigint NOT NULL,
    created_at timestamptz NOT NULL,
    correlation_id text,
    causation_id text,
    body json NOT NULL,
    metadata json,
    CONSTRAINT events_uuid_key UNIQUE (uuid),
    CONSTRAINT events_aggregate_id_version_key UNIQUE (aggregate_id, version)
);
ALTER TABLE {s}.events ADD COLUMN IF NOT EXISTS metadata json;
CREATE INDEX IF NOT EXISTS events_type_id ON {s}.events (type, id);
{es.tracker_table_ddl(f"{s}.{es.TRACKER_TABLE}")};
CREATE TABLE IF NOT EXISTS {s}.eventsourcery_snapshots (
    aggregate_id text NOT NULL,
    aggregate_type text NOT NULL,
    version bigint NOT NULL,
    snapshot_version integer NOT NULL,
    last_event_uuid text NOT NULL,
    state text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (aggregate_id, aggregate_type)
);
DROP FUNCTION IF EXISTS {s}.eventsourcery_write_events(
    text, bigint, text[], text[], timestamptz[], text[], text[], text[], boolean);
CREATE OR REPLACE FUNCTION {s}.eventsourcery_write_events(
    _aggregate_id text, _expected_version bigint, _uuids text[], _types text[],
    _created_at timestamptz[], _correlation_ids text[], _causation_ids text[], _metadata text[],
    _bodies text[], _lock boolean,
    OUT first_id bigint, OUT first_version bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    current_version bigint;
    last_id bigint;
BEGIN
    -- One writer at a time from here to commit: every read below sees every earlier write
    -- (each statement of a volatile function under READ COMMITTED takes a new snapshot), so
    -- the version check is race-free and ids are taken, and become visible, in commit order.
    IF _lock THEN
        PERFORM pg_advisory_xact_lock({lock_key});
    END IF;
    SELECT coalesce(max(e.version), 0) INTO current_version FROM {s}.events e
    WHERE e.aggregate_id = _aggregate_id;
    IF _expected_version IS NOT NULL AND _expected_version <> current_version THEN
        RAISE EXCEPTION 'aggregate % is at version %, expected %', _aggregate_id, current_version,
            _expected_version USING ERRCODE = '{_CONFLICT_SQLSTATE}';
    END IF;
    SELECT coalesce(max(e.id), 0) INTO last_id FROM {s}.events e;
    first_id := last_id + 1;
    first_version := current_version + 1;
    -- Without the lock, two writers can only collide here (on an id or a version): the unique
    -- indexes turn one of them away, and the caller reports that as a ConcurrencyError.
    INSERT INTO {s}.events (id, uuid, aggregate_id, type, version, created_at, correlation_id,
                            causation_id, metadata, body)
    SELECT last_id + x.i, x.u, _aggregate_id, x.t, current_version + x.i, x.c, x.corr, x.caus,
           x.m::json, x.b::json
    FROM unnest(_uuids, _types, _created_at, _correlation_ids, _causation_ids, _metadata, _bodies)
         WITH ORDINALITY AS x(u, t, c, corr, caus, m, b, i);
    PERFORM pg_notify('{channel}', (last_id + cardinality(_bodies))::text);
END
$fn$;
-- The same for one event, with scalar parameters: cheaper to send than seven one-element arrays.
CREATE OR REPLACE FUNCTION {s}.eventsourcery_write_event(
    _aggregate_id text, _expected_version bigint, _uuid text, _type text, _created_at timestamptz,
    _correlation_id text, _causation_id text, _metadata text, _body text, _lock boolean,
    OUT first_id bigint, OUT first_version bigint)
LANGUAGE plpgsql AS $fn$
BEGIN
    IF _lock THEN
        PERFORM pg_advisory_xact_lock({lock_key});
    END IF;
    SELECT coalesce(max(e.version), 0) + 1 INTO first_version FROM {s}.events e
    WHERE e.aggregate_id = _aggregate_id;
    IF _expected_version IS NOT NULL AND _expected_version <> first_version - 1 THEN
        RAISE EXCEPTION 'aggregate % is at version %, expected %', _aggregate_id, first_version - 1,
            _expected_version USING ERRCODE = '{_CONFLICT_SQLSTATE}';
    END IF;
    SELECT coalesce(max(e.id), 0) + 1 INTO first_id FROM {s}.events e;
    INSERT INTO {s}.events (id, uuid, aggregate_id, type, version, created_at, correlation_id,
                            causation_id, metadata, body)
    VALUES (first_id, _uuid, _aggregate_id, _type, first_version, _created_at, _correlation_id,
            _causation_id, _metadata::json, _body::json);
    PERFORM pg_notify('{channel}', first_id::text);
END
$fn$;
-- The writes of several sinks in one transaction (one commit): each in a block of its own, so that
-- a conflicting sink fails alone (its row says why) and the others are stored.
CREATE OR REPLACE FUNCTION {s}.eventsourcery_write_groups(
    _aggregate_ids text[], _expected_versions bigint[], _counts integer[], _uuids text[],
    _types text[], _created_at timestamptz[], _correlation_ids text[], _causation_ids text[],
    _metadata text[], _bodies text[], _lock boolean)
RETURNS TABLE (group_first_id bigint, group_first_version bigint, group_state text,
               group_constraint text, group_message text)
LANGUAGE plpgsql AS $fn$
DECLARE
    lo integer := 1;
    hi integer;
BEGIN
    IF _lock THEN
        PERFORM pg_advisory_xact_lock({lock_key});
    END IF;
    FOR i IN 1 .. cardinality(_aggregate_ids) LOOP
        hi := lo + _counts[i] - 1;
        BEGIN
            SELECT w.first_id, w.first_version INTO group_first_id, group_first_version
            FROM {s}.eventsourcery_write_events(_aggregate_ids[i], _expected_versions[i],
                _uuids[lo:hi], _types[lo:hi], _created_at[lo:hi], _correlation_ids[lo:hi],
                _causation_ids[lo:hi], _metadata[lo:hi], _bodies[lo:hi], _lock) w;
            group_state := NULL;
            group_constraint := NULL;
            group_message := NULL;
        EXCEPTION WHEN SQLSTATE '{_CONFLICT_SQLSTATE}' OR unique_violation OR serialization_failure
                       OR deadlock_detected THEN
            GET STACKED DIAGNOSTICS group_state = RETURNED_SQLSTATE,
                                    group_constraint = CONSTRAINT_NAME,
                                    group_message = MESSAGE_TEXT;
            group_first_id := NULL;
            group_first_version := NULL;
        END;
        RETURN NEXT;
        lo := hi + 1;
    END LOOP;
END
$fn$;
DROP TABLE IF EXISTS {s}.eventsourcery_aggregates;
CREATE TABLE IF NOT EXISTS {s}.eventsourcery_schema (version integer NOT NULL);
DELETE FROM {s}.eventsourcery_schema;
INSERT INTO {s}.eventsourcery_schema (version) VALUES ({SCHEMA_VERSION});
"""


def _run_ddl(conn: Connection, schema: str, ddl: str) -> None:
    """Run DDL in one transaction, serialised by an advisory lock so that processes starting
    together agree."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_advisory_key("ddl", schema),))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        conn.execute(ddl)


def _ensure_store_schema(conn: Connection, schema: str, *, create: bool = True) -> None:
    """Create or upgrade the store's tables in ``schema``; with ``create`` False, only check that a
    store of this version is there (nothing is created or upgraded)."""
    table = f"{_quote(schema)}.eventsourcery_schema"
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (True,):
        row = conn.execute(f"SELECT max(version) FROM {table}").fetchone()
        version = row[0] if row else None
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise es.StoreError(f"the store in schema {schema!r} has schema version {version}; "
                                f"this eventsourcery_pg knows version {SCHEMA_VERSION}: upgrade "
                                "eventsourcery")
        if not create:
            raise es.StoreError(f"the store in schema {schema!r} has schema version {version}, "
                                f"older than this eventsourcery_pg's {SCHEMA_VERSION}, and is not "
                                "upgraded when opened with create=False (nor by a read command): "
                                "open it once with create=True (start the application) to upgrade "
                                "it")
    elif not create:
        raise es.StoreError(f"no eventsourcery store in schema {schema!r}")
    _run_ddl(conn, schema, _store_ddl(schema))


# ---------------------------------------------------------------------------
# The database: es.Database completed with how to connect to Postgres and
# how its SQL names, creates and drops tables.
# ---------------------------------------------------------------------------

class PostgresDatabase(es.Database):
    """Connections to one Postgres database, lent to threads from a bounded pool (opened lazily,
    re-opened after a fork or a loss).

    ``schema`` (or ``?schema=`` in the URL) is where the library's tables
    live and, first on the search path, where a processor's unqualified
    tables are created. Transactions are BEGIN ... COMMIT with savepoints for
    nested use, from es.Database; each thread's are its own, on a connection
    it keeps for the transaction, so threads of one process neither queue
    behind each other's reads nor see each other's uncommitted writes.
    At most ``max_connections`` connections are open (default 10): a thread
    that finds them all in use waits up to ``connection_timeout`` seconds
    (default 30), then gets es.StoreError.

    With ``read_only`` every transaction of its sessions is read-only: the
    server refuses writes (es.StoreError), so nothing can change.

    ``lock_timeout`` (seconds; None keeps the server's setting) bounds every
    lock wait of this database's connections: a wait that lasts longer raises
    es.StoreError saying what it waited for, instead of hanging.
    """

    placeholder: ClassVar[str] = "%s"
    connection_per_thread: ClassVar[bool] = True
    driver_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def __init__(self, conninfo: str, *, schema: str | None = None,
                 application_name: str = "eventsourcery", lock_timeout: float | None = 30.0,
                 max_connections: int = 10, connection_timeout: float = 30.0,
                 read_only: bool = False) -> None:
        super().__init__(max_connections=max_connections, connection_timeout=connection_timeout)
        self.read_only = read_only
        if not isinstance(conninfo, str):
            raise TypeError("conninfo must be a str (a postgresql:// URL or key=value string), not "
                            f"{conninfo!r}")
        if lock_timeout is not None and (isinstance(lock_timeout, bool)
                                         or not isinstance(lock_timeout, (int, float))
                                         or not 0 < lock_timeout < 2**31 / 1000):
            raise ValueError("lock_timeout must be a positive number of seconds or None, not "
                             f"{lock_timeout!r}")
        self.conninfo, self.schema = split_schema(conninfo, schema)
        self.application_name = application_name
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"PostgresDatabase({describe_conninfo(self.conninfo)!r}, schema={self.schema!r})"

    def _create_connection(self) -> Connection:
        conn = _connect(self.conninfo, application_name=self.application_name)
        try:
            self._prepare(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self.error(exc, "prepare a new connection") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: Connection) -> None:
        """Settings of every new connection: the lock timeout; unqualified names (a processor's
        tables) live in ``schema``."""
        if self.lock_timeout is not None:
            milliseconds = max(round(self.lock_timeout * 1000), 1)
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{milliseconds}ms",))
        if self.schema != "public":
            conn.execute("SELECT set_config('search_path', quote_ident(%s) || ', ' || "
                         "current_setting('search_path'), false)", (self.schema,))
        if self.read_only:  # the server refuses every write of this session
            conn.execute("SELECT set_config('default_transaction_read_only', 'on', false)")

    def _connection_usable(self, conn: Any) -> bool:
        if conn.closed:
            return False
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return True  # in a transaction: a dead connection fails its next statement
        # Idle, the server sends nothing unasked: data waiting on the socket is a notice, a
        # notification, or the farewell of a server that shut down or ended the session (then the
        # connection is dead).
        pgconn = conn.pgconn
        for _ in range(3):
            if not select.select([pgconn.socket], [], [], 0)[0]:
                break
            try:
                pgconn.consume_input()
            except psycopg.Error:
                return False
        return bool(pgconn.status == pq.ConnStatus.OK)

    def error(self, exc: Exception, doing: str) -> es.StoreError:
        where = f"Postgres ({describe_conninfo(self.conninfo)}, schema {self.schema!r})"
        state = getattr(exc, "sqlstate", None) or ""
        if state in ("XX001", "XX002"):  # data_corrupted, index_corrupted
            return es.CorruptEventError(f"{where} reports damaged data: cannot {doing}: {exc}")
        if _connection_lost(exc):
            doubt = (" (whether the server committed the transaction is not known)"
                     if doing == "commit" else "")
            return es.StoreError(f"lost the connection to {where}: cannot {doing}{doubt}: {exc}")
        if state == "55P03":  # lock_not_available: lock_timeout passed
            return es.StoreError(f"{where}: waited longer than lock_timeout "
                                 f"({self._lock_timeout_text()}) for a lock another session holds: "
                                 f"cannot {doing}: {exc}")
        if state == "57014":  # query_canceled (statement_timeout)
            return es.StoreError(f"{where}: a statement was cancelled (statement_timeout?): cannot "
                                 f"{doing}: {exc}")
        return es.StoreError(f"cannot {doing} in {where}: {exc}")

    def _connection_lost(self, exc: Exception) -> bool:
        return _connection_lost(exc)

    def _lock_timeout_text(self) -> str:
        return "the server's setting" if self.lock_timeout is None else f"{self.lock_timeout:g} s"

    @property
    def location(self) -> str:
        """This database as a ``postgresql://`` URL naming its schema, without the password (another
        process connecting by it finds the password as libpq does: PGPASSWORD, ~/.pgpass)."""
        params = conninfo_to_dict(self.conninfo)
        params.pop("password", None)
        if self.schema != "public":
            params["schema"] = self.schema
        return "postgresql://?" + urllib.parse.urlencode(sorted(params.items()))

    def _connection_in_transaction(self, conn: Any) -> bool:
        # A closed connection's status is UNKNOWN: its transaction, if any, ended with its session.
        return bool(not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE)

    def execute(self, sql: str, params: Sequence[Any] = (), *, doing: str = "write") -> Any:
        # One statement needs no BEGIN/COMMIT round trips: it joins an open transaction or commits
        # alone.
        with self.borrow() as conn:
            try:
                return conn.execute(sql, params)
            except psycopg.Error as exc:
                raise self.error(exc, doing) from exc

    def qualify(self, table: str) -> str:
        return f"{_quote(self.schema)}.{table}"

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} = ANY(%s::text[])", (list(values),)  # one statement, whatever the count

    def create_tables(self, conn: Any, ddl: str) -> None:
        # Two sessions creating one table at once can both fail its catalog's unique index: take
        # turns.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_advisory_key("ddl", self.schema),))
        if conn.execute("SELECT to_regnamespace(%s) IS NULL", (self.schema,)).fetchone() == (True,):
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.schema)}")
        conn.execute(ddl)  # several statements (and $$ bodies) in one go

    def drop_tables(self, conn: Any, tables: Iterable[str]) -> None:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {_quote(table)} CASCADE")


class _StoreDatabase(PostgresDatabase):
    """The event store's database: aware UTC datetimes, per-statement snapshots (which the write
    function relies on), and the store's tables (created on first use, unless ``create`` is False).
    A transaction whose COMMIT lost its answer is resolved by the uuids of the events it stored."""

    def __init__(self, conninfo: str, *, schema: str | None = None, create: bool = True,
                 lock_timeout: float | None = 30.0, reconnect_timeout: float = 30.0,
                 max_connections: int = 10,
                 connection_timeout: float = 30.0, read_only: bool = False) -> None:
        super().__init__(conninfo, schema=schema, lock_timeout=lock_timeout,
                         max_connections=max_connections, connection_timeout=connection_timeout,
                         read_only=read_only)
        self.create = create and not read_only
        self.reconnect_timeout = reconnect_timeout

    def stored_versions(self, uuids: list[str], lost: psycopg.Error) -> dict[str, tuple[int, int]]:
        """``uuid -> (id, version)`` of those of ``uuids`` that are stored, looked up on a new
        connection after ``lost`` (tried for ``reconnect_timeout`` seconds; then StoreError)."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        session = self._session()
        while True:
            with session.lock:
                # the lost one (the pool's others are checked as they are lent)
                self._discard(session)
            try:
                with self.borrow() as conn:
                    rows = conn.execute(
                        f"SELECT uuid, id, version FROM {_quote(self.schema)}.events WHERE uuid = "
                        "ANY(%s::text[])",
                        (uuids,)).fetchall()
                return {u: (int(i), int(v)) for u, i, v in rows}
            except (psycopg.Error, es.StoreError) as exc:
                if isinstance(exc, psycopg.Error) and not _connection_lost(exc):
                    raise self.error(exc, f"find out whether events {uuids} were stored after the "
                                          f"connection was lost ({lost})") from exc
                if time.monotonic() + delay > deadline:
                    raise es.StoreError(
                        f"lost the connection to {self!r} while storing events {uuids}, and could "
                        f"not reconnect within {self.reconnect_timeout} s to find out whether they "
                        f"were stored ({exc}); look them up by uuid before writing them "
                        "again") from lost
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _commit_lost(self, exc: Exception, keys: list[str]) -> None:
        if not keys or not isinstance(exc, psycopg.Error) or not _connection_lost(exc):
            raise self.error(exc, "commit") from exc
        outcome = _lost_write_outcome(
            self.stored_versions(keys, exc), keys, exc,
            f"lost the connection to {self!r} while committing a transaction; it was not committed "
            f"(none of the events {keys} it stored is in the store)")
        if isinstance(outcome, es.Error):
            raise outcome
        # else it committed: the answer was lost, not the transaction

    def _prepare(self, conn: Connection) -> None:
        conn.execute("SELECT set_config('TimeZone', 'UTC', false), "
                     "set_config('default_transaction_isolation', 'read committed', false)")
        super()._prepare(conn)
        if not self.create:
            table = f"{_quote(self.schema)}.eventsourcery_schema"
            if conn.execute("SELECT to_regclass(%s) IS NULL", (table,)).fetchone() == (True,):
                raise es.StoreError(f"no eventsourcery store at {describe_conninfo(self.conninfo)} "
                                    f"(schema {self.schema!r})")
        _ensure_store_schema(conn, self.schema, create=self.create)


# ---------------------------------------------------------------------------
# The event store.
# ---------------------------------------------------------------------------

# body and metadata as JSON text, which es.decode_rows parses faster than psycopg's json loader
_COLUMNS = ", ".join(es.EVENT_COLUMNS[:-2]) + ", metadata::text, body::text"


class PostgresEventStore(es.SQLEventStore["_StoreDatabase"]):
    """An event store in a Postgres database, shared by processes on any number of hosts.

    ``conninfo`` is a ``postgresql://`` URL or a libpq ``key=value`` string;
    a URL may name the schema (``postgresql://host/db?schema=app``).
    The tables (``events``, ``eventsourcery_trackers``, ``eventsourcery_schema``)
    and the write function are created in ``schema`` on first use (safely when
    several processes start at once). Unqualified tables that reactors create
    through ``store.connection`` land in that schema too.

    ``poll_interval`` is how often (seconds) an idle subscription reads even
    without a notification; ``reconnect_timeout`` how long it keeps trying to
    replace a lost listener connection before it raises ``es.StoreError``;
    ``lock_timeout`` how long (seconds) a write waits for the store's write
    lock, held by another session's sinking transaction, before it raises
    ``es.StoreError`` naming that session (nothing written). With
    ``create=False`` only an existing store is opened (es.StoreError
    otherwise) and nothing is created; with ``read_only=True`` nothing is
    created either, and the server refuses every write (es.StoreError).

    The store object opens at most ``max_connections`` connections (default
    10) for its threads' reads, writes and transactions, lent to a thread for
    each (for the whole of a ``transaction()``); a thread that finds them all
    in use waits for one up to ``connection_timeout`` seconds (default 30),
    then gets ``es.StoreError``. Beside them, each running ``subscribe`` and
    each running processor's ``lock`` holds a connection of its own.

    A running processor holds its single-instance lock (``lock(name)``) as a
    session advisory lock on a connection of its own, which the server
    releases when the process dies: at most one instance of a processor name
    runs at a time, across all hosts.
    """

    select_columns = _COLUMNS

    def __init__(self, conninfo: str, *, schema: str | None = None, poll_interval: float = 2.0,
                 reconnect_timeout: float = 30.0, create: bool = True,
                 lock_timeout: float | None = 30.0, max_connections: int = 10,
                 connection_timeout: float = 30.0, read_only: bool = False,
                 _lock_writes: bool = True) -> None:
        self._db = _StoreDatabase(conninfo, schema=schema, create=create, lock_timeout=lock_timeout,
                                  reconnect_timeout=reconnect_timeout,
                                  max_connections=max_connections,
                                  connection_timeout=connection_timeout, read_only=read_only)
        self.conninfo = self._db.conninfo
        self.schema = self._db.schema
        self.poll_interval = poll_interval
        # False only to demonstrate, in tests, why the lock is there
        self._lock_writes = _lock_writes
        self._tracker = PostgresTracker(self._db)
        s = _quote(self.schema)
        self._events = f"{s}.events"
        self._write_sql = ("SELECT first_id, first_version FROM "
                           f"{s}.eventsourcery_write_events(%s, %s::bigint, %s::text[], "
                           "%s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[], "
                           "%s::text[], %s)")
        self._write_one_sql = ("SELECT first_id, first_version FROM "
                               f"{s}.eventsourcery_write_event(%s, %s::bigint, %s::text, %s::text, "
                               "%s::timestamptz, %s::text, %s::text, %s::text, %s::text, %s)")
        self._write_groups_sql = (f"SELECT * FROM {s}.eventsourcery_write_groups(%s::text[], "
                                  "%s::bigint[], %s::integer[], %s::text[], %s::text[], "
                                  "%s::timestamptz[], %s::text[], %s::text[], %s::text[], "
                                  "%s::text[], %s)")
        self._writes = es.GroupCommit(self._write_group)
        self._db.ensure_open()  # connect now, so that a bad conninfo fails here, clearly

    def __repr__(self) -> str:
        return f"PostgresEventStore({describe_conninfo(self.conninfo)!r}, schema={self.schema!r})"

    @property
    def reconnect_timeout(self) -> float:
        """Seconds a lost connection is tried again: to resolve a write in doubt, or to replace a
        listener."""
        return self._db.reconnect_timeout

    @reconnect_timeout.setter
    def reconnect_timeout(self, seconds: float) -> None:
        self._db.reconnect_timeout = seconds

    # -- processor locks ----------------------------------------------------

    def _lock_key(self, name: str) -> int:
        return _advisory_key("processor", self.schema, name)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[es.LockHeld]:
        key = self._lock_key(name)
        conn = _connect(self.conninfo, application_name=f"eventsourcery processor {name}",
                        keepalives=True)

        def held() -> bool:
            """The lock's session is still there: its idle connection has nothing to read (a
            server that ends a session says so first), or answers."""
            try:
                readable, _, _ = select.select([conn.fileno()], [], [], 0)
            except (OSError, ValueError, psycopg.Error):  # closed
                return False
            if not readable:
                return True
            try:  # a notice or a parameter's new value, perhaps: ask
                conn.execute("SELECT 1")
            except psycopg.Error:
                return False
            return True

        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if row != (True,):
                raise es.UnableToLockProcessorError(
                    f"processor {name!r} is already running against "
                    f"{describe_conninfo(self.conninfo)} (schema {self.schema!r})")
            try:
                yield held
            finally:
                with contextlib.suppress(psycopg.Error):
                    # released now, not when the session ends
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            # ends the session, which releases the lock if it is still held (e.g. after an error)
            conn.close()

    def is_running(self, name: str) -> bool:
        [(held,)] = self._db.fetch_all("SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE "
                                       f"{_HELD_ADVISORY_LOCK})", _key_halves(self._lock_key(name)),
                                       doing=f"look up processor lock {name!r}")
        return bool(held)

    # -- writing ------------------------------------------------------------

    def sink(self, event_or_events: es.Event | Sequence[es.Event],
             expected_version: int | None = None) -> list[es.Event]:
        events, aggregate_id, rows = es.encode_events(event_or_events, expected_version)
        if self._db.in_transaction():  # the calling thread's transaction: the sink joins it
            first_id, first_version = self._write_in_transaction(
                aggregate_id, expected_version, rows)
        else:  # with the sinks other threads are making now, in one commit
            first_id, first_version = self._writes.write((aggregate_id, expected_version, rows))
        return es.stored_copies(events, rows, first_id, first_version)

    def _params(self, aggregate_id: str, expected_version: int | None,
                rows: list[es.EventRow]) -> tuple[str, tuple[Any, ...]]:
        """The write function's call for one sink: scalars for one event, arrays for several."""
        if len(rows) == 1:
            (r,) = rows
            return self._write_one_sql, (aggregate_id, expected_version, r.uuid, r.type,
                                         r.created_at, r.correlation_id, r.causation_id, r.metadata,
                                         r.body, self._lock_writes)
        return self._write_sql, (aggregate_id, expected_version, [r.uuid for r in rows],
                                 [r.type for r in rows], [r.created_at for r in rows],
                                 [r.correlation_id for r in rows], [r.causation_id for r in rows],
                                 [r.metadata for r in rows], [r.body for r in rows],
                                 self._lock_writes)

    def _write_in_transaction(self, aggregate_id: str, expected_version: int | None,
                              rows: list[es.EventRow]) -> tuple[int, int]:
        sql, params = self._params(aggregate_id, expected_version, rows)
        db = self._db
        uuids = [r.uuid for r in rows]
        with db.lock:
            try:
                # a savepoint: a conflict leaves the outer transaction usable
                with db.transaction() as conn:
                    row = conn.execute(sql, params).fetchone()
            except psycopg.Error as exc:
                raise self._write_failure(exc, aggregate_id, uuids) from exc
        db.note_written(uuids)  # so that a lost COMMIT can be resolved
        return int(row[0]), int(row[1])

    def _write_failure(self, exc: psycopg.Error, aggregate_id: str, uuids: list[str]) -> es.Error:
        """The es error a write that raised ``exc`` (not a lost connection's) means; nothing was
        written."""
        error = _write_error(exc, aggregate_id, uuids)
        if error is not None:
            return error
        if exc.sqlstate == "55P03":
            return es.StoreError("waited longer than lock_timeout "
                                 f"({self._db._lock_timeout_text()}) for the write lock of "
                                 f"{self!r}, held by {self._write_lock_holder()}; events of "
                                 f"aggregate {aggregate_id!r} not stored")
        return self._db.error(exc,
                              f"store events of aggregate {aggregate_id!r}; nothing was written")

    def _write_group(self, sinks: list[tuple[str, int | None, list[es.EventRow]]]) -> list[Any]:
        """Write the sinks of several threads in one statement and one commit (GroupCommit's
        writer): ``(first_id, first_version)`` or the es error, per sink."""
        if len(sinks) == 1:  # alone: the one-sink call, one round trip
            (aggregate_id, expected_version, rows), = sinks
            sql, params = self._params(aggregate_id, expected_version, rows)
        else:
            flat = [r for _, _, rows in sinks for r in rows]
            sql = self._write_groups_sql
            params = ([a for a, _, _ in sinks], [v for _, v, _ in sinks],
                      [len(rows) for _, _, rows in sinks], [r.uuid for r in flat],
                      [r.type for r in flat], [r.created_at for r in flat],
                      [r.correlation_id for r in flat], [r.causation_id for r in flat],
                      [r.metadata for r in flat], [r.body for r in flat], self._lock_writes)
        db = self._db
        # lent for the group (the server's advisory lock orders the writers)
        with db.borrow() as conn:
            try:
                cursor = conn.execute(sql, params)
                if len(sinks) == 1:
                    return [cursor.fetchone()]
                answers = cursor.fetchall()
            except psycopg.Error as exc:
                if not _connection_lost(exc):
                    failures = [self._write_failure(exc, a, [r.uuid for r in rows])
                                for a, _, rows in sinks]
                    for failure in failures:
                        failure.__cause__ = exc
                    return failures
                found = db.stored_versions([r.uuid for _, _, rows in sinks for r in rows], exc)
                return [_lost_write_outcome(
                    found, [r.uuid for r in rows], exc,
                    f"lost the connection to {self!r} while storing events "
                    f"{[r.uuid for r in rows]}; they were not stored (none of their uuids is in "
                    "the store)") for _, _, rows in sinks]
        outcomes: list[Any] = []
        for (aggregate_id, _, rows), (first_id, first_version, state, constraint, message) in zip(
                sinks, answers, strict=True):
            if state is None:
                outcomes.append((first_id, first_version))
            else:
                uuids = [r.uuid for r in rows]
                outcomes.append(_conflict(state, constraint, message, aggregate_id, uuids)
                                or es.StoreError("cannot store events of aggregate "
                                                 f"{aggregate_id!r} in {self!r}: {state} "
                                                 f"{message}"))
        return outcomes

    def _write_lock_holder(self) -> str:
        """Who holds this store's write lock: for the message of a write that timed out waiting for
        it."""
        try:
            conn = _connect(self.conninfo, application_name="eventsourcery lock lookup")
            try:
                row = conn.execute(
                    "SELECT a.pid, a.application_name, a.state, now() - a.xact_start FROM pg_locks "
                    f"l JOIN pg_stat_activity a ON a.pid = l.pid WHERE {_HELD_ADVISORY_LOCK}",
                    _key_halves(_advisory_key("write", self.schema))).fetchone()
            finally:
                conn.close()
        except (psycopg.Error, es.StoreError):
            return "another session"
        if row is None:
            return "another session (which has released it since)"
        pid, application, state, age = row
        return (f"server process {pid} ({application or 'no application_name'}, {state}, in a "
                f"transaction for {age.total_seconds():.1f} s; a transaction that sinks holds the "
                "lock until it ends)")

    # -- erasure ------------------------------------------------------------

    def scrub(self) -> None:
        # The UPDATE left the old row versions as dead tuples; VACUUM removes them (it cannot run in
        # a transaction, so it runs after the erasure committed). Their bytes may stay on disk until
        # the space is reused: VACUUM FULL rewrites the table, but locks it, so that is left to the
        # operator.
        if self._db.in_transaction():
            return
        self._db.execute(f"VACUUM {self._events}", doing="vacuum the events table")
        self._db.execute(f"VACUUM {_quote(self.schema)}.eventsourcery_snapshots",
                         doing="vacuum the snapshots table")

    # -- subscribing --------------------------------------------------------

    def subscribe(self, from_id: int, event_types: es.EventTypes = None, *,
                  stop: es.StopSignal = None) -> Iterator[list[es.Event]]:
        """Yield batches from ``from_id`` on, waking on NOTIFY (and every ``poll_interval`` s),
        until ``stop``.

        Reads happen on the subscription's own LISTEN connection. If that
        connection dies it is replaced and reading resumes at the saved
        position; if no connection can be made for ``reconnect_timeout``
        seconds, ``es.StoreError`` is raised.
        """
        names = es.type_names(event_types)
        stopper = es.Stopper(stop)
        position = max(es.check_position("from_id", from_id), 1)
        size = es.batch_size()
        listener = _Listener(self)
        try:
            while not stopper.is_set():
                try:
                    # LISTEN first, so no commit after the read goes unnoticed
                    conn = listener.ensure_open()
                    batch = es.decode_rows(
                        conn.execute(*self._page_query(position, names, size)).fetchall())
                    listener.healthy()
                    if not batch:
                        listener.wait(stopper, self.poll_interval)
                        continue
                except es.CorruptEventError:
                    raise  # a damaged row, not a lost connection: reconnecting would not help
                except (psycopg.OperationalError, psycopg.InterfaceError, es.StoreError) as exc:
                    if isinstance(exc, psycopg.Error) and not _connection_lost(exc):
                        raise self._db.error(exc, f"read events from id {position}") from exc
                    listener.lost(exc, stopper)
                    continue
                # a failed statement (permissions, ...): reconnecting would not help
                except psycopg.Error as exc:
                    raise self._db.error(exc, f"read events from id {position}") from exc
                yield batch
                position = batch[-1].id + 1  # type: ignore[operator]
        finally:
            listener.close()


def _connection_lost(exc: BaseException) -> bool:
    """Whether a psycopg error means the connection is gone (its session ended; the server rolled
    back what it had not committed), rather than that a statement failed."""
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    # no SQLSTATE: the client lost the socket; 08xxx: connection exceptions; 57P0x: the server ended
    # the session
    return state is None or state.startswith("08") or state.startswith("57P")


def _write_error(exc: psycopg.Error, aggregate_id: str, uuids: list[str]) -> es.Error | None:
    """The es error a failed write means, or None when it is not a conflict."""
    return _conflict(exc.sqlstate, exc.diag.constraint_name, exc.diag.message_primary or str(exc),
                     aggregate_id, uuids)


def _conflict(state: str | None, constraint: str | None, message: str, aggregate_id: str,
              uuids: list[str]) -> es.Error | None:
    """The es error a write that failed with SQLSTATE ``state`` means, or None when it is not a
    conflict."""
    if state == _CONFLICT_SQLSTATE:
        return es.ConcurrencyError(message)
    if state == "23505":  # unique_violation
        if constraint == "events_uuid_key":
            return es.DuplicateEventError(
                f"an event with one of these uuids is already stored: {uuids}")
        return es.ConcurrencyError(f"concurrent write to aggregate {aggregate_id!r}: {message}")
    if state in ("40001", "40P01"):  # serialization_failure, deadlock_detected
        return es.ConcurrencyError(f"concurrent write to aggregate {aggregate_id!r}: {message}")
    return None


def _lost_write_outcome(found: dict[str, tuple[int, int]], uuids: list[str], lost: psycopg.Error,
                        not_stored: str) -> tuple[int, int] | es.Error:
    """What a write of ``uuids`` whose answer was ``lost`` did, given those of them that are
    ``found`` stored: ``(id, version)`` of its first event if it committed; else StoreError
    ``not_stored`` if none is there, CorruptEventError if only some are (one transaction wrote them
    all)."""
    stored = [found[u] for u in uuids if u in found]
    if len(stored) == len(uuids):
        return stored[0]
    error: es.Error
    if not stored:
        error = es.StoreError(f"{not_stored}: {lost}")
    else:
        ids = sorted(i for i, _ in stored)
        error = es.CorruptEventError(f"only {len(ids)} of the {len(uuids)} events {uuids} written "
                                     f"in one transaction are stored (ids {ids})")
    error.__cause__ = lost
    return error


class _Listener:
    """The LISTEN connection of one subscription: waits for notifications, and is replaced when it
    dies."""

    #: how often a waiting subscription checks its stop signal (seconds)
    stop_check_interval = 0.05

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self.conn: Connection | None = None
        self._notified = False
        self._failing_since: float | None = None
        self._failures = 0

    def ensure_open(self) -> Connection:
        if self.conn is None or self.conn.closed:
            store = self.store
            conn = _connect(store.conninfo,
                            application_name=f"eventsourcery listener {store.schema}",
                            keepalives=True)
            try:
                conn.add_notify_handler(self._on_notify)
                conn.execute("SET TimeZone = 'UTC'; LISTEN "
                             f"{_quote_identifier(_channel(store.schema))}")
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    def _on_notify(self, notify: psycopg.Notify) -> None:
        self._notified = True  # a notification that arrived while a query ran

    def healthy(self) -> None:
        self._failing_since = None
        self._failures = 0

    def wait(self, stopper: es.Stopper, timeout: float) -> None:
        """Return on a notification, on stop, or after ``timeout`` seconds; raise if the connection
        died."""
        conn = self.conn
        assert conn is not None
        deadline = time.monotonic() + timeout
        pgconn = conn.pgconn
        while not self._notified and not stopper.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([pgconn.socket], [], [],
                                        min(remaining, self.stop_check_interval))
            if not ready:
                continue
            pgconn.consume_input()  # raises OperationalError when the connection is gone
            while pgconn.notifies() is not None:
                self._notified = True  # several notifications wake us once
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the subscription's LISTEN connection was lost")
        self._notified = False

    def lost(self, exc: Exception, stopper: es.Stopper) -> None:
        """Forget a dead connection; wait a little before the next try, or raise when it is
        hopeless."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        self.close()
        if now - self._failing_since > self.store.reconnect_timeout:
            raise es.StoreError(f"subscription to {self.store!r} lost its connection and could not "
                                f"reconnect for {self.store.reconnect_timeout} s: {exc}") from exc
        es.config.logger.warning("subscription to %r: connection lost (%s); reconnecting",
                                 self.store, exc)
        stopper.sleep(min(0.1 * 2 ** (self._failures - 1), 2.0) if self._failures > 1 else 0.0)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# ---------------------------------------------------------------------------
# Trackers and projectors.
# ---------------------------------------------------------------------------

class PostgresTracker(es.DatabaseTracker):
    """Processor positions in ``eventsourcery_trackers`` of a Postgres database (a conninfo, or a
    PostgresDatabase). Writes join the database's current transaction, so a projector's writes and
    its new position commit together."""

    def __init__(self, db: str | PostgresDatabase, *, schema: str | None = None) -> None:
        super().__init__(db if isinstance(db, PostgresDatabase)
                         else PostgresDatabase(db, schema=schema))


class Projector(es.Projector):
    """``es.Projector`` on a Postgres database (``%s`` placeholders; ``self.db`` is a psycopg
    connection).

    ``es.Projector(url)`` does the same given a ``postgresql://`` URL; this class also takes a libpq
    ``key=value`` conninfo and ``schema=``: the projection's unqualified tables and its position
    then live in that schema.
    """

    def __init__(self, conninfo: str, *, schema: str | None = None,
                 batch_size: int | None = None) -> None:
        database = PostgresDatabase(conninfo, schema=schema,
                                    application_name=f"eventsourcery {self.processor_name}")
        super().__init__(database, batch_size=batch_size)


# ---------------------------------------------------------------------------
# The backend entry points es.open_store() and es.open_database() call for
# postgresql:// URLs (through es.BACKENDS).
# ---------------------------------------------------------------------------

def open_store(url: str, *, create: bool = True, read_only: bool = False, max_connections: int = 10,
               connection_timeout: float = 30.0) -> PostgresEventStore:
    """The event store at a ``postgresql://`` URL (``?schema=`` names its schema)."""
    return PostgresEventStore(url, create=create, read_only=read_only,
                              max_connections=max_connections,
                              connection_timeout=connection_timeout)


def open_database(url: str, **options: Any) -> PostgresDatabase:
    """The database at a ``postgresql://`` URL, for a projector's tables; ``options``: ``schema``,
    ``application_name``, ``max_connections``, ``connection_timeout``."""
    return PostgresDatabase(url, **options)
