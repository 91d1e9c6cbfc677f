"""The todo example (examples/todo): its parts without HTTP, then the whole app end to end.

The end-to-end test starts ``python -m examples.todo`` as a subprocess on a
free port, drives it over HTTP, waits for the projections, reads the event
store directly, and stops it with SIGINT. It runs on SQLite, and on Postgres
when ``eventsourcery_pg`` can open a store on the server at
``EVENTSOURCERY_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``),
in a database of its own that it drops afterwards.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

import eventsourcery as es
from examples.todo import __main__ as app_main
from examples.todo.aggregate import Todo, UnprocessableEntity
from examples.todo.commands import (
    AbandonTodo,
    AddTodo,
    AmendTodo,
    BadRequest,
    CommandHandler,
    CompleteTodo,
    Conflict,
)
from examples.todo.events import (
    StakeholderNotifiedOfTodoCompletion,
    TodoAbandoned,
    TodoAdded,
    TodoAmended,
    TodoCompleted,
)
from examples.todo.projections import (
    CompletedTodos,
    OutstandingTodos,
    ScheduledTodos,
    completed_todos,
    outstanding_todos,
    scheduled_todos,
)
from examples.todo.reactor import TodoCompletedNotifier
from examples.todo.web import TodoApp

ROOT = pathlib.Path(__file__).resolve().parent.parent
D = datetime.date
POSTGRES_URL = os.environ.get("EVENTSOURCERY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------
# Commands: validation, with the original app's messages


@pytest.mark.parametrize("command, params, message", [
    (AddTodo, {"title": "x"}, "todo_id is blank"),
    (AddTodo, {"todo_id": "  ", "title": "x"}, "todo_id is blank"),
    (AddTodo, {"todo_id": "a"}, "title is blank"),
    (AddTodo, {"todo_id": "a", "title": None}, "title is blank"),
    (AddTodo, {"todo_id": "a", "title": "   "}, "title is blank"),
    (AddTodo, {"todo_id": "a", "title": 7}, "title is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "due_date": "invalid"}, "due_date is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "due_date": "2017-02-30"}, "due_date is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "due_date": 20170713}, "due_date is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "stakeholder_email": ["a@b"]}, "stakeholder_email is invalid"),
    (AmendTodo, {"title": "x"}, "todo_id is blank"),
    (AmendTodo, {"todo_id": "a", "due_date": "not a date"}, "due_date is invalid"),
    (AmendTodo, {"todo_id": "a", "title": None}, "title is blank"),
    (AmendTodo, {"todo_id": "a", "description": 1.5}, "description is invalid"),
    (CompleteTodo, {"completed_on": "2017-07-13"}, "todo_id is blank"),
    (CompleteTodo, {"todo_id": "a"}, "completed_on is blank"),
    (CompleteTodo, {"todo_id": "a", "completed_on": None}, "completed_on is blank"),
    (CompleteTodo, {"todo_id": "a", "completed_on": ""}, "completed_on is blank"),
    (CompleteTodo, {"todo_id": "a", "completed_on": "invalid"}, "completed_on is invalid"),
    (AbandonTodo, {"todo_id": "a"}, "abandoned_on is blank"),
    (AbandonTodo, {"todo_id": "a", "abandoned_on": "invalid"}, "abandoned_on is invalid"),
    (AbandonTodo, {"todo_id": "a", "abandoned_on": "13/07/2017"}, "abandoned_on is invalid"),
])
def test_command_validation(command, params, message):
    with pytest.raises(BadRequest) as info:
        command.build(params)
    assert str(info.value) == message


def test_commands_keep_only_their_keys_and_parse_dates():
    add = AddTodo.build({"todo_id": "a", "title": "2000 squats", "description": "Leg day.",
                         "due_date": "2017-07-13", "stakeholder_email": "g@example.com", "extra": 1})
    assert add == AddTodo(todo_id="a", title="2000 squats", description="Leg day.",
                          due_date=D(2017, 7, 13), stakeholder_email="g@example.com")
    assert AmendTodo.build({"todo_id": "a"}).changes == {}  # an empty amend is allowed
    assert AmendTodo.build({"todo_id": "a", "due_date": None}).changes == {"due_date": None}
    assert AmendTodo.build({"todo_id": "a", "description": "x", "completed_on": "2017-01-01"}).changes == {
        "description": "x"}
    assert CompleteTodo.build({"todo_id": "a", "completed_on": "2017-07-13"}).completed_on == D(2017, 7, 13)
    assert AbandonTodo.build({"todo_id": "a", "abandoned_on": "2017-07-13"}).abandoned_on == D(2017, 7, 13)


# ---------------------------------------------------------------------------
# The aggregate: the original's guards and messages


def _todo(*events) -> Todo:
    return Todo("t1", events)


ADDED = TodoAdded(aggregate_id="t1", title="x")
COMPLETED = TodoCompleted(aggregate_id="t1", completed_on=D(2017, 7, 13))
ABANDONED = TodoAbandoned(aggregate_id="t1", abandoned_on=D(2017, 7, 13))


@pytest.mark.parametrize("history, call, message", [
    ([ADDED], lambda t: t.add(title="y"), 'Todo "t1" already exists'),
    ([], lambda t: t.amend(title="y"), 'Todo "t1" does not exist'),
    ([ADDED, COMPLETED], lambda t: t.amend(title="y"), 'Todo "t1" is complete'),
    ([ADDED, ABANDONED], lambda t: t.amend(title="y"), 'Todo "t1" is abandoned'),
    ([], lambda t: t.complete(completed_on=D(2017, 7, 14)), 'Todo "t1" does not exist'),
    ([ADDED, COMPLETED], lambda t: t.complete(completed_on=D(2017, 7, 14)), 'Todo "t1" already complete'),
    ([ADDED, ABANDONED], lambda t: t.complete(completed_on=D(2017, 7, 14)), 'Todo "t1" already abandoned'),
    ([], lambda t: t.abandon(abandoned_on=D(2017, 7, 14)), 'Todo "t1" does not exist'),
    ([ADDED, COMPLETED], lambda t: t.abandon(abandoned_on=D(2017, 7, 14)), 'Todo "t1" already complete'),
    ([ADDED, ABANDONED], lambda t: t.abandon(abandoned_on=D(2017, 7, 14)), 'Todo "t1" already abandoned'),
])
def test_aggregate_guards(history, call, message):
    todo = _todo(*history)
    with pytest.raises(UnprocessableEntity) as info:
        call(todo)
    assert str(info.value) == message
    assert todo.changes == []


def test_aggregate_applies_events_and_loads_the_notifiers_event():
    notified = StakeholderNotifiedOfTodoCompletion(
        aggregate_id="t1", notified_on=datetime.datetime(2017, 6, 13, tzinfo=datetime.timezone.utc))
    todo = _todo(ADDED, COMPLETED, notified)  # no UnknownEventError for the reactor's event
    assert todo.completed and todo.version == 3
    todo = _todo(ADDED)
    todo.amend(due_date=None)
    todo.complete(completed_on=D(2017, 7, 14))
    assert [type(e) for e in todo.changes] == [TodoAmended, TodoCompleted]
    assert todo.changes[0].changes == {"due_date": None}
    with pytest.raises(TypeError):
        todo.amend(completed_on=D(2017, 1, 1))


def test_todo_amended_keeps_absent_apart_from_null_when_stored(tmp_path):
    with es.SQLiteEventStore(tmp_path / "events.db") as store:
        handler = CommandHandler(es.Repository(store))
        handler.handle(AddTodo.build({"todo_id": "a", "title": "x", "due_date": "2017-07-13"}))
        handler.handle(AmendTodo.build({"todo_id": "a", "due_date": None}))
        handler.handle(AmendTodo.build({"todo_id": "a", "description": "d"}))
        handler.handle(AmendTodo.build({"todo_id": "a", "due_date": "2017-08-01", "title": "y"}))
        cleared, described, dated = store.get_events_for_aggregate_id("a")[1:]
    assert cleared.changes == {"due_date": None}
    assert described.changes == {"description": "d"}
    assert dated.changes == {"title": "y", "due_date": D(2017, 8, 1)}
    assert isinstance(dated.due_date, D)


# ---------------------------------------------------------------------------
# The command handler: load, call, save; retry ConcurrencyError, then Conflict


def test_command_handler_saves_events():
    store = es.MemoryEventStore()
    handler = CommandHandler(es.Repository(store))
    stored = handler.handle(AddTodo.build({"todo_id": "a", "title": "x"}))
    assert [(e.type, e.id, e.version) for e in stored] == [("todo_added", 1, 1)]
    handler.handle(CompleteTodo.build({"todo_id": "a", "completed_on": "2017-07-13"}))
    with pytest.raises(UnprocessableEntity, match='Todo "a" already complete'):
        handler.handle(AbandonTodo.build({"todo_id": "a", "abandoned_on": "2017-07-13"}))
    assert [e.type for e in store.get_events_for_aggregate_id("a")] == ["todo_added", "todo_completed"]


class _RacingRepository(es.Repository):
    """Another writer appends to the todo's stream just before each of the first ``races`` saves."""

    def __init__(self, store, races):
        super().__init__(store)
        self.races = races
        self.saves = 0

    def save(self, aggregate):
        self.saves += 1
        if self.saves <= self.races:
            self.store.sink(StakeholderNotifiedOfTodoCompletion(
                aggregate_id=aggregate.id, notified_on=datetime.datetime.now(datetime.timezone.utc)))
        return super().save(aggregate)


