"""The command line, ``python -m eventsourcery STORE COMMAND ...``, run as a subprocess.

Every test builds its own SQLite store with generic events (``es.Event(type=..., body=...)``):
the command line has no event classes, so this is also how it sees a store of unknown types.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import pty
import queue
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

import eventsourcery as es
from tests._util import WAIT, wait_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("EVENTSOURCERY_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
JSON_KEYS = {"id", "uuid", "type", "aggregate_id", "version", "created_at", "correlation_id",
             "causation_id", "metadata", "body"}
LONG_NOTE = "x" * 300


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(extra)
    return env


def cli(*args: object, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eventsourcery", *map(str, args)], cwd=ROOT,
                          input=input if input is not None else "", capture_output=True, text=True,
                          env=env or cli_env(), timeout=WAIT)


def cli_popen(*args: object, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eventsourcery", *map(str, args)], cwd=ROOT,
                            env=cli_env(), text=True, **kwargs)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eventsourcery: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


class CLICounter(es.EventStreamProcessor):
    """Counts events; its position lives in the store's tracker when given ``store.tracker()``."""

    processor_name = "cli_counter"

    @es.on()
    def _any(self, event: es.Event) -> None:
        pass


def run_counter(store: es.EventStore) -> None:
    counter = CLICounter(tracker=store.tracker())
    latest = store.latest_event_id()
    counter.subscribe_to(store, stop=lambda: counter.last_processed_event_id >= latest)


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    """An SQLite store holding five events of two todos (ids 1..5)."""
    path = tmp_path / "todo.db"
    with es.SQLiteEventStore(path) as store:
        store.sink(es.Event(type="todo_added", aggregate_id="todo-1", body={"title": "Buy milk"}))
        store.sink(es.Event(type="todo_added", aggregate_id="todo-2", body={"title": "Walk the dog",
                                                                            "note": LONG_NOTE}))
        store.sink(es.Event(type="todo_completed", aggregate_id="todo-1",
                            body={"completed_on": "2024-05-02"}))
        store.sink(es.Event(type="todo_amended", aggregate_id="todo-2",
                            body={"title": "Walk the cat ✓"}))
        store.sink(es.Event(type="todo_abandoned", aggregate_id="todo-2", body={}))
    return path


@pytest.fixture
def big_db(tmp_path: pathlib.Path) -> pathlib.Path:
    """An SQLite store holding 3000 events: more than a pipe's buffer when listed."""
    path = tmp_path / "big.db"
    with es.SQLiteEventStore(path) as store:
        store.sink([es.Event(type="bulk", aggregate_id="bulk", body={"i": i}) for i in range(3000)])
    return path


def table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["id", "created_at", "type", "aggregate_id", "version", "body"]
    return [line.split(None, 5) for line in lines[1:]]


# --- general ---------------------------------------------------------------------


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"eventsourcery {es.__version__}"


def test_help_lists_commands_and_reset_explains_tables_are_dropped(db: pathlib.Path) -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("events", "tail", "follow", "aggregate", "processors", "reset", "stats"):
        assert command in result.stdout
    reset_help = cli(db, "reset", "--help")
    assert reset_help.returncode == 0
    text = " ".join(reset_help.stdout.split())
    assert "drop the processor's own tables" in text
    assert "--keep-tables resets the position only" in text


@pytest.mark.parametrize("args", [(), ("events", "--limit", "0"), ("events", "--from", "x"),
                                  ("frobnicate",), ("reset",), ("aggregate",)])
