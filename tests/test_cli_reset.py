"""The command line's ``reset`` does what ``processor.reset()`` does: it drops the tables a
projector (or reactor) recorded in its tracker and sets its position to 0, so that its next run
rebuilds them.

A projector that writes with plain INSERTs is the test: reset with its rows left in place, its next
run fails at event 1 (a duplicate key) forever.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3

import pytest

import eventsourcery as es
from tests.test_cli import assert_one_line_error, cli


class TitleAdded(es.Event, type="cli_reset.title_added"):
    title: str


class PlainInserts(es.Projector):
    """One row per event, written with a plain INSERT: it cannot process an event twice."""

    processor_name = "plain_inserts"
    schema = (
        "CREATE TABLE IF NOT EXISTS plain_titles "
        "(aggregate_id TEXT PRIMARY KEY, title TEXT NOT NULL)"
    )

    @es.on(TitleAdded)
    def _added(self, event: TitleAdded) -> None:
        p = self.placeholder
        self.db.execute(
            f"INSERT INTO plain_titles (aggregate_id, title) VALUES ({p}, {p})",
            (event.aggregate_id, event.title),
        )

    def rows(self) -> list[tuple[str, str]]:
        with self.database.transaction() as conn:
            return [
                tuple(r)
                for r in conn.execute("SELECT aggregate_id, title FROM plain_titles ORDER BY 1")
            ]


def run(projector: es.Projector, store: es.EventStore) -> None:
    latest = store.latest_event_id()
    projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= latest)


def add(store: es.EventStore, *titles: str) -> None:
    for title in titles:
        store.sink(TitleAdded(aggregate_id=f"t-{title}", title=title))


@pytest.fixture(
    params=["sqlite-own-file", "sqlite-store-file", "postgres-store-schema", "postgres-own-schema"]
)
def placed(request, tmp_path: pathlib.Path):
    """(store, STORE argument of the command line, where the projector lives)."""
    kind = request.param
    if kind.startswith("sqlite"):
        path = tmp_path / "events.db"
        store: es.EventStore = es.SQLiteEventStore(path)
        where = str(tmp_path / "projection.db") if kind == "sqlite-own-file" else str(path)
        target = str(path)
    else:
        from tests import pg_support

        schema = pg_support.new_schema()
        target = pg_support.store_url(schema)
        store = es.open_store(target)
        where = (
            target
            if kind == "postgres-store-schema"
            else pg_support.store_url(pg_support.new_schema())
        )
    try:
        yield store, target, where
    finally:
        store.close()


def test_a_plain_insert_projector_reset_from_the_command_line_rebuilds_on_its_next_run(
    placed,
) -> None:
    store, target, where = placed
    add(store, "a", "b", "c")
    projector = PlainInserts(where)
    run(projector, store)
    assert projector.rows() == [("t-a", "a"), ("t-b", "b"), ("t-c", "c")]
    projector.close()

    result = cli(target, "reset", "plain_inserts", input="y\n")
    assert result.returncode == 0, result.stderr
    assert (
        "Reset processor plain_inserts (position 3) and drop its tables plain_titles?"
        in result.stderr
    )
    assert "dropped its tables plain_titles" in result.stdout

    add(store, "d")
    again = PlainInserts(where)
    try:
        run(again, store)  # on a reset that left the rows: a duplicate key at event 1, for ever
        assert again.rows() == [("t-a", "a"), ("t-b", "b"), ("t-c", "c"), ("t-d", "d")]
        assert again.last_processed_event_id == store.latest_event_id()
        [status] = [s for s in es.processor_statuses(store) if s.name == "plain_inserts"]
        assert (status.state, status.lag, status.last_error) == ("stopped", 0, None)
    finally:
        again.close()


@pytest.fixture
def sqlite_projected(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A store and a projection file where PlainInserts has processed 2 events."""
    path, projection = tmp_path / "events.db", tmp_path / "projection.db"
    with es.SQLiteEventStore(path) as store:
        add(store, "a", "b")
        projector = PlainInserts(str(projection))
        run(projector, store)
        projector.close()
    return path, projection


def projection_state(projection: pathlib.Path) -> tuple[list, list]:
    with contextlib.closing(sqlite3.connect(projection)) as conn:
        return (
            conn.execute("SELECT * FROM plain_titles ORDER BY 1").fetchall(),
            conn.execute("SELECT position, tables FROM eventsourcery_trackers").fetchall(),
        )


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_a_declined_reset_drops_nothing_and_keeps_the_position(
    sqlite_projected, answer: str
) -> None:
    path, projection = sqlite_projected
    before = projection_state(projection)
    assert before == ([("t-a", "a"), ("t-b", "b")], [(2, '["plain_titles"]')])
    result = cli(path, "reset", "plain_inserts", input=answer)
    assert result.returncode == 1
    assert "not reset: plain_inserts stays at position 2" in result.stderr
    assert projection_state(projection) == before