def test_command_handler_retries_concurrency_errors():
    store = es.MemoryEventStore()
    CommandHandler(es.Repository(store)).handle(AddTodo.build({"todo_id": "a", "title": "x"}))
    repo = _RacingRepository(store, races=2)
    CommandHandler(repo, backoff=0).handle(AmendTodo.build({"todo_id": "a", "title": "y"}))
    assert repo.saves == 3
    assert store.get_events_for_aggregate_id("a")[-1].changes == {"title": "y"}


def test_command_handler_gives_up_with_conflict():
    store = es.MemoryEventStore()
    CommandHandler(es.Repository(store)).handle(AddTodo.build({"todo_id": "a", "title": "x"}))
    repo = _RacingRepository(store, races=100)
    with pytest.raises(Conflict, match='Todo "a" was changed by another request'):
        CommandHandler(repo, attempts=3, backoff=0).handle(AmendTodo.build({"todo_id": "a", "title": "y"}))
    assert repo.saves == 3
    assert not any(e.type == "todo_amended" for e in store.get_events_for_aggregate_id("a"))


# ---------------------------------------------------------------------------
# Projectors, run directly (no runner): the sequences of the original's request specs

ROW = dict.fromkeys(("description", "due_date", "stakeholder_email"))


def _query(path, query):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return query(db)