def test_usage_errors_exit_2(db: pathlib.Path, args: tuple[str, ...]) -> None:
    result = cli(db, *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


# --- events ----------------------------------------------------------------------


def test_events_table(db: pathlib.Path) -> None:
    result = cli(db, "events")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r[2] for r in rows] == ["todo_added", "todo_added", "todo_completed", "todo_amended",
                                    "todo_abandoned"]
    assert [r[3] for r in rows] == ["todo-1", "todo-2", "todo-1", "todo-2", "todo-2"]
    assert [r[4] for r in rows] == ["1", "1", "2", "2", "3"]
    assert json.loads(rows[0][5]) == {"title": "Buy milk"}
    # not a terminal: whole body
    assert json.loads(rows[1][5]) == {"title": "Walk the dog", "note": LONG_NOTE}
    assert json.loads(rows[3][5]) == {"title": "Walk the cat ✓"}
    assert json.loads(rows[4][5]) == {}
    created = datetime.datetime.strptime(rows[0][1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)
    assert (abs(datetime.datetime.now(datetime.timezone.utc) - created)
            < datetime.timedelta(minutes=5))
    # aligned: every row's body starts in the same column as the header's
    lines = result.stdout.splitlines()
    column = lines[0].index("body")
    assert all(line[column] == "{" for line in lines[1:])


def test_events_table_body_is_truncated_to_the_terminal_width(db: pathlib.Path) -> None:
    result = cli(db, "events", env=cli_env(COLUMNS="70"))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert all(len(line) <= 70 for line in lines)
    assert lines[2].endswith("…")  # the long body
    wide = cli(db, "events", "--wide", env=cli_env(COLUMNS="70"))
    assert LONG_NOTE in wide.stdout


def test_events_json(db: pathlib.Path) -> None:
    result = cli(db, "events", "--json")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert [e["id"] for e in events] == [1, 2, 3, 4, 5]
    for e in events:
        assert set(e) == JSON_KEYS
        assert uuid.UUID(e["uuid"])
        assert datetime.datetime.fromisoformat(e["created_at"]).tzinfo is not None
    assert events[1] | {"uuid": None, "created_at": None} == {
        "id": 2, "uuid": None, "type": "todo_added", "aggregate_id": "todo-2", "version": 1,
        "created_at": None,
        "correlation_id": None, "causation_id": None, "metadata": {},
        "body": {"title": "Walk the dog", "note": LONG_NOTE}}
    assert events[3]["body"] == {"title": "Walk the cat ✓"}
    with es.SQLiteEventStore(db) as store:  # the very events the store holds
        assert [e["uuid"] for e in events] == [e.uuid for e in store.get_next_from(1)]


@pytest.mark.parametrize(("args", "ids"), [
    (("--type", "todo_added"), [1, 2]),
    (("--type", "todo_added", "--type", "todo_abandoned"), [1, 2, 5]),
    (("--type", "no_such_type"), []),
    (("--aggregate", "todo-2"), [2, 4, 5]),
    (("--aggregate", "todo-2", "--type", "todo_amended"), [4]),
    (("--from", "3"), [3, 4, 5]),
    (("--from", "3", "--type", "todo_added"), []),
    (("--limit", "2"), [1, 2]),
    (("--from", "2", "--limit", "2"), [2, 3]),
    (("--aggregate", "todo-2", "--from", "3", "--limit", "1"), [4]),
    (("--from", "99"), []),
])
def test_events_filters(db: pathlib.Path, args: tuple[str, ...], ids: list[int]) -> None:
    result = cli(db, "events", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert [e["id"] for e in json_lines(result.stdout)] == ids
    table = cli(db, "events", *args)
    assert table.returncode == 0
    if ids:
        assert [int(r[0]) for r in table_rows(table.stdout)] == ids
    else:
        assert table.stdout == ""
        assert table.stderr == "no events\n"


def test_events_over_several_pages_and_into_a_closed_pipe(big_db: pathlib.Path) -> None:
    result = cli(big_db, "events", "--json")
    assert result.returncode == 0
    assert [e["id"] for e in json_lines(result.stdout)] == list(range(1, 3001))
    # a reader that goes away after one line (like `| head -1`): no traceback, status 0
    for fmt in ((), ("--json",)):
        proc = cli_popen(big_db, "events", *fmt, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait(timeout=WAIT) == 0
        assert proc.stderr.read() == ""
        proc.stderr.close()


def test_progress_is_shown_on_a_terminal_only(big_db: pathlib.Path) -> None:
    quiet = cli(big_db, "events")
    assert quiet.stderr == ""
    master, slave = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "eventsourcery", str(big_db), "events"],
                                cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave, timeout=WAIT)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 3001  # the progress never goes to stdout
    assert b"reading events: " in seen and b"of 3,000" in seen
    assert seen.endswith(b"\r")  # cleared at the end


# --- aggregate -------------------------------------------------------------------


def test_aggregate_history(db: pathlib.Path) -> None:
    result = cli(db, "aggregate", "todo-2")
    assert result.returncode == 0, result.stderr
    *table, note = result.stdout.splitlines()
    assert note == "no snapshot"
    rows = table_rows("\n".join(table) + "\n")
    assert ([(r[0], r[2], r[4]) for r in rows]
            == [("2", "todo_added", "1"), ("4", "todo_amended", "2"), ("5", "todo_abandoned", "3")])
    events = json_lines(cli(db, "aggregate", "todo-1", "--json").stdout)
    assert [(e["id"], e["version"], e["body"]) for e in events] == [
        (1, 1, {"title": "Buy milk"}), (3, 2, {"completed_on": "2024-05-02"})]


@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_aggregate_unknown_is_no_match_exit_0_with_a_note(db: pathlib.Path,
                                                          json_flag: tuple[str, ...]) -> None:
    result = cli(db, "aggregate", "todo-9", *json_flag)
    assert ((result.returncode, result.stdout, result.stderr)
            == (0, "", "no events for aggregate 'todo-9'\n"))


@pytest.mark.parametrize("args", [("events", "--type", "nosuch"),
                                  ("events", "--json", "--type", "nosuch"),
                                  ("events", "--aggregate", "todo-9"), ("aggregate", "todo-9"),
                                  ("processors",), ("processors", "--json")])
def test_no_match_is_exit_0_with_a_note_on_stderr_everywhere(
        db: pathlib.Path, args: tuple[str, ...]) -> None:
    result = cli(db, *args)
    assert result.returncode == 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("no ")


def test_exit_statuses_are_documented_in_the_help() -> None:
    help_text = cli("--help").stdout
    for fragment in ("0    ok; also when nothing matches", "1    error", "2    bad usage",
                     "130  interrupted"):
        assert fragment in help_text


# --- usage errors and help are the command's own ---------------------------------------


@pytest.mark.parametrize("command", ["events", "follow", "tail", "aggregate", "processors", "reset",
                                     "stats", "backup"])
def test_command_help_without_a_store_is_the_commands_own(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m eventsourcery STORE ")
    assert "Look inside an eventsourcery event store" not in result.stdout  # not the top-level help


@pytest.mark.parametrize("args", [("events",), ("events", "--bogus"), ("follow", "--json"),
                                  ("aggregate", "x"), ("stats",)])
def test_a_command_where_the_store_should_be_says_the_store_is_missing(
        args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: python -m eventsourcery STORE ")
    assert ("the STORE is missing: it comes before the command, as in python -m eventsourcery "
            f"todo.db {args[0]}" in result.stderr)
    assert "Traceback" not in result.stderr


def test_a_file_named_like_a_command_is_still_a_store(db: pathlib.Path,
                                                      tmp_path: pathlib.Path) -> None:
    (tmp_path / "stats").write_bytes(db.read_bytes())
    result = subprocess.run([sys.executable, "-m", "eventsourcery", "stats", "stats"], cwd=tmp_path,
                            capture_output=True, text=True, env=cli_env(PYTHONPATH=str(ROOT)),
                            timeout=WAIT)
    assert result.returncode == 0, result.stderr
    assert "events:      5" in result.stdout


@pytest.mark.parametrize("command", ["events", "stats", "processors"])
def test_an_unknown_option_shows_the_commands_usage(db: pathlib.Path, command: str) -> None:
    result = cli(db, command, "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: python -m eventsourcery STORE {command} ")
    assert "unrecognized arguments: --bogus" in result.stderr


@pytest.mark.parametrize("store", ["memory:"])
def test_memory_store_is_refused(store: str) -> None:
    assert_one_line_error(cli(store, "events"), "memory", "SQLite file or a postgresql:// URL")


def test_events_from_0_is_the_beginning(db: pathlib.Path) -> None:
    result = cli(db, "events", "--json", "--from", "0")
    assert result.returncode == 0, result.stderr
    assert [e["id"] for e in json_lines(result.stdout)] == [1, 2, 3, 4, 5]
    assert cli(db, "events", "--from", "-1").returncode == 2


# --- processors and reset --------------------------------------------------------


def test_processors(db: pathlib.Path) -> None:
    empty = cli(db, "processors")
    assert empty.returncode == 0 and empty.stdout == ""
    assert cli(db, "processors", "--json").stdout == ""
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
        store.sink(es.Event(type="todo_added", aggregate_id="todo-3", body={"title": "New"}))
    result = cli(db, "processors")
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["name", "position", "lag", "running", "state"], ["cli_counter", "5", "1", "no", "stopped"]]
    assert [{k: s[k] for k in ("name", "position", "lag", "running", "state")}
            for s in json_lines(cli(db, "processors", "--json").stdout)] == [
        {"name": "cli_counter", "position": 5, "lag": 1, "running": False, "state": "stopped"}]


def test_processors_shows_running_and_reset_refuses_a_running_processor(db: pathlib.Path) -> None:
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
        tracker = store.tracker()
        with store.lock("cli_counter"):  # as a live instance of the processor holds it
            assert [{k: s[k] for k in ("name", "position", "lag", "running", "state")}
                    for s in json_lines(cli(db, "processors", "--json").stdout)] == [
                {"name": "cli_counter", "position": 5, "lag": 0, "running": True,
                 "state": "running"}]
            assert_one_line_error(cli(db, "reset", "cli_counter", "--yes"), "cli_counter",
                                  "running")
        assert tracker.last_processed_event_id("cli_counter") == 5


def position(db: pathlib.Path, name: str = "cli_counter") -> int:
    with es.SQLiteEventStore(db) as store:
        return store.tracker().last_processed_event_id(name)


@pytest.mark.parametrize("flag", ["--yes", "-y"])
def test_reset_with_yes(db: pathlib.Path, flag: str) -> None:
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
    assert position(db) == 5
    result = cli(db, "reset", "cli_counter", flag)
    assert result.returncode == 0, result.stderr
    assert "[y/N]" not in result.stderr
    assert "5 -> 0" in result.stdout
    assert position(db) == 0
    assert json_lines(cli(db, "processors", "--json").stdout)[0]["lag"] == 5
    with es.SQLiteEventStore(db) as store:  # the processor starts again from the first event
        counter = CLICounter(tracker=store.tracker())
        seen: list[int] = []
        counter.process = lambda event: seen.append(event.id)  # type: ignore[method-assign]
        counter.subscribe_to(store, stop=lambda: counter.last_processed_event_id >= 5)
        assert seen == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "nope\n"])