def test_unrecorded_tables_are_refused_with_what_to_run_and_keep_tables_resets_the_position_only(
    sqlite_projected,
) -> None:
    path, projection = sqlite_projected
    with contextlib.closing(
        sqlite3.connect(projection)
    ) as conn:  # as an older eventsourcery left it
        conn.execute("UPDATE eventsourcery_trackers SET tables = NULL")
        conn.commit()
    before = projection_state(projection)
    refused = cli(path, "reset", "plain_inserts", "--yes")
    assert_one_line_error(
        refused,
        "not reset: the tables of projector 'plain_inserts' are not recorded",
        "call reset() on the projector in your code",
        f"python -m eventsourcery {path} reset plain_inserts --keep-tables",
    )
    assert projection_state(projection) == before

    kept = cli(path, "reset", "plain_inserts", "--keep-tables", "--yes")
    assert kept.returncode == 0, kept.stderr
    assert "its tables were kept (--keep-tables)" in kept.stdout
    assert projection_state(projection) == ([("t-a", "a"), ("t-b", "b")], [(0, None)])


def test_the_store_s_own_tables_are_never_dropped(tmp_path: pathlib.Path) -> None:
    class Greedy(PlainInserts):
        processor_name = "greedy"
        tables = ("plain_titles", "events")

    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as store:
        add(store, "a")
        projector = Greedy(str(path))
        run(projector, store)
        projector.close()
    assert_one_line_error(cli(path, "reset", "greedy", "--yes"), "the store's own tables events")
    with es.SQLiteEventStore(path) as store:
        assert store.latest_event_id() == 1
        assert store.tracker().last_processed_event_id("greedy") == 1


def test_a_projector_failing_in_its_replay_is_told_to_reset_with_its_tables(
    sqlite_projected,
) -> None:
    path, projection = sqlite_projected
    assert cli(path, "reset", "plain_inserts", "--keep-tables", "--yes").returncode == 0
    with es.SQLiteEventStore(path) as store:
        with pytest.raises(es.EventProcessingError):
            es.run_processor(PlainInserts(str(projection)), store, error_handler=es.NoRetry())
    lines = cli(path, "processors").stdout.splitlines()
    assert lines[2].startswith("  failing at event 1: ")
    assert lines[3] == (
        "  it fails while replaying (it had processed events 1-2 before its last reset): "
        "if its tables still hold what it wrote then, skipping will not help; "
        "reset it with its tables: python -m eventsourcery "
        f"{path} reset plain_inserts"
    )
    assert cli(path, "reset", "plain_inserts", "--yes").returncode == 0
    with es.SQLiteEventStore(path) as store:
        projector = PlainInserts(str(projection))
        run(projector, store)
        assert projector.rows() == [("t-a", "a"), ("t-b", "b")]
        projector.close()


def test_a_projector_whose_database_is_gone_is_not_reset(sqlite_projected) -> None:
    path, projection = sqlite_projected
    os.rename(projection, f"{projection}.moved")
    assert_one_line_error(cli(path, "reset", "plain_inserts", "--yes"),
                          "not reset: 'plain_inserts' keeps its position and tables in",
                          f"'{projection}'",
                          "cannot be opened now; nothing changed")
    assert not os.path.exists(projection)  # not created empty


def test_a_tracker_table_of_before_the_tables_column_is_read_unchanged_and_upgraded_by_a_write(
    sqlite_projected,
) -> None:
    path, projection = sqlite_projected
    for db in (path, projection):  # as an older eventsourcery left them
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("ALTER TABLE eventsourcery_trackers DROP COLUMN tables")
            conn.commit()
    before = path.read_bytes()
    listed = cli(path, "processors", "--json")
    assert listed.returncode == 0, listed.stderr
    assert path.read_bytes() == before  # read-only: not upgraded
    refused = cli(path, "reset", "plain_inserts", "--yes")
    assert_one_line_error(refused, "the tables of projector 'plain_inserts' are not recorded")
    with es.SQLiteEventStore(path) as store:  # a run with this version records them
        projector = PlainInserts(str(projection))
        run(projector, store)
        projector.close()
    assert cli(path, "reset", "plain_inserts", "--yes").returncode == 0
    with contextlib.closing(sqlite3.connect(projection)) as conn:
        assert conn.execute("SELECT position, tables FROM eventsourcery_trackers").fetchall() == [
            (0, '["plain_titles"]')]
        assert (conn.execute("SELECT name FROM sqlite_master WHERE name = 'plain_titles'")
                .fetchall() == [])