def _sink_all(store, events):
    for event in events:
        store.sink(event)


def _run(projector, store):
    """Process everything in the store through ``subscribe_to``, stopping once caught up."""
    projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= store.latest_event_id())


@pytest.fixture
def sqlite_store(tmp_path):
    with es.SQLiteEventStore(tmp_path / "events.db") as store:
        yield store


def test_outstanding_todos(sqlite_store, tmp_path):
    t1, t2, t3, t4 = (new_id() for _ in range(4))
    _sink_all(sqlite_store, [
        TodoAdded(aggregate_id=t1, title="I don't do requests"),
        TodoAdded(aggregate_id=t2, title="If it's hard to remember, it will be difficult to forget",
                  due_date=D(2017, 6, 13)),
        TodoCompleted(aggregate_id=t1, completed_on=D(2017, 6, 13)),
        TodoAmended(aggregate_id=t2, title="If it's hard to remember, it...", description="Hmm...",
                    amended_fields=("title", "description")),
        TodoAdded(aggregate_id=t3, title="Milk is for babies"),
        TodoAdded(aggregate_id=t4, title="Your clothes, give them to me, now!"),
        TodoAbandoned(aggregate_id=t4, abandoned_on=D(2017, 6, 1)),
    ])
    projector = OutstandingTodos(tmp_path / "projections.db")
    _run(projector, sqlite_store)
    assert projector.last_processed_event_id == 7
    assert _query(tmp_path / "projections.db", outstanding_todos) == [
        {**ROW, "todo_id": t2, "title": "If it's hard to remember, it...", "description": "Hmm...",
         "due_date": "2017-06-13"},
        {**ROW, "todo_id": t3, "title": "Milk is for babies"},
    ]