def test_reset_declined(db: pathlib.Path, answer: str) -> None:
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
    result = cli(db, "reset", "cli_counter", input=answer)
    assert result.returncode == 1
    assert result.stderr.startswith("Reset processor cli_counter (position 5)? [y/N] ")
    assert "not reset" in result.stderr and "Traceback" not in result.stderr
    assert position(db) == 5


@pytest.mark.parametrize("answer", ["y\n", "YES\n"])
def test_reset_confirmed(db: pathlib.Path, answer: str) -> None:
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
    result = cli(db, "reset", "cli_counter", input=answer)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Reset processor cli_counter (position 5)? [y/N] ")
    assert position(db) == 0


def test_reset_unknown_processor(db: pathlib.Path) -> None:
    assert_one_line_error(cli(db, "reset", "nobody", "--yes"), "unknown processor", "nobody")
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
    assert_one_line_error(cli(db, "reset", "nobody"), "unknown processor", "nobody", "cli_counter")
    assert position(db) == 5


# --- stats -----------------------------------------------------------------------


def test_stats(db: pathlib.Path) -> None:
    result = cli(db, "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["events"] == 5
    assert stats["aggregates"] == 2
    assert stats["types"] == {"todo_added": 2, "todo_abandoned": 1, "todo_amended": 1,
                              "todo_completed": 1}
    assert stats["file_size"] == db.stat().st_size > 0
    first = datetime.datetime.fromisoformat(stats["first_created_at"])
    last = datetime.datetime.fromisoformat(stats["last_created_at"])
    assert first <= last
    table = cli(db, "stats")
    assert table.returncode == 0
    text = table.stdout
    assert "events:      5" in text and "aggregates:  2" in text and "file size:" in text
    assert [line.split() for line in text.split("events by type:\n")[1].splitlines()] == [
        ["todo_added", "2"], ["todo_abandoned", "1"], ["todo_amended", "1"],
        ["todo_completed", "1"]]


def test_stats_of_an_empty_store(tmp_path: pathlib.Path) -> None:
    es.SQLiteEventStore(tmp_path / "empty.db").close()
    stats = json.loads(cli(tmp_path / "empty.db", "stats", "--json").stdout)
    assert (stats["events"], stats["aggregates"], stats["types"],
            stats["first_created_at"]) == (0, 0, {}, None)
    assert cli(tmp_path / "empty.db", "stats").returncode == 0


def test_sqlite_url(db: pathlib.Path) -> None:
    result = cli(f"sqlite:///{db}", "events", "--json")  # sqlite:/// + an absolute path
    assert result.returncode == 0, result.stderr
    assert len(json_lines(result.stdout)) == 5


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [("events",), ("stats",), ("processors",), ("tail",)])
def test_missing_file_is_an_error_and_is_not_created(tmp_path: pathlib.Path,
                                                     command: tuple[str, ...]) -> None:
    missing = tmp_path / "missing.db"
    assert_one_line_error(cli(missing, *command), f"no eventsourcery store at {str(missing)!r}",
                          "does not exist")
    assert_one_line_error(cli(f"sqlite:///{missing}", *command), "does not exist")
    assert os.listdir(tmp_path) == []


