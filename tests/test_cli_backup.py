"""``python -m eventsourcery STORE backup FILE``: a consistent copy of an SQLite store while it is
written, never over an existing file unless told, and the pg_dump advice for a Postgres store."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

import eventsourcery as es
from tests._util import WAIT
from tests.test_cli import ROOT, assert_one_line_error, cli

WRITER = """
import os, sys, time
import eventsourcery as es
path, stop = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 120
n = 0
with es.SQLiteEventStore(path) as store:
    while not os.path.exists(stop) and time.monotonic() < deadline:
        body = {"n": n, "pad": "x" * 500}
        event = es.Event(type="written", aggregate_id=f"w-{n % 50}", body=body)
        store.sink(event)
        n += 1
        if n == 1:
            print("writing", flush=True)
print(n, flush=True)
"""


def events_of(path: pathlib.Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT id, uuid, aggregate_id, version, type, body FROM events ORDER BY id"
        ).fetchall()


@pytest.fixture
def big_store(tmp_path: pathlib.Path) -> pathlib.Path:
    """A store of about 12 MB: a backup of it takes several steps of 1024 pages."""
    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path, synchronous="OFF") as store:
        for chunk in range(12):
            store.sink(
                [
                    es.Event(
                        type="seeded", aggregate_id=f"s-{chunk}", body={"pad": "y" * 1000, "i": i}
                    )
                    for i in range(1000)
                ]
            )
    return path


def test_a_backup_taken_while_a_writer_writes_is_a_valid_store_with_a_prefix_of_the_events(
    big_store: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(big_store), str(stop)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    copies = []
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "writing\n"
        for n in range(3):
            copy = tmp_path / f"copy-{n}.db"
            before = len(events_of(big_store))
            result = cli(big_store, "backup", copy)
            after = len(events_of(big_store))
            assert result.returncode == 0, result.stderr
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy-")) == [
                f"copy-{i}.db" for i in range(n + 1)
            ]  # no -wal, -shm or -journal beside a copy
            assert (
                f"to {copy}: " in result.stdout
                and "a consistent copy as of that event" in result.stdout
            )
            copies.append((copy, before, after))
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=WAIT)
    assert writer.returncode == 0, err  # never held up for its busy timeout
    written = int(out.split()[-1])
    stored = events_of(big_store)
    assert len(stored) == 12000 + written and [e[0] for e in stored] == list(
        range(1, len(stored) + 1)
    )
    for copy, before, after in copies:
        copied = events_of(copy)
        assert (
            before <= len(copied) <= after
        )  # the copy is the store as it was at one moment of the backup
        assert copied == stored[: len(copied)]  # a prefix: ids contiguous from 1, every event exact
        with es.SQLiteEventStore(copy) as restored:  # opens as a store, and takes writes
            assert restored.latest_event_id() == len(copied)
            restored.sink(es.Event(type="after", aggregate_id="after", body={}))
            assert restored.latest_event_id() == len(copied) + 1
    # the writer committed after a copy's snapshot was taken, before the backup command ended
    assert any(after > len(events_of(copy)) for copy, _, after in copies)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


@pytest.fixture
def small_store(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as store:
        for n in range(3):
            store.sink(es.Event(type="noted", aggregate_id=f"n-{n}", body={"n": n}))
    return path


def test_an_existing_file_is_not_overwritten_unless_forced(
    small_store: pathlib.Path, tmp_path
) -> None:
    target = tmp_path / "backup.db"
    target.write_bytes(b"precious")
    assert_one_line_error(
        cli(small_store, "backup", target),
        f"{target} exists: nothing written",
        "--force replaces it",
    )
    assert target.read_bytes() == b"precious"
    forced = cli(small_store, "backup", target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("backup", ".backup"))] == [
        "backup.db"
    ]
    assert len(events_of(target)) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("backup", ".backup"))] == [
        "backup.db"
    ]


@pytest.mark.parametrize("name", ["events.db", "events.db-wal", "events.db-shm", "./events.db"])
def test_the_store_itself_is_refused(small_store: pathlib.Path, name: str) -> None:
    before = small_store.read_bytes()
    result = cli(small_store, "backup", small_store.parent / name, "--force")
    assert_one_line_error(result, "is the store itself (or one of its files)")
    assert small_store.read_bytes() == before


def test_a_file_with_a_wal_beside_it_is_refused_even_when_forced(
    small_store: pathlib.Path, tmp_path
) -> None:
    """Copying a database over a file whose old -wal stays beside it shows the old contents to the
    next opener (SQLite applies that WAL): refused, whatever the flags."""
    target = tmp_path / "live.db"
    with es.SQLiteEventStore(target) as other:
        other.sink(es.Event(type="other", aggregate_id="o", body={}))
        assert os.path.exists(f"{target}-wal")
        assert_one_line_error(cli(small_store, "backup", target, "--force"), f"{target}-wal exists")
        assert other.latest_event_id() == 1


def test_a_directory_or_a_missing_store_is_refused(small_store: pathlib.Path, tmp_path) -> None:
    assert_one_line_error(cli(small_store, "backup", tmp_path), "is a directory")
    assert_one_line_error(cli(small_store, "backup", tmp_path / "no" / "b.db"),
                          "its directory does not exist")
    assert_one_line_error(
        cli(tmp_path / "nosuch.db", "backup", tmp_path / "b.db"), "no eventsourcery store at"
    )
    assert not os.path.exists(tmp_path / "b.db") and not os.path.exists(tmp_path / "nosuch.db")


def test_a_postgres_store_is_told_to_use_pg_dump_without_connecting(tmp_path) -> None:
    url = "postgresql://ada:secret@127.0.0.1:1/shop?schema=orders&connect_timeout=1"
    result = subprocess.run(
        [sys.executable, "-m", "eventsourcery", url, "backup", "shop.dump"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "eventsourcery: error: a postgresql store is not copied by eventsourcery"
    )
    assert (
        "pg_dump --format=custom --schema=orders --file=shop.dump "
        "'postgresql://ada@127.0.0.1:1/shop?connect_timeout=1'"
    ) in result.stderr
    assert "secret" not in result.stderr and "pg_restore" in result.stderr


def test_projectors_with_their_own_database_are_listed_as_not_in_the_copy(
    small_store: pathlib.Path, tmp_path
) -> None:
    from tests.test_cli_reset import PlainInserts

    with es.SQLiteEventStore(small_store) as store:
        projector = PlainInserts(str(tmp_path / "projection.db"))
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 3)
        projector.close()
    result = cli(small_store, "backup", tmp_path / "b.db")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[1:] == [f"  plain_inserts: {tmp_path / 'projection.db'}"]


def test_restore_as_the_readme_says(small_store: pathlib.Path, tmp_path) -> None:
    """Stop the app, remove the store's -wal and -shm, copy the backup in: it is the backup."""
    backup = tmp_path / "backup.db"
    assert cli(small_store, "backup", backup).returncode == 0
    store = es.SQLiteEventStore(small_store)
    store.sink(es.Event(type="later", aggregate_id="later", body={}))
    store.close()
    time.sleep(0)  # the app has stopped
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{small_store}{suffix}")
    shutil.copyfile(backup, small_store)
    with es.SQLiteEventStore(small_store) as restored:
        assert [e.type for e in restored.get_next_from(1)] == ["noted"] * 3


def test_a_store_in_rollback_journal_mode_is_copied_too(small_store, tmp_path) -> None:
    with contextlib.closing(sqlite3.connect(small_store)) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    result = cli(small_store, "backup", tmp_path / "b.db")
    assert result.returncode == 0, result.stderr
    assert events_of(tmp_path / "b.db") == events_of(small_store)
    with es.SQLiteEventStore(tmp_path / "b.db") as copy:
        assert copy.latest_event_id() == 3