def test_scheduled_todos(sqlite_store, tmp_path):
    t1, t2, t3, t4, t5, t6 = (new_id() for _ in range(6))
    _sink_all(sqlite_store, [
        TodoAdded(aggregate_id=t1, title="I don't do requests"),
        TodoAdded(aggregate_id=t2, title="If it's hard to remember, it will be difficult to forget"),
        TodoCompleted(aggregate_id=t1, completed_on=D(2017, 6, 13)),
        TodoAmended(aggregate_id=t2, title="If it's hard to remember, it...", description="Hmm...",
                    due_date=D(2017, 6, 13), amended_fields=("title", "description", "due_date")),
        TodoAdded(aggregate_id=t3, title="Milk is for babies"),
        TodoAdded(aggregate_id=t4, title="Your clothes, give them to me, now!", due_date=D(2017, 6, 13)),
        TodoAbandoned(aggregate_id=t4, abandoned_on=D(2017, 6, 1)),
        TodoAdded(aggregate_id=t5, title="Your clothes, give them to me, now!", due_date=D(2017, 6, 18)),
        TodoAmended(aggregate_id=t5, due_date=None, amended_fields=("due_date",)),  # cleared
        TodoAdded(aggregate_id=t6, title="Tell him about those skinny legs", due_date=D(2017, 6, 22)),
        TodoAmended(aggregate_id=t6, description="Squats", amended_fields=("description",)),  # date kept
    ])
    projector = ScheduledTodos(tmp_path / "projections.db")
    projector.setup()
    projector.process_batch(sqlite_store.get_next_from(1))  # batch by batch, as the runner does
    assert projector.last_processed_event_id == 11
    assert _query(tmp_path / "projections.db", scheduled_todos) == [
        {**ROW, "todo_id": t2, "title": "If it's hard to remember, it...", "description": "Hmm...",
         "due_date": "2017-06-13"},
        {**ROW, "todo_id": t6, "title": "Tell him about those skinny legs", "description": "Squats",
         "due_date": "2017-06-22"},
    ]
    # t3 and t5 are outstanding but have no due date
    count = _query(tmp_path / "projections.db",
                   lambda db: db.execute("SELECT count(*) FROM query_scheduled_todos").fetchone()[0])
    assert count == 4


def test_completed_todos_with_staging_table(sqlite_store, tmp_path):
    t1, t2, t3, t4 = (new_id() for _ in range(4))
    _sink_all(sqlite_store, [
        TodoAdded(aggregate_id=t1, title="I don't do requests"),
        TodoAdded(aggregate_id=t2, title="If it's hard to remember, it will be difficult to forget",
                  due_date=D(2017, 6, 13)),
        TodoCompleted(aggregate_id=t1, completed_on=D(2017, 6, 13)),
        TodoAmended(aggregate_id=t2, title="If it's hard to remember, it...", description="Hmm...",
                    amended_fields=("title", "description")),
        TodoCompleted(aggregate_id=t2, completed_on=D(2017, 6, 15)),
        TodoAdded(aggregate_id=t3, title="Milk is for babies"),
        TodoAdded(aggregate_id=t4, title="Your clothes, give them to me, now!"),
        TodoAbandoned(aggregate_id=t4, abandoned_on=D(2017, 6, 1)),
    ])
    projector = CompletedTodos(tmp_path / "projections.db")
    _run(projector, sqlite_store)
    assert _query(tmp_path / "projections.db", completed_todos) == [
        {**ROW, "todo_id": t1, "title": "I don't do requests", "completed_on": "2017-06-13"},
        {**ROW, "todo_id": t2, "title": "If it's hard to remember, it...", "description": "Hmm...",
         "due_date": "2017-06-13", "completed_on": "2017-06-15"},
    ]
    staged = _query(tmp_path / "projections.db",
                    lambda db: db.execute("SELECT todo_id FROM query_completed_todos_incomplete_todos").fetchall())
    assert staged == [(t3,)]
    projector.reset()  # drops both tables and the position
    assert projector.last_processed_event_id == 0
    assert _query(tmp_path / "projections.db", completed_todos) == []


def test_projector_resumes_where_it_stopped(sqlite_store, tmp_path):
    path = tmp_path / "projections.db"
    t1, t2 = new_id(), new_id()
    sqlite_store.sink(TodoAdded(aggregate_id=t1, title="one"))
    _run(OutstandingTodos(path), sqlite_store)
    sqlite_store.sink(TodoAdded(aggregate_id=t2, title="two"))
    again = OutstandingTodos(path)
    assert again.last_processed_event_id == 1
    _run(again, sqlite_store)
    assert [r["todo_id"] for r in _query(path, outstanding_todos)] == [t1, t2]