def test_directory_is_an_error(tmp_path: pathlib.Path) -> None:
    assert_one_line_error(cli(tmp_path, "events"), str(tmp_path), "directory")


def test_corrupt_file_is_an_error(tmp_path: pathlib.Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not an SQLite database\n" * 200)
    assert_one_line_error(cli(corrupt, "events"), str(corrupt))
    assert_one_line_error(cli(corrupt, "stats"), str(corrupt))


def test_other_sqlite_database_is_an_error_and_is_left_alone(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert_one_line_error(cli(empty, "events"), "not an eventsourcery event store")
    assert empty.read_bytes() == b""


@pytest.mark.parametrize("url", ["mysql://localhost/db", "http://example.com/x"])
def test_bad_url_scheme_is_an_error(url: str) -> None:
    assert_one_line_error(cli(url, "events"), url)


def test_unreachable_postgres_is_an_error() -> None:
    assert_one_line_error(cli("postgresql://nobody@127.0.0.1:9/nowhere?connect_timeout=2", "stats"))


# --- follow ----------------------------------------------------------------------


class LineReader:
    """Reads a process's stdout lines on a thread, so that the test can wait for each with a
    bound."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next(self, timeout: float = WAIT) -> str:
        return self.lines.get(timeout=timeout)


def append(db: pathlib.Path, type_name: str, aggregate_id: str = "live",
           **body: object) -> es.Event:
    with es.SQLiteEventStore(db) as store:
        return store.sink(es.Event(type=type_name, aggregate_id=aggregate_id, body=body))[0]


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    return code, proc.stderr.read()


@pytest.mark.parametrize("command", ["follow", "tail"])
def test_follow_prints_only_new_events_by_default(db: pathlib.Path, command: str) -> None:
    proc = cli_popen(db, command, "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = LineReader(proc)
        # We cannot tell when it has started listening: append until one event shows up.
        deadline = time.monotonic() + WAIT
        first = None
        while first is None and time.monotonic() < deadline:
            append(db, "ping")
            try:
                first = json.loads(reader.next(timeout=0.3))
            except queue.Empty:
                pass
        # none of the stored ones
        assert first is not None and first["type"] == "ping" and first["id"] > 5
        with es.SQLiteEventStore(db) as store:
            pings = store.latest_event_id() - first["id"]
        for _ in range(pings):
            assert json.loads(reader.next())["type"] == "ping"
        new = append(db, "todo_added", "todo-9", title="Live")
        line = json.loads(reader.next())
        assert (line["id"], line["uuid"], line["body"]) == (new.id, new.uuid, {"title": "Live"})
        assert set(line) == JSON_KEYS
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_follow_from_an_id_prints_stored_events_first_then_new_ones(db: pathlib.Path) -> None:
    proc = cli_popen(db, "follow", "--from", "4", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = LineReader(proc)
        assert reader.next().split()[:6] == ["id", "created_at", "type", "aggregate_id", "version",
                                             "body"]
        assert reader.next().split()[0::2][:2] == ["4", "todo_amended"]
        assert reader.next().split()[0::2][:2] == ["5", "todo_abandoned"]
        append(db, "todo_added", "todo-3", title="Three")
        row = reader.next().split(None, 5)
        assert ((row[0], row[2], row[3], json.loads(row[5]))
                == ("6", "todo_added", "todo-3", {"title": "Three"}))
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err


def first_stderr_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """The process's first line on stderr, or "" if none comes within ``timeout`` (the test then
    fails)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def test_follow_says_it_waits_then_prints_the_header_with_the_first_events(
        db: pathlib.Path) -> None:
    proc = cli_popen(db, "follow", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first_stderr_line(proc) == "waiting for new events after id 5 (Ctrl-C to stop)\n"
        reader = LineReader(proc)
        with pytest.raises(queue.Empty):
            reader.next(timeout=0.3)  # no header before there is an event
        append(db, "todo_added", "todo-3", title="Three")
        assert reader.next().split() == ["id", "created_at", "type", "aggregate_id", "version",
                                         "body"]
        assert reader.next().split()[0::2][:2] == ["6", "todo_added"]
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_follow_from_0_prints_every_event_and_says_so(db: pathlib.Path) -> None:
    proc = cli_popen(db, "follow", "--from", "0", "--json", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    try:
        assert first_stderr_line(proc) == ("printing the stored events from id 1, then waiting for "
                                           "new events (Ctrl-C to stop)\n")
        reader = LineReader(proc)
        assert [json.loads(reader.next())["id"] for _ in range(5)] == [1, 2, 3, 4, 5]
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_follow_filters(db: pathlib.Path) -> None:
    proc = cli_popen(db, "follow", "--from", "1", "--json", "--type", "todo_added", "--aggregate",
                     "todo-3", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = LineReader(proc)
        append(db, "todo_added", "todo-4", title="Not this one")
        append(db, "todo_completed", "todo-3")
        wanted = append(db, "todo_added", "todo-3", title="This one")
        assert json.loads(reader.next())["id"] == wanted.id
        with pytest.raises(queue.Empty):
            reader.next(timeout=0.5)
    finally:
        code, err = stop(proc)
    assert code == 0, err


# --- Postgres ---------------------------------------------------------------------


def postgres_store() -> es.EventStore:
    """The Postgres store at POSTGRES_URL; skips when it is not built yet, or unreachable outside
    CI."""
    try:
        import eventsourcery_pg

        store = eventsourcery_pg.PostgresEventStore(POSTGRES_URL)
        store.latest_event_id()
        return store
    except NotImplementedError:
        pytest.skip("eventsourcery_pg.PostgresEventStore is not implemented yet")
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres at {POSTGRES_URL} is unreachable in CI: {exc!r}")
        pytest.skip(f"Postgres at {POSTGRES_URL} is unreachable: {exc!r}")


def test_postgres_events_and_stats() -> None:
    store = postgres_store()
    aggregate_id = f"cli-{uuid.uuid4()}"
    type_name = f"cli_probe_{uuid.uuid4().hex}"
    try:
        stored = store.sink([es.Event(type=type_name, aggregate_id=aggregate_id, body={"n": n})
                             for n in range(3)])
    finally:
        store.close()
    result = cli(POSTGRES_URL, "events", "--json", "--aggregate", aggregate_id)
    assert result.returncode == 0, result.stderr
    assert [(e["id"], e["type"], e["body"]) for e in json_lines(result.stdout)] == [
        (e.id, type_name, {"n": n}) for n, e in enumerate(stored)]
    by_type = cli(POSTGRES_URL, "events", "--json", "--type", type_name, "--from", stored[0].id)
    assert [e["uuid"] for e in json_lines(by_type.stdout)] == [e.uuid for e in stored]
    table = cli(POSTGRES_URL, "events", "--type", type_name)
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 4
    stats = cli(POSTGRES_URL, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["types"][type_name] == 3
    assert data["events"] >= 3
    assert cli(POSTGRES_URL, "stats").returncode == 0


def test_postgres_processors_and_reset() -> None:
    store = postgres_store()
    name = f"cli_counter_{uuid.uuid4().hex}"
    counter_class = type("PgCounter", (CLICounter,), {"processor_name": name})
    try:
        store.sink(es.Event(type="cli_probe", aggregate_id=f"cli-{uuid.uuid4()}", body={}))
        counter = counter_class(tracker=store.tracker())
        latest = store.latest_event_id()
        counter.subscribe_to(store, stop=lambda: counter.last_processed_event_id >= latest)
        statuses = {s["name"]: s
                    for s in json_lines(cli(POSTGRES_URL, "processors", "--json").stdout)}
        assert statuses[name]["position"] >= latest and statuses[name]["running"] is False
        result = cli(POSTGRES_URL, "reset", name, "--yes")
        assert result.returncode == 0, result.stderr
        assert store.tracker().last_processed_event_id(name) == 0
    finally:
        store.close()


def test_postgres_read_commands_on_a_schema_with_no_store_create_nothing() -> None:
    from tests.pg_support import require_postgres

    require_postgres()  # skips when the server is unreachable
    import psycopg

    schema = f"cli_nosuch_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"
    for command in READ_COMMANDS:
        assert_one_line_error(cli(url, *command), "no eventsourcery store at", repr(schema))
    with psycopg.connect(POSTGRES_URL) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                            (schema,)).fetchone() == (0,)


# --- control characters, metadata, snapshots, erase -----------------------------------------------


def test_control_characters_in_stored_strings_are_escaped_in_tables_and_exact_in_json(tmp_path):
    path = tmp_path / "odd.db"
    nasty = "a\x1b[2Jb\x07c\x9bd\u202ee"
    with es.SQLiteEventStore(path) as store:
        store.sink(es.Event(type=f"t{nasty}", aggregate_id=nasty, body={"s": nasty},
                            metadata={"m": nasty}))
    for command in (["events"], ["aggregate", nasty]):
        table = cli(path, *command)
        assert table.returncode == 0, table.stderr
        assert not any(ch in table.stdout for ch in "\x1b\x07\x9b\u202e"), repr(table.stdout)
        assert "a\\x1b[2Jb\\x07c\\x9bd\\u202ee" in table.stdout
    (event,) = json_lines(cli(path, "events", "--json").stdout)
    assert (event["aggregate_id"], event["type"], event["body"], event["metadata"]) == (
        nasty, f"t{nasty}", {"s": nasty}, {"m": nasty})


def test_metadata_is_shown_in_the_table_and_in_json(tmp_path):
    path = tmp_path / "meta.db"
    with es.SQLiteEventStore(path) as store:
        store.sink(es.Event(type="noted", aggregate_id="n-1", body={"x": 1},
                            metadata={"user": "ada"}))
        store.sink(es.Event(type="noted", aggregate_id="n-1", body={"x": 2}))
    lines = cli(path, "events").stdout.splitlines()
    assert lines[1].endswith('{"x":1}  metadata {"user":"ada"}') and lines[2].endswith('{"x":2}')
    assert ([e["metadata"] for e in json_lines(cli(path, "events", "--json").stdout)]
            == [{"user": "ada"}, {}])


class CliNoted(es.Event, type="clitest.noted"):
    n: int


class CliCounter(es.Aggregate):
    snapshot_every = 2
    total: int = 0

    @es.on(CliNoted)
    def _noted(self, event):
        self.total += event.n


def test_aggregate_says_whether_a_snapshot_exists_and_at_which_version(tmp_path):
    path = tmp_path / "snap.db"
    with es.SQLiteEventStore(path) as store:
        repo = es.Repository(store)
        for agg, n in (("with-snapshot", 3), ("without", 1)):
            counter = repo.load(CliCounter, agg)
            for i in range(n):
                counter.apply_event(CliNoted, n=i)
            repo.save(counter)
    shown = cli(path, "aggregate", "with-snapshot")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^snapshot of tests\.test_cli\.CliCounter at version 3 \(snapshot_version 1, "
                     r"taken ", shown.stdout.splitlines()[-1])
    assert cli(path, "aggregate", "without").stdout.splitlines()[-1] == "no snapshot"
    as_json = cli(path, "aggregate", "with-snapshot", "--json")
    # stdout stays JSON lines
    assert len(json_lines(as_json.stdout)) == 3 and "snapshot of" in as_json.stderr


def test_erase_asks_first_and_then_leaves_tombstones(db: pathlib.Path) -> None:
    refused = cli(db, "erase", "todo-1", input="n\n")
    assert (refused.returncode == 1
            and "Erase aggregate 'todo-1' for good (2 events" in refused.stderr)
    assert "not erased" in refused.stderr
    assert [e["type"] for e in json_lines(cli(db, "events", "--aggregate", "todo-1", "--json")
                                          .stdout)] == ["todo_added", "todo_completed"]
    done = cli(db, "erase", "todo-1", "--yes", "--reason", "asked by the owner")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("erased 'todo-1': 2 events are tombstones now")
    events = json_lines(cli(db, "events", "--aggregate", "todo-1", "--json").stdout)
    assert [(e["type"], e["body"]) for e in events] == [
        (es.ERASED_TYPE, {}), (es.ERASED_TYPE, {}),
        ("eventsourcery.aggregate_erased", {"erased_events": 2, "reason": "asked by the owner"})]
    assert ([e["aggregate_id"] for e in json_lines(cli(db, "events", "--json").stdout)]
            .count("todo-2") == 3)
    nothing = cli(db, "erase", "no-such-todo", "--yes")
    assert nothing.returncode == 0 and "nothing erased" in nothing.stderr


# --- skip: moving a processor past one event ----------------------------------------------


def stuck_at_a_damaged_event(db: pathlib.Path, event_id: int = 3) -> None:
    """Damage one stored event behind the store's back, then run cli_counter until it gives up at
    it."""
    with es.SQLiteEventStore(db) as store:
        with store.transaction() as conn:
            conn.execute("UPDATE events SET body = '[1, 2]' WHERE id = ?", (event_id,))
        with pytest.raises(es.CorruptEventError):
            es.run_processor(CLICounter(tracker=store.tracker()), store, error_handler=es.NoRetry())


def test_processors_says_how_to_skip_the_event_a_processor_is_stuck_at(db: pathlib.Path) -> None:
    stuck_at_a_damaged_event(db)
    result = cli(db, "processors")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["cli_counter", "2", "3", "no", "failing"]
    assert lines[2].startswith("  failing at event 3: CorruptEventError: stored event 3 "
                               "(todo_completed)")
    assert (lines[3] == "  to move it past that event without processing it: python -m "
                        f"eventsourcery {db} skip cli_counter 3")


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_skip_declined_changes_nothing(db: pathlib.Path, answer: str) -> None:
    stuck_at_a_damaged_event(db)
    result = cli(db, "skip", "cli_counter", "3", input=answer)
    assert result.returncode == 1
    assert result.stderr.startswith("Skip event 3 (damaged: it cannot be read) for processor "
                                    "cli_counter; it is failing on it: CorruptEventError: stored "
                                    "event 3 ")
    assert "cli_counter will never process it (position 2 -> 3) [y/N] " in result.stderr
    assert "not skipped: cli_counter stays at position 2" in result.stderr
    assert position(db) == 2


@pytest.mark.parametrize("how", [{"input": "y\n"}, {"flag": "--yes"}, {"flag": "-y"}])
def test_skip_confirmed_moves_the_processor_past_the_event_and_it_goes_on_after_it(
        db: pathlib.Path, how) -> None:
    stuck_at_a_damaged_event(db)
    result = cli(db, "skip", "cli_counter", "3", *([how["flag"]] if "flag" in how else []),
                 input=how.get("input"))
    assert result.returncode == 0, result.stderr
    assert ("[y/N]" in result.stderr) == ("input" in how)
    assert result.stdout.startswith("skipped event 3 for cli_counter: position 2 -> 3; it will not "
                                    "process event 3")
    assert position(db) == 3
    status = json_lines(cli(db, "processors", "--json").stdout)[0]
    assert ((status["state"], status["last_error"], status["failing_event_id"])
            == ("stopped", None, None))
    # it goes on with the events after it, never the skipped one
    with es.SQLiteEventStore(db) as store:
        counter = CLICounter(tracker=store.tracker())
        seen: list[int] = []
        counter.process = lambda event: seen.append(event.id)  # type: ignore[method-assign]
        counter.subscribe_to(store, stop=lambda: counter.last_processed_event_id >= 5)
    assert seen == [4, 5]


@pytest.mark.parametrize(("args", "fragments"), [
    (("cli_counter", "4"), ("its position is 2, so the next event it processes is 3",)),
    (("cli_counter", "2"), ("its position is 2, so it is past that event already",)),
    (("cli_counter", "99"), ("it is not stored (the latest event is 5)",)),
    (("nobody", "3"), ("unknown processor 'nobody'", "cli_counter")),
])
def test_skip_of_a_wrong_event_is_refused_before_asking_and_changes_nothing(
        db: pathlib.Path, args, fragments) -> None:
    stuck_at_a_damaged_event(db)
    for extra in ((), ("--yes",)):
        assert_one_line_error(cli(db, "skip", *args, *extra, input="y\n"), "cannot skip",
                              "nothing changed" if args[0] != "nobody" else "", *fragments)
    assert position(db) == 2


@pytest.mark.parametrize("event_id", ["0", "-1", "x"])
def test_skip_needs_an_event_id(db: pathlib.Path, event_id: str) -> None:
    assert cli(db, "skip", "cli_counter", event_id).returncode == 2


def test_skip_help_says_only_the_next_event_can_be_skipped() -> None:
    result = cli("skip", "--help")
    assert result.returncode == 0
    assert "Only the next" in result.stdout and "es.skip_event" in result.stdout


def test_processors_table_escapes_control_characters_in_errors_and_standby(
        db: pathlib.Path) -> None:
    nasty = "a\x1b[2Jb\x07c\x9bd\u202ee"
    with es.SQLiteEventStore(db) as store:
        tracker = store.tracker()
        generation = tracker.acquire("evil", f"1@{nasty}", "processor")
        tracker.report("evil", generation, "running", f"RuntimeError: {nasty}", 3)
        tracker.setup("waiting")
        tracker.standby("waiting", f"2@{nasty}")
    table = cli(db, "processors")
    assert table.returncode == 0, table.stderr
    assert not any(ch in table.stdout for ch in "\x1b\x07\x9b\u202e"), repr(table.stdout)
    assert "  failing at event 3: RuntimeError: a\\x1b[2Jb\\x07c\\x9bd\\u202ee\n" in table.stdout
    assert "  standby: pid 2 on host a\\x1b[2Jb\\x07c\\x9bd\\u202ee\n" in table.stdout
    statuses = {s["name"]: s for s in json_lines(cli(db, "processors", "--json").stdout)}
    assert (statuses["evil"]["last_error"] == f"RuntimeError: {nasty}"
            and statuses["evil"]["owner"] == f"1@{nasty}")
    assert statuses["waiting"]["standby"] == f"2@{nasty}"


# --- reset: what a reset will and will not do again -----------------------------------------------


def test_reset_of_a_reactor_says_what_its_replay_will_and_will_not_do_again(
        tmp_path: pathlib.Path) -> None:
    from tests.test_operating_processors import CountingPonger, sink_pings

    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as store:
        sink_pings(store, 1, 3)
        reactor = CountingPonger(store)
        reactor.subscribe_to(store, stop=lambda: reactor.last_processed_event_id >= 3)
        assert store.latest_event_id() == 6  # three pongs
    result = cli(path, "reset", "counting_ponger", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "reset counting_ponger: position 3 -> 0; its next run processes every event again, from "
        "event 1", '  (unless its class sets start_from = "end": then its next run starts after '
                   'the latest event of',
        "  that moment (now event 6) and replays nothing)",
        "events 1-3 are a replay: self.replaying is True while it processes them; events after 3 "
        "are new to it",
        "for this reactor, during the replay:",
        "  done again:     every handler runs again, with its writes to the reactor's own "
        "tables, and",
        "                  every outside effect (mail, API calls) that its handler does not "
        "guard with",
        "                  `if not self.replaying`",
        "  not done again: emit_event sinks nothing (the events it emitted the first time are in "
        "the",
        "                  store), nor anything its handlers guard with `if not self.replaying`"]


def test_reset_of_a_projector_with_its_own_database_drops_its_tables(tmp_path) -> None:
    from tests import processing_support as ps

    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as store:
        store.sink([es.Event(type="cli_test.unregistered_thing", aggregate_id="t", body={})
                    for _ in range(4)])
        projector = ps.CountingProjector(str(tmp_path / "projection.db"))
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 4)
        projector.close()
    result = cli(path, "reset", "event_counter", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "reset event_counter: position 4 -> 0; its next run processes every event again, from "
        "event 1",
        "dropped its tables counts, seen: its next run creates them again and rebuilds them",
        '  (unless its class sets start_from = "end": then its next run starts after the latest '
        'event of',
        "  that moment (now event 4) and replays nothing)",
        "events 1-4 are a replay: self.replaying is True while it processes them; "
        "events after 4 are new to it"]
    assert ps.projection_position(str(tmp_path / "projection.db")) == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "projection.db")) as conn:
        found = conn.execute("SELECT name FROM sqlite_master WHERE name IN ('counts', 'seen')")
        assert found.fetchall() == []


# --- read commands never create or change anything ------------------------------------------------

READ_COMMANDS = [("events",), ("events", "--json"), ("aggregate", "todo-1"), ("processors",),
                 ("processors", "--json"), ("stats",), ("stats", "--json")]


def file_state(path: pathlib.Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def journal_mode(path: pathlib.Path, mode: str | None = None) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA journal_mode{f' = {mode}' if mode else ''}").fetchone()[0]


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_read_commands_open_an_sqlite_store_read_only_and_change_nothing(
        db: pathlib.Path, tmp_path, mode) -> None:
    from tests import processing_support as ps

    projection = tmp_path / "projection.db"
    with es.SQLiteEventStore(db) as store:
        run_counter(store)
        # registered in the store, its position elsewhere
        projector = ps.CountingProjector(str(projection))
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 5)
        projector.close()
    # "delete": as a backup tool may leave them; a read must not switch it
    for path in (db, projection):
        assert journal_mode(path, mode.upper()) == mode
    before = {path: file_state(path) for path in (db, projection)}
    files = sorted(os.listdir(tmp_path))
    for command in READ_COMMANDS:
        result = cli(db, *command)
        assert result.returncode == 0, (command, result.stderr)
        assert {path: file_state(path) for path in (db, projection)} == before, command
        assert sorted(os.listdir(tmp_path)) == files, command
    assert ({s["name"]: s["position"] for s in json_lines(cli(db, "processors", "--json").stdout)}
            == {"cli_counter": 5, "event_counter": 5})
    assert journal_mode(db) == journal_mode(projection) == mode
    assert cli(db, "reset", "cli_counter", "--yes").returncode == 0  # a write command still writes
    assert position(db) == 0


def test_read_commands_do_not_upgrade_an_older_store(db: pathlib.Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:  # as an older eventsourcery left it
        conn.execute("UPDATE eventsourcery_schema SET version = version - 1")
        conn.commit()
    before = file_state(db)
    files = sorted(os.listdir(db.parent))
    for command in READ_COMMANDS:
        assert_one_line_error(cli(db, *command),
                              "opened read-only here, so nothing is created or upgraded")
        assert file_state(db) == before, command
        assert sorted(os.listdir(db.parent)) == files, command


def test_read_commands_refuse_a_foreign_sqlite_file_and_leave_it_untouched(
        tmp_path: pathlib.Path) -> None:
    foreign = tmp_path / "foreign.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('mine')")
        conn.commit()
    before = file_state(foreign)
    for command in [*READ_COMMANDS, ("tail",), ("reset", "x", "--yes"),
                    ("skip", "x", "1", "--yes")]:
        assert_one_line_error(cli(foreign, *command), f"no eventsourcery store at {str(foreign)!r}",
                              "not an eventsourcery event store")
        assert file_state(foreign) == before, command
        assert os.listdir(tmp_path) == ["foreign.db"], command
    assert journal_mode(foreign) == "delete"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_skip_from_the_command_line_moves_a_running_processor_on(
        tmp_path: pathlib.Path, kind: str) -> None:
    """Another process (the CLI) skips the damaged event a processor running here is retrying at."""
    from tests.events import ItemAdded
    from tests.test_operating_processors import Background
    from tests.test_skip import damage

    if kind == "sqlite":
        store: es.EventStore = es.SQLiteEventStore(tmp_path / "events.db")
        url = str(tmp_path / "events.db")
    else:
        from tests.pg_support import postgres_store, store_url

        store = postgres_store()
        url = store_url(store.schema)  # type: ignore[attr-defined]
    try:
        store.sink([ItemAdded(aggregate_id="items", title=f"item {n}") for n in range(1, 6)])
        damage(store, 3)
        counter = CLICounter(tracker=store.tracker())
        seen: list[int] = []
        counter.process = lambda event: seen.append(event.id)  # type: ignore[method-assign]
        running = Background(counter, store, es.ConstantRetry(0.01))
        try:
            assert wait_until(lambda: json_lines(cli(url, "processors", "--json")
                                                 .stdout)[0]["failing_event_id"] == 3)
            listed = cli(url, "processors").stdout
            assert f"python -m eventsourcery {shlex.quote(url)} skip cli_counter 3" in listed
            result = cli(url, "skip", "cli_counter", "3", "--yes")
            assert result.returncode == 0, result.stderr
            assert counter.wait_for(5, timeout=WAIT)
        finally:
            running.finish()
        assert running.error is None
        assert seen == [1, 2, 4, 5]
    finally:
        store.close()