# ---------------------------------------------------------------------------
# The notifier reactor

NOW = datetime.datetime(2017, 6, 12, 14, 0, tzinfo=datetime.timezone.utc)


def fixed_clock():
    return NOW


def _notifier(store, tmp_path):
    return TodoCompletedNotifier(store, mail_log=tmp_path / "mail.log", clock=fixed_clock)


def test_notifier_mails_the_stakeholder_and_emits_onto_the_todos_stream(sqlite_store, tmp_path):
    todo_id = new_id()
    added, = sqlite_store.sink(TodoAdded(aggregate_id=todo_id, title="You are terminated!",
                                         stakeholder_email="the-governator@example.com"))
    sqlite_store.sink(TodoAmended(aggregate_id=todo_id, stakeholder_email="the-governator@example.gov",
                                  amended_fields=("stakeholder_email",)))
    completed, = sqlite_store.sink(TodoCompleted(aggregate_id=todo_id, completed_on=D(2017, 6, 13)))
    reactor = _notifier(sqlite_store, tmp_path)
    reactor.subscribe_to(sqlite_store, stop=lambda: reactor.last_processed_event_id >= 3)

    assert (tmp_path / "mail.log").read_text() == (
        "2017-06-12T14:00:00+00:00\tTo: the-governator@example.gov\t"
        "Message: Your todo item You are terminated! has been completed!\n")
    events = sqlite_store.get_events_for_aggregate_id(todo_id)
    assert [e.type for e in events] == ["todo_added", "todo_amended", "todo_completed",
                                        "stakeholder_notified_of_todo_completion"]
    notified = events[-1]
    assert isinstance(notified, StakeholderNotifiedOfTodoCompletion)
    assert notified.notified_on == NOW
    assert notified.stakeholder_email == "the-governator@example.gov"
    assert notified.causation_id == completed.uuid
    assert notified.correlation_id == completed.uuid
    rows = sqlite_store.connection.execute("SELECT * FROM reactor_todo_completed_notifier").fetchall()
    assert rows == []
    # it does not subscribe to its own event; the todo still loads with it in its stream
    assert "stakeholder_notified_of_todo_completion" not in reactor.processes_event_types
    assert es.Repository(sqlite_store).load(Todo, todo_id).completed
    assert added.id == 1


def test_notifier_without_stakeholder_or_when_abandoned(sqlite_store, tmp_path):
    quiet, gone = new_id(), new_id()
    _sink_all(sqlite_store, [
        TodoAdded(aggregate_id=quiet, title="no one to tell"),
        TodoCompleted(aggregate_id=quiet, completed_on=D(2017, 6, 13)),
        TodoAdded(aggregate_id=gone, title="never mind", stakeholder_email="boss@example.com"),
        TodoAbandoned(aggregate_id=gone, abandoned_on=D(2017, 6, 13)),
    ])
    reactor = _notifier(sqlite_store, tmp_path)
    reactor.setup()
    with sqlite_store.transaction():  # what the runner's batch does
        for event in sqlite_store.get_next_from(1):
            reactor.process(event)
    assert not (tmp_path / "mail.log").exists()
    assert sqlite_store.latest_event_id() == 4  # nothing emitted
    assert sqlite_store.connection.execute("SELECT count(*) FROM reactor_todo_completed_notifier").fetchone() == (0,)


# ---------------------------------------------------------------------------
# The web layer without sockets


class _BrokenStore(es.MemoryEventStore):
    def get_events_for_aggregate_id(self, aggregate_id):
        raise RuntimeError("database on fire")


def test_web_layer_hides_internal_errors(capsys):
    app = TodoApp(_BrokenStore(), lambda: sqlite3.connect(":memory:"))
    response = app.dispatch("POST", "/todo/a", b'{"title": "x"}')
    assert (response.status, response.body) == (500, b"Internal Server Error")
    assert "database on fire" in capsys.readouterr().err  # logged on the server side only
    response = app.dispatch("GET", "/todos/outstanding")  # no table: also a plain 500
    assert (response.status, response.body) == (500, b"Internal Server Error")


def test_store_arguments():
    assert app_main.configure("todo.db").projections == "todo-projections.db"
    assert app_main.configure("sqlite:///data/todo.db").projections == "data/todo-projections.db"
    assert app_main.configure("data/events").mail_log == "data/events-mail.log"
    pg = app_main.configure("postgresql://u:secret@h/db")
    assert pg.postgres and pg.projections == pg.store_url
    assert "secret" not in pg.describe()
    with pytest.raises(SystemExit):
        app_main.configure("memory:")


# ---------------------------------------------------------------------------
# End to end: the app as a subprocess, over HTTP


class Client:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, payload=None, *, data=None, headers=None):
        if data is None and payload is not None:
            data = json.dumps(payload).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()

    def json(self, path):
        status, body = self.call("GET", path)
        assert status == 200, body
        return json.loads(body)


def _concurrently(n, request):
    """Run ``request(i)`` for i in range(n) at once, in threads; their answers in order."""
    answers = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait(10)
        answers[i] = request(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def _wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")


def _postgres_database():
    """A fresh database on the test server (dropped afterwards), or skip."""
    try:
        import psycopg

        import eventsourcery_pg  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Postgres mode needs eventsourcery_pg: {e}")
    if not hasattr(eventsourcery_pg, "Projector"):
        pytest.skip("eventsourcery_pg has no Projector yet")
    name = f"todo_e2e_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        pytest.skip(f"no Postgres server at {POSTGRES_URL}: {e}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    try:
        es.open_store(url).close()
    except NotImplementedError as e:
        admin.execute(f'DROP DATABASE "{name}"')
        admin.close()
        pytest.skip(f"the Postgres store is not built yet: {e}")

    def drop():
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return url, drop


@pytest.fixture(params=["sqlite", "postgres"])
def todo_store(request, tmp_path):
    """(store URL, mail log path) for one run of the app."""
    mail_log = tmp_path / "mail.log"
    if request.param == "sqlite":
        yield str(tmp_path / "todo.db"), mail_log
        return
    url, drop = _postgres_database()
    try:
        yield url, mail_log
    finally:
        drop()


@pytest.fixture
def running_app(todo_store, tmp_path):
    """Start ``python -m examples.todo`` on a free port; yield (client, process, store URL, mail log)."""
    store_url, mail_log = todo_store
    stderr = open(tmp_path / "app.stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.todo", "--port", "0", "--store", store_url,
         "--mail-log", str(mail_log)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []

    def read_stdout():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        def started():
            for line in lines:
                match = re.search(r"http://[\d.]+:(\d+)/", line)
                if match:
                    return True, int(match.group(1))
            if proc.poll() is not None:
                stderr.seek(0)
                pytest.fail(f"the app exited with {proc.returncode}: {lines} {stderr.read()}")
            return False, lines

        port = _wait_for(started, 30, "the app to print its URL")
        yield Client(f"http://127.0.0.1:{port}"), proc, store_url, mail_log, (lines, reader)
    finally:
        if proc.poll() is None:  # the test failed before stopping it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stderr.seek(0)
        print("app stdout:", "".join(lines), "\napp stderr:", stderr.read(), sep="\n")
        stderr.close()


def test_the_app_end_to_end(running_app):
    client, proc, store_url, mail_log, (out, reader) = running_app
    a, b, c, d = (new_id() for _ in range(4))
    call = client.call

    # add
    assert call("POST", f"/todo/{a}", {"title": "2000 squats", "description": "Leg day.",
                                       "due_date": "2017-07-13",
                                       "stakeholder_email": "the-governator@example.com"}) == (201, "")
    assert call("POST", f"/todo/{a}", {"title": "Get to the chopper!"}) == (
        422, f'Unprocessable Entity: Todo "{a}" already exists')
    assert call("POST", f"/todo/{b}", {"title": "Milk is for babies", "due_date": "2017-06-18"})[0] == 201
    assert call("POST", f"/todo/{c}", {"title": "Skinny legs", "due_date": "2017-06-22"})[0] == 201
    assert call("POST", f"/todo/{d}", {"title": "Your clothes, give them to me"})[0] == 201

    # amend: only what is present; null clears
    assert call("PUT", f"/todo/{a}", {"description": "It IS leg day!"}) == (200, "")
    assert call("PUT", f"/todo/{b}", {"due_date": None}) == (200, "")
    assert call("PUT", f"/todo/{c}", {"description": "Squats"}) == (200, "")
    assert call("PUT", f"/todo/{new_id()}", {})[1].endswith("does not exist")

    # complete one, abandon another
    assert call("POST", f"/todo/{a}/complete", {"completed_on": "2017-07-14"}) == (200, "")
    assert call("POST", f"/todo/{d}/abandon", {"abandoned_on": "2017-06-01"}) == (200, "")

    # rule violations: 422 with the original's messages
    assert call("POST", f"/todo/{a}/complete", {"completed_on": "2017-07-15"}) == (
        422, f'Unprocessable Entity: Todo "{a}" already complete')
    assert call("POST", f"/todo/{a}/abandon", {"abandoned_on": "2017-07-15"}) == (
        422, f'Unprocessable Entity: Todo "{a}" already complete')
    assert call("POST", f"/todo/{d}/complete", {"completed_on": "2017-07-15"}) == (
        422, f'Unprocessable Entity: Todo "{d}" already abandoned')
    assert call("PUT", f"/todo/{a}", {"title": "x"}) == (422, f'Unprocessable Entity: Todo "{a}" is complete')
    assert call("PUT", f"/todo/{d}", {"title": "x"}) == (422, f'Unprocessable Entity: Todo "{d}" is abandoned')
    ghost = new_id()
    assert call("POST", f"/todo/{ghost}/abandon", {"abandoned_on": "2017-07-13"}) == (
        422, f'Unprocessable Entity: Todo "{ghost}" does not exist')

    # bad requests: 400, plain text, never a traceback
    e = new_id()
    assert call("POST", f"/todo/{e}", {}) == (400, "Bad Request: title is blank")
    assert call("POST", f"/todo/{e}") == (400, "Bad Request: title is blank")  # empty body
    assert call("POST", f"/todo/{e}", {"title": "x", "due_date": "invalid"}) == (
        400, "Bad Request: due_date is invalid")
    assert call("PUT", f"/todo/{e}", {"due_date": "invalid"}) == (400, "Bad Request: due_date is invalid")
    assert call("POST", f"/todo/{b}/complete", {}) == (400, "Bad Request: completed_on is blank")
    assert call("POST", f"/todo/{b}/complete", {"completed_on": "invalid"}) == (
        400, "Bad Request: completed_on is invalid")
    assert call("POST", f"/todo/{b}/abandon", {}) == (400, "Bad Request: abandoned_on is blank")
    assert call("POST", f"/todo/{b}/abandon", {"abandoned_on": "invalid"}) == (
        400, "Bad Request: abandoned_on is invalid")
    status, body = call("POST", f"/todo/{e}", data=b'{"title": "x",')
    assert status == 400 and body.startswith("Bad Request: malformed JSON"), body
    assert call("POST", f"/todo/{e}", data=b'["title"]') == (400, "Bad Request: request body must be a JSON object")
    status, body = call("POST", f"/todo/{e}", data=b"[" * 200_000)
    assert status == 400 and body.startswith("Bad Request: malformed JSON"), body
    assert call("GET", "/nowhere")[0] == 404
    assert call("GET", f"/todo/{a}/nothing")[0] == 404
    assert call("GET", "/todos/everything")[0] == 404
    assert call("GET", f"/todo/{a}")[0] == 405
    status, body = call("POST", f"/todo/{e}", data=b" " * (1024 * 1024 + 1))
    assert (status, body) == (413, "Payload Too Large: request body exceeds 1048576 bytes")
    assert call("POST", f"/todo/{e}", data=b'{"title": "' + b"x" * (1024 * 1024 - 20) + b'"}')[0] == 201

    # concurrent requests: one add wins, the rest are told it exists; concurrent
    # amends are retried on ConcurrencyError, and a 409 is the only other answer
    racy = new_id()
    answers = _concurrently(8, lambda i: call("POST", f"/todo/{racy}", {"title": f"racer {i}"}))
    assert sorted(status for status, _ in answers) == [201] + [422] * 7, answers
    assert {body for status, body in answers if status == 422} == {
        f'Unprocessable Entity: Todo "{racy}" already exists'}
    answers = _concurrently(8, lambda i: call("PUT", f"/todo/{racy}", {"description": f"take {i}"}))
    assert {status for status, _ in answers} <= {200, 409}, answers
    assert call("POST", f"/todo/{racy}/abandon", {"abandoned_on": "2017-07-13"})[0] == 200
    with es.open_store(store_url) as store:
        amended = [ev for ev in store.get_events_for_aggregate_id(racy) if isinstance(ev, TodoAmended)]
    assert len(amended) == sum(status == 200 for status, _ in answers)

    # the projections catch up
    expected = {
        "outstanding": [
            {"todo_id": b, "title": "Milk is for babies", "description": None, "due_date": None,
             "stakeholder_email": None},
            {"todo_id": c, "title": "Skinny legs", "description": "Squats", "due_date": "2017-06-22",
             "stakeholder_email": None},
        ],
        "scheduled": [
            {"todo_id": c, "title": "Skinny legs", "description": "Squats", "due_date": "2017-06-22",
             "stakeholder_email": None},
        ],
        "completed": [
            {"todo_id": a, "title": "2000 squats", "description": "It IS leg day!", "due_date": "2017-07-13",
             "stakeholder_email": "the-governator@example.com", "completed_on": "2017-07-14"},
        ],
    }

    def projections_caught_up():
        seen = {name: client.json(f"/todos/{name}") for name in expected}
        seen["outstanding"] = [t for t in seen["outstanding"] if t["todo_id"] != e]  # the 1 MiB todo
        return seen == expected, seen

    _wait_for(projections_caught_up, 20, "the projections")

    # the notifier: one mail, one StakeholderNotifiedOfTodoCompletion caused by the TodoCompleted
    def notified():
        with es.open_store(store_url) as store:
            events = store.get_events_for_aggregate_id(a)
            every = list(store.each_by_range(1, store.latest_event_id()))
        return any(isinstance(ev, StakeholderNotifiedOfTodoCompletion) for ev in events), (events, every)

    events, every = _wait_for(notified, 20, "the notifier's event")
    completed = [ev for ev in events if isinstance(ev, TodoCompleted)]
    notes = [ev for ev in every if ev.type == "stakeholder_notified_of_todo_completion"]
    assert len(completed) == 1 and len(notes) == 1
    assert notes[0].aggregate_id == a
    assert notes[0].causation_id == completed[0].uuid
    assert notes[0].correlation_id == completed[0].uuid
    assert notes[0].stakeholder_email == "the-governator@example.com"
    assert [ev.type for ev in events] == ["todo_added", "todo_amended", "todo_completed",
                                          "stakeholder_notified_of_todo_completion"]
    mails = mail_log.read_text().splitlines()
    assert len(mails) == 1
    assert mails[0].endswith("\tTo: the-governator@example.com\t"
                             "Message: Your todo item 2000 squats has been completed!")
    # the todo still loads with the reactor's event in its stream
    assert call("POST", f"/todo/{a}/complete", {"completed_on": "2017-07-15"})[0] == 422

    # Ctrl-C: everything stops, exit status 0
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=45) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("the app did not stop within 45 s of SIGINT")
    reader.join(5)
    assert "Stopped." in "".join(out)


def test_resetting_the_notifier_re_sends_no_mail_and_emits_nothing_again(sqlite_store, tmp_path):
    todo_id = new_id()
    sqlite_store.sink(TodoAdded(aggregate_id=todo_id, title="Once", stakeholder_email="a@example.com"))
    sqlite_store.sink(TodoCompleted(aggregate_id=todo_id, completed_on=D(2017, 6, 13)))
    reactor = _notifier(sqlite_store, tmp_path)
    reactor.subscribe_to(sqlite_store, stop=lambda: reactor.last_processed_event_id >= 3)
    mail = (tmp_path / "mail.log").read_text()
    latest = sqlite_store.latest_event_id()
    reactor.reset()
    again = _notifier(sqlite_store, tmp_path)
    again.subscribe_to(sqlite_store, stop=lambda: again.last_processed_event_id >= latest)
    assert (tmp_path / "mail.log").read_text() == mail and mail.count("\n") == 1
    assert sqlite_store.latest_event_id() == latest
