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
import dataclasses
import datetime
import http.client
import json
import os
import pathlib
import re
import shlex
import signal
import socket
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
from examples.todo.web import (
    BEHIND_HEADER,
    EVENT_ID_HEADER,
    TodoApp,
    encode_rows,
    make_server,
    wanted_event_id,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
D = datetime.date
POSTGRES_URL = os.environ.get("EVENTSOURCERY_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")


def new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------
# Commands: validation, with the original app's messages


@pytest.mark.parametrize("command, params, message", [
    (AddTodo, {"title": "x"}, "todo_id is blank"),
    (AddTodo, {"todo_id": "  ", "title": "x"}, "todo_id is blank"),
    (AddTodo, {"todo_id": "a"}, "title is blank"),
    (AddTodo, {"todo_id": "a\x00b", "title": "x"}, "todo_id is invalid"),
    (AddTodo, {"todo_id": "a\nb", "title": "x"}, "todo_id is invalid"),
    (AddTodo, {"todo_id": "\x7f", "title": "x"}, "todo_id is invalid"),
    (AddTodo, {"todo_id": "\ud800", "title": "x"}, "todo_id is invalid"),
    (AddTodo, {"todo_id": "x" * 201, "title": "x"}, "todo_id is invalid"),
    (AddTodo, {"todo_id": 7, "title": "x"}, "todo_id is invalid"),
    (AddTodo, {"todo_id": "a", "title": None}, "title is blank"),
    (AddTodo, {"todo_id": "a", "title": "   "}, "title is blank"),
    (AddTodo, {"todo_id": "a", "title": 7}, "title is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "due_date": "invalid"}, "due_date is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "due_date": "2017-02-30"}, "due_date is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "due_date": 20170713}, "due_date is invalid"),
    (AddTodo, {"todo_id": "a", "title": "x", "stakeholder_email": ["a@b"]},
     "stakeholder_email is invalid"),
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
                         "due_date": "2017-07-13", "stakeholder_email": "g@example.com",
                         "extra": 1})
    assert add == AddTodo(todo_id="a", title="2000 squats", description="Leg day.",
                          due_date=D(2017, 7, 13), stakeholder_email="g@example.com")
    assert AmendTodo.build({"todo_id": "a", "due_date": None}).changes == {"due_date": None}
    assert (AmendTodo.build({"todo_id": "a", "description": "x", "completed_on": "2017-01-01"})
            .changes == {"description": "x"})
    assert (CompleteTodo.build({"todo_id": "a", "completed_on": "2017-07-13"}).completed_on
            == D(2017, 7, 13))
    assert (AbandonTodo.build({"todo_id": "a", "abandoned_on": "2017-07-13"}).abandoned_on
            == D(2017, 7, 13))


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
    ([ADDED, COMPLETED], lambda t: t.complete(completed_on=D(2017, 7, 14)),
     'Todo "t1" already complete'), ([ADDED, ABANDONED],
                                     lambda t: t.complete(completed_on=D(2017, 7, 14)),
                                     'Todo "t1" already abandoned'),
    ([], lambda t: t.abandon(abandoned_on=D(2017, 7, 14)), 'Todo "t1" does not exist'),
    ([ADDED, COMPLETED], lambda t: t.abandon(abandoned_on=D(2017, 7, 14)),
     'Todo "t1" already complete'), ([ADDED, ABANDONED],
                                     lambda t: t.abandon(abandoned_on=D(2017, 7, 14)),
                                     'Todo "t1" already abandoned'),
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
    todo = _todo(TodoAdded(aggregate_id="t1", title="x", due_date=D(2017, 7, 13)))
    todo.amend(due_date=None)
    todo.complete(completed_on=D(2017, 7, 14))
    assert [type(e) for e in todo.changes] == [TodoAmended, TodoCompleted]
    assert todo.changes[0].changes == {"due_date": None}
    with pytest.raises(TypeError):
        todo.amend(completed_on=D(2017, 1, 1))


def test_amend_that_changes_nothing_records_nothing():
    todo = _todo(TodoAdded(aggregate_id="t1", title="x", description="d", due_date=D(2017, 7, 13)))
    todo.amend(title="x", due_date=D(2017, 7, 13), stakeholder_email=None)
    todo.amend()
    assert todo.changes == []
    todo.amend(title="x", description="e")  # one field changes: recorded as sent
    assert [e.changes for e in todo.changes] == [{"title": "x", "description": "e"}]
    todo.amend(description="e")  # the state follows the amendments
    todo.amend(due_date=None)
    todo.amend(due_date=None)
    assert [e.changes for e in todo.changes] == [{"title": "x", "description": "e"},
                                                 {"due_date": None}]
    # the rules still come first: a complete todo is a 422 even when nothing would change
    done = _todo(ADDED, COMPLETED)
    with pytest.raises(UnprocessableEntity, match="is complete"):
        done.amend(title="x")


def test_amend_that_changes_nothing_stores_nothing(tmp_path):
    with es.SQLiteEventStore(tmp_path / "events.db") as store:
        handler = CommandHandler(es.Repository(store))
        handler.handle(AddTodo.build({"todo_id": "a", "title": "x", "due_date": "2017-07-13"}))
        handler.handle(AmendTodo.build({"todo_id": "a", "due_date": None}))
        # loaded from the store: the values as stored, dates as dates
        assert handler.handle(AmendTodo.build({"todo_id": "a", "title": "x",
                                               "due_date": None})) == []
        assert handler.handle(AmendTodo.build({"todo_id": "a", "description": None})) == []
        assert ([e.type for e in store.get_events_for_aggregate_id("a")]
                == ["todo_added", "todo_amended"])
        assert handler.handle(AmendTodo.build({"todo_id": "a",
                                               "due_date": "2017-07-14"}))[0].version == 3


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
    assert ([e.type for e in store.get_events_for_aggregate_id("a")]
            == ["todo_added", "todo_completed"])


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
                aggregate_id=aggregate.id,
                notified_on=datetime.datetime.now(datetime.timezone.utc)))
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
        CommandHandler(repo, attempts=3, backoff=0).handle(
            AmendTodo.build({"todo_id": "a", "title": "y"}))
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
    projector.subscribe_to(
        store, stop=lambda: projector.last_processed_event_id >= store.latest_event_id())


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
        TodoAdded(aggregate_id=t2,
                  title="If it's hard to remember, it will be difficult to forget"),
        TodoCompleted(aggregate_id=t1, completed_on=D(2017, 6, 13)),
        TodoAmended(aggregate_id=t2, title="If it's hard to remember, it...", description="Hmm...",
                    due_date=D(2017, 6, 13), amended_fields=("title", "description", "due_date")),
        TodoAdded(aggregate_id=t3, title="Milk is for babies"),
        TodoAdded(aggregate_id=t4, title="Your clothes, give them to me, now!",
                  due_date=D(2017, 6, 13)),
        TodoAbandoned(aggregate_id=t4, abandoned_on=D(2017, 6, 1)),
        TodoAdded(aggregate_id=t5, title="Your clothes, give them to me, now!",
                  due_date=D(2017, 6, 18)),
        TodoAmended(aggregate_id=t5, due_date=None, amended_fields=("due_date",)),  # cleared
        TodoAdded(aggregate_id=t6, title="Tell him about those skinny legs",
                  due_date=D(2017, 6, 22)),
        # date kept
        TodoAmended(aggregate_id=t6, description="Squats", amended_fields=("description",)),
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
                   lambda db: db.execute(
                       "SELECT count(*) FROM query_scheduled_todos").fetchone()[0])
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
                    lambda db: db.execute("SELECT todo_id FROM "
                                          "query_completed_todos_incomplete_todos").fetchall())
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
    sqlite_store.sink(TodoAmended(aggregate_id=todo_id,
                                  stakeholder_email="the-governator@example.gov",
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
    rows = sqlite_store.connection.execute(
        "SELECT * FROM reactor_todo_completed_notifier").fetchall()
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
    assert (sqlite_store.connection.execute("SELECT count(*) FROM reactor_todo_completed_notifier")
            .fetchone() == (0,))


# ---------------------------------------------------------------------------
# The web layer without sockets


class _BrokenStore(es.MemoryEventStore):
    def get_events_for_aggregate_id(self, aggregate_id):
        raise RuntimeError("database on fire")


def test_web_layer_hides_internal_errors(capsys):
    app = TodoApp(_BrokenStore(), lambda: sqlite3.connect(":memory:"))
    response = app.dispatch("POST", "/todo/a", b'{"title": "x"}')
    assert (response.status, response.body) == (500, b"Internal Server Error\n")
    assert "database on fire" in capsys.readouterr().err  # logged on the server side only
    response = app.dispatch("GET", "/todos/outstanding")  # no table: also a plain 500
    assert (response.status, response.body) == (500, b"Internal Server Error\n")


def test_web_layer_amend_with_nothing_to_amend():
    store = es.MemoryEventStore()
    app = TodoApp(store, lambda: sqlite3.connect(":memory:"))
    assert app.dispatch("POST", "/todo/a",
                        b'{"title": "x", "due_date": "2017-07-13"}').status == 201
    for body in (b"{}", b"", b'{"completed_on": "2017-07-14"}'):
        response = app.dispatch("PUT", "/todo/a", body)
        assert (response.status, response.body) == (400, b"Bad Request: nothing to amend\n"), body
    response = app.dispatch("PUT", "/todo/a", b'{"title": "x", "due_date": "2017-07-13"}')
    assert (response.status, response.body) == (200, b"")  # as for an amend that changes something
    assert [e.type for e in store.get_events_for_aggregate_id("a")] == ["todo_added"]
    assert app.dispatch("PUT", "/todo/a", b'{"title": "y"}').status == 200
    assert ([e.type for e in store.get_events_for_aggregate_id("a")]
            == ["todo_added", "todo_amended"])


@pytest.mark.parametrize("history, answer", [
    ((), "does not exist"),
    ((TodoAdded(title="x"), TodoCompleted(completed_on=datetime.date(2017, 7, 14))), "is complete"),
    ((TodoAdded(title="x"), TodoAbandoned(abandoned_on=datetime.date(2017, 7, 14))),
     "is abandoned"),
])
@pytest.mark.parametrize("body", [None, b"", b"{}", b'{"completed_on": "2017-07-14"}'])
def test_amend_without_fields_of_a_todo_that_is_not_open_is_a_422(history, answer, body):
    """As the original app's request specs (amend_todo_spec.rb): ``PUT /todo/<id>`` with no fields
    is a 422 saying why the todo cannot be amended; "nothing to amend" is only for an open todo."""
    store = es.MemoryEventStore()
    todo_id = new_id()
    for event in history:
        store.sink(dataclasses.replace(event, aggregate_id=todo_id))
    app = TodoApp(store, lambda: sqlite3.connect(":memory:"))
    response = app.dispatch("PUT", f"/todo/{todo_id}", body)
    assert (response.status, response.body.decode()) == (
        422, f'Unprocessable Entity: Todo "{todo_id}" {answer}\n')
    assert store.aggregate_version(todo_id) == len(history)
    # validation still comes first: a bad date is a 400 whatever the todo
    response = app.dispatch("PUT", f"/todo/{todo_id}", b'{"due_date": "invalid"}')
    assert (response.status, response.body) == (400, b"Bad Request: due_date is invalid\n")


def test_every_error_answer_ends_with_a_newline(sqlite_store):
    app = TodoApp(sqlite_store, lambda: sqlite3.connect(":memory:"))
    answers = [app.dispatch(method, target, body) for method, target, body, _ in ODD_REQUESTS]
    answers += [app.dispatch("PATCH", "/todo/a"), app.dispatch("POST", "/todo/a", b"{}"),
                app.dispatch("POST", "/todo/a/complete", b'{"completed_on": "2017-07-14"}'),
                app.dispatch("DELETE", "/todo/nobody"), app.dispatch("GET", "/todos")]
    assert {a.status for a in answers} == {400, 404, 405, 422}
    for answer in answers:
        assert answer.body.endswith(b"\n") and answer.body.count(b"\n") == 1, answer


# Odd input that reaches TodoApp.dispatch: (method, target, body) -> a 400 (or 404), never a 500
ODD_REQUESTS = [
    # a lone surrogate
    ("POST", "/todo/%ED%A0%80", b'{"title": "x"}', "Bad Request: the path is not UTF-8 text"),
    ("POST", "/todo/%FF", b'{"title": "x"}', "Bad Request: the path is not UTF-8 text"),
    # cut short
    ("PUT", "/todo/a%C3", b'{"title": "x"}', "Bad Request: the path is not UTF-8 text"),
    ("POST", "/todo/%zz", b'{"title": "x"}', "Bad Request: malformed percent-encoding in the path"),
    ("POST", "/todo/a%", b'{"title": "x"}', "Bad Request: malformed percent-encoding in the path"),
    ("POST", "/todo/a%2/complete", b'{"completed_on": "2017-07-13"}',
     "Bad Request: malformed percent-encoding in the path"),
    ("POST", "/todo/a%00b", b'{"title": "x"}', "Bad Request: todo_id is invalid"),
    ("POST", "/todo/a%0Ab", b'{"title": "x"}', "Bad Request: todo_id is invalid"),
    ("POST", "/todo/%1B%5B31m", b'{"title": "x"}', "Bad Request: todo_id is invalid"),
    ("POST", "/todo/%7F/abandon", b'{"abandoned_on": "2017-07-13"}',
     "Bad Request: todo_id is invalid"),
    ("POST", "/todo/" + "x" * 201, b'{"title": "x"}', "Bad Request: todo_id is invalid"),
    ("PUT", "/todo/" + "%E2%82%AC" * 1000, b'{"title": "x"}', "Bad Request: todo_id is invalid"),
    ("POST", "/todo/" + "x" * 10_000 + "/complete", b'{"completed_on": "2017-07-13"}',
     "Bad Request: todo_id is invalid"),
    ("POST", "/todo/ok", b'{"title": "\xed\xa0\x80"}',
     "Bad Request: request body is not UTF-8 text"),
    ("POST", "/todo/ok", b'{"title": "\xff"}', "Bad Request: request body is not UTF-8 text"),
    ("POST", "/todo/ok", '{"title": "x"}'.encode("utf-16"),
     "Bad Request: request body is not UTF-8 text"),
    ("POST", "/todo/ok", b'{"title": "\\ud800"}',
     "Bad Request: malformed JSON: unpaired surrogate in a string"),
    ("POST", "/todo/ok", b'{"\\udfff": 1, "title": "x"}',
     "Bad Request: malformed JSON: unpaired surrogate in a string"),
    ("GET", "/todos/%ED%A0%80", None, "Not Found: no route for GET /todos/%ED%A0%80"),
]


@pytest.mark.parametrize("method, target, body, answer", ODD_REQUESTS, ids=lambda v: ascii(v)[:40])
def test_web_layer_answers_odd_input_with_400(method, target, body, answer, sqlite_store):
    app = TodoApp(sqlite_store, lambda: sqlite3.connect(":memory:"))
    response = app.dispatch(method, target, body)
    assert (response.status, response.body.decode()) == (
        int(answer.startswith("Not Found")) * 4 + 400, answer + "\n")
    assert sqlite_store.latest_event_id() == 0


def test_web_layer_odd_text_from_python_callers(sqlite_store):
    """dispatch() with a str that is no HTTP path at all (a lone surrogate) still answers plain
    text."""
    app = TodoApp(sqlite_store, lambda: sqlite3.connect(":memory:"))
    response = app.dispatch("POST", "/todo/\ud800", b'{"title": "x"}')
    assert (response.status, response.body) == (400, b"Bad Request: todo_id is invalid\n")
    response = app.dispatch("GET", "/nowhere/\ud800")
    assert (response.status == 404
            and response.body.startswith(b"Not Found: no route for GET /nowhere/"))
    assert app.dispatch("POST", "/todo/%E2%82%AC%20ok", b'{"title": "\xe2\x82\xac"}').status == 201
    assert sqlite_store.get_events_for_aggregate_id("\u20ac ok")[0].title == "\u20ac"


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_port_out_of_range_is_a_usage_error(port, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        app_main.main(["--port", port, "--store", str(tmp_path / "todo.db")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"^python -m examples.todo: error: argument --port: .*0.*65535", err,
                     re.M), err
    assert "Traceback" not in err
    assert not (tmp_path / "todo.db").exists()  # it stopped before setting anything up


@pytest.mark.parametrize("script", ["examples/todo", "examples/todo/__main__.py"])
def test_running_the_directory_says_how_to_run_it(script):
    p = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == ""
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert "python3 -m examples.todo" in p.stderr and "repository root" in p.stderr, p.stderr


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


def _error_text(body: str) -> str:
    """An error answer's text without the newline that must end it (one line)."""
    assert body.endswith("\n") and body.count("\n") == 1, body
    return body[:-1]


class Client:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, payload=None, *, data=None, headers=None):
        if data is None and payload is not None:
            data = json.dumps(payload).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, _error_text(e.read().decode())

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
    """Start ``python -m examples.todo`` on a free port; yield (client, process, store URL, mail
    log)."""
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
                                       "stakeholder_email": "the-governator@example.com"}) == (
                                           201, "")
    assert call("POST", f"/todo/{a}", {"title": "Get to the chopper!"}) == (
        422, f'Unprocessable Entity: Todo "{a}" already exists')
    assert call("POST", f"/todo/{b}", {"title": "Milk is for babies",
                                       "due_date": "2017-06-18"})[0] == 201
    assert call("POST", f"/todo/{c}", {"title": "Skinny legs", "due_date": "2017-06-22"})[0] == 201
    assert call("POST", f"/todo/{d}", {"title": "Your clothes, give them to me"})[0] == 201

    # amend: only what is present; null clears
    assert call("PUT", f"/todo/{a}", {"description": "It IS leg day!"}) == (200, "")
    assert call("PUT", f"/todo/{b}", {"due_date": None}) == (200, "")
    assert call("PUT", f"/todo/{c}", {"description": "Squats"}) == (200, "")
    assert call("PUT", f"/todo/{new_id()}", {"title": "x"})[1].endswith("does not exist")
    assert call("PUT", f"/todo/{a}", {}) == (400, "Bad Request: nothing to amend")
    assert call("PUT", f"/todo/{a}", {"description": "It IS leg day!",
                                      "title": "2000 squats"}) == (200, "")

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
    assert (call("PUT", f"/todo/{a}", {"title": "x"})
            == (422, f'Unprocessable Entity: Todo "{a}" is complete'))
    assert (call("PUT", f"/todo/{d}", {"title": "x"})
            == (422, f'Unprocessable Entity: Todo "{d}" is abandoned'))
    ghost = new_id()
    assert call("POST", f"/todo/{ghost}/abandon", {"abandoned_on": "2017-07-13"}) == (
        422, f'Unprocessable Entity: Todo "{ghost}" does not exist')
    # a PUT without fields, as the original app's request specs send it: the rules first
    assert call("PUT", f"/todo/{ghost}") == (
        422, f'Unprocessable Entity: Todo "{ghost}" does not exist')
    assert call("PUT", f"/todo/{a}") == (422, f'Unprocessable Entity: Todo "{a}" is complete')
    assert call("PUT", f"/todo/{d}", {}) == (422, f'Unprocessable Entity: Todo "{d}" is abandoned')

    # bad requests: 400, plain text, never a traceback
    e = new_id()
    assert call("POST", f"/todo/{e}", {}) == (400, "Bad Request: title is blank")
    assert call("POST", f"/todo/{e}") == (400, "Bad Request: title is blank")  # empty body
    assert call("POST", f"/todo/{e}", {"title": "x", "due_date": "invalid"}) == (
        400, "Bad Request: due_date is invalid")
    assert (call("PUT", f"/todo/{e}", {"due_date": "invalid"})
            == (400, "Bad Request: due_date is invalid"))
    assert call("POST", f"/todo/{b}/complete", {}) == (400, "Bad Request: completed_on is blank")
    assert call("POST", f"/todo/{b}/complete", {"completed_on": "invalid"}) == (
        400, "Bad Request: completed_on is invalid")
    assert call("POST", f"/todo/{b}/abandon", {}) == (400, "Bad Request: abandoned_on is blank")
    assert call("POST", f"/todo/{b}/abandon", {"abandoned_on": "invalid"}) == (
        400, "Bad Request: abandoned_on is invalid")
    status, body = call("POST", f"/todo/{e}", data=b'{"title": "x",')
    assert status == 400 and body.startswith("Bad Request: malformed JSON"), body
    assert (call("POST", f"/todo/{e}", data=b'["title"]')
            == (400, "Bad Request: request body must be a JSON object"))
    status, body = call("POST", f"/todo/{e}", data=b"[" * 200_000)
    assert status == 400 and body.startswith("Bad Request: malformed JSON"), body
    assert call("GET", "/nowhere")[0] == 404
    assert call("GET", f"/todo/{a}/nothing")[0] == 404
    assert call("GET", "/todos/everything")[0] == 404
    assert call("GET", f"/todo/{a}")[0] == 405
    status, body = call("POST", f"/todo/{e}", data=b" " * (1024 * 1024 + 1))
    assert (status, body) == (413, "Payload Too Large: request body exceeds 1048576 bytes")
    assert call("POST", f"/todo/{e}",
                data=b'{"title": "' + b"x" * (1024 * 1024 - 20) + b'"}')[0] == 201

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
        amended = [ev for ev in store.get_events_for_aggregate_id(racy)
                   if isinstance(ev, TodoAmended)]
    assert len(amended) == sum(status == 200 for status, _ in answers)

    # the projections catch up
    expected = {
        "outstanding": [
            {"todo_id": b, "title": "Milk is for babies", "description": None, "due_date": None,
             "stakeholder_email": None},
            {"todo_id": c, "title": "Skinny legs", "description": "Squats",
             "due_date": "2017-06-22", "stakeholder_email": None},],
        "scheduled": [{"todo_id": c, "title": "Skinny legs", "description": "Squats",
                       "due_date": "2017-06-22", "stakeholder_email": None},],
        "completed": [{"todo_id": a, "title": "2000 squats", "description": "It IS leg day!",
                       "due_date": "2017-07-13", "stakeholder_email": "the-governator@example.com",
                       "completed_on": "2017-07-14"},],}

    def projections_caught_up():
        seen = {name: client.json(f"/todos/{name}") for name in expected}
        # the 1 MiB todo
        seen["outstanding"] = [t for t in seen["outstanding"] if t["todo_id"] != e]
        return seen == expected, seen

    _wait_for(projections_caught_up, 20, "the projections")

    # the notifier: one mail, one StakeholderNotifiedOfTodoCompletion caused by the TodoCompleted
    def notified():
        with es.open_store(store_url) as store:
            events = store.get_events_for_aggregate_id(a)
            every = list(store.each_by_range(1, store.latest_event_id()))
        return any(isinstance(ev, StakeholderNotifiedOfTodoCompletion)
                   for ev in events), (events, every)

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


def _raw(port: int, request: bytes, *, timeout: float = 10.0) -> tuple[int, str]:
    """Send ``request`` as is and read one response, leaving our side of the connection open.

    The server must answer without waiting for more of the body: a socket
    timeout here means it went on reading.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        with response:
            body = response.read().decode()
            # the app's errors, not http.server's own
            ours = response.getheader("Content-Type", "").startswith("text/plain")
            return response.status, _error_text(body) if response.status >= 400 and ours else body


def _post(path: bytes, headers: bytes, body: bytes = b"") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


P = b'{"title": "x"}'  # 14 (0xE) bytes: a body that adds a todo, should the framing be taken
CHUNKED = b"Transfer-Encoding: chunked\r\n"
MALFORMED = "Bad Request: malformed chunked body"
BAD_LENGTH = "Bad Request: invalid Content-Length header"
TOO_LARGE = "Payload Too Large: request body exceeds 1048576 bytes"
BAD_FRAMING = [
    # chunk sizes: negative, signed, prefixed, with underscores, not hex, empty, too long a line,
    # too large
    # rfile.read(-1) would wait for the end of the stream
    (CHUNKED, b"-1\r\n" + b"x" * 100, MALFORMED),
    (CHUNKED, b"+E\r\n" + P + b"\r\n0\r\n\r\n", MALFORMED),
    (CHUNKED, b"0xE\r\n" + P + b"\r\n0\r\n\r\n", MALFORMED),
    (CHUNKED, b"0_E\r\n" + P + b"\r\n0\r\n\r\n", MALFORMED),
    (CHUNKED, b"zz\r\n", MALFORMED),
    (CHUNKED, b"\r\n", MALFORMED),
    (CHUNKED, b"E" + b" " * 2000 + b"\r\n" + P + b"\r\n0\r\n\r\n", MALFORMED),
    (CHUNKED, b"E\r\n" + P + b"0\r\n\r\n", MALFORMED),  # no CRLF after the chunk's data
    (CHUNKED, b"E\r\n" + P + b"\r\n0\r\n" + b"X-Trailer: 1\r\n" * 100 + b"\r\n", MALFORMED),
    (CHUNKED, b"F" * 40 + b"\r\n", TOO_LARGE),
    (CHUNKED, b"FFFFFFFFFFFFFFFF\r\nxx", TOO_LARGE),
    (CHUNKED, b"100001\r\n", TOO_LARGE),  # 1 MiB + 1 in one chunk
    (CHUNKED, b"80000\r\n" + b" " * 0x80000 + b"\r\n80001\r\n", TOO_LARGE),  # in two
    # codings other than chunked alone
    (b"Transfer-Encoding: gzip\r\n", P,
     "Bad Request: unsupported Transfer-Encoding (only chunked)"),
    (b"Transfer-Encoding: chunked, gzip\r\n", b"",
     "Bad Request: unsupported Transfer-Encoding (only chunked)"),
    (b"Transfer-Encoding: xchunked\r\n", b"E\r\n" + P + b"\r\n0\r\n\r\n",
     "Bad Request: unsupported Transfer-Encoding (only chunked)"),
    # Content-Length: negative, signed, not a number, with underscores, two values, too large
    (b"Content-Length: -1\r\n", P, BAD_LENGTH),
    (b"Content-Length: +14\r\n", P, BAD_LENGTH),
    (b"Content-Length: abc\r\n", P, BAD_LENGTH),
    (b"Content-Length: 1_4\r\n", P, BAD_LENGTH),
    (b"Content-Length: \xd9\xa3\r\n", P, BAD_LENGTH),  # not ASCII
    (b"Content-Length: 14\r\nContent-Length: 3\r\n", P, BAD_LENGTH),
    (b"Content-Length: 14, 3\r\n", P, BAD_LENGTH),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", P, TOO_LARGE),
    (b"Content-Length: 99999999999\r\n", P, TOO_LARGE),  # beyond what is drained: not read at all
]


@pytest.mark.parametrize("headers, body, answer", BAD_FRAMING, ids=lambda v: ascii(v)[:30])
def test_bad_request_framing_is_answered_without_reading_on(headers, body, answer, framing_app):
    status = 413 if answer == TOO_LARGE else 400
    assert _raw(framing_app, _post(b"/todo/framing", headers, body)) == (status, answer)


def test_good_request_framing_still_works(framing_app):
    """What a client may send: chunks with extensions and trailers, "5, 5", leading zeros, an empty
    chunked body."""
    assert _raw(framing_app, _post(b"/todo/framing-1", CHUNKED,
                                   b"7;ext=1\r\n" + P[:7] + b"\r\n07\r\n" + P[7:]
                                       + b"\r\n0\r\nX-T: 1\r\n\r\n")
                ) == (201, "")
    assert _raw(framing_app, _post(b"/todo/framing-2", b"Content-Length: 014, 14\r\n",
                                   P)) == (201, "")
    assert (_raw(framing_app, _post(b"/todo/framing-3", CHUNKED, b"0\r\n\r\n"))
            == (400, "Bad Request: title is blank"))


@pytest.fixture(scope="module")
def framing_app(tmp_path_factory):
    """The app's HTTP server on a SQLite store, in a thread of this process (no processors)."""
    path = tmp_path_factory.mktemp("framing") / "todo.db"
    store = es.SQLiteEventStore(path)
    server = make_server(TodoApp(store, lambda: sqlite3.connect(":memory:")), port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        # only test_good_request_framing_still_works wrote
        assert {e.aggregate_id for e in store.each_by_range(1, store.latest_event_id())} <= {
            "framing-1", "framing-2"}
        store.close()


def test_odd_input_over_http(running_app, tmp_path):
    """Odd ids, paths and bodies over real HTTP, on the app's own store: 400 or 404, and no
    traceback."""
    client, proc, store_url, mail_log, _ = running_app
    port = int(client.base.rsplit(":", 1)[1])
    for method, target, body, answer in ODD_REQUESTS:
        status = 404 if answer.startswith("Not Found") else 400
        assert client.call(method, target, data=body) == (status, answer), target[:40]
    # bytes no client should send: raw non-ASCII in the request line, a NUL in a JSON string
    assert _raw(port, _post(b"/todo/\xff", b"Content-Length: 2\r\n", b"{}")) == (
        400, "Bad Request: the path is not UTF-8 text")
    assert _raw(port, _post("/todo/\u20ac".encode(), b"Content-Length: 2\r\n", b"{}")) == (
        400, "Bad Request: title is blank")
    assert client.call("POST", "/todo/nul", data=b'{"title": "a\\u0000b"}')[0] == 201
    # chunked and Content-Length framing the app cannot read: 400 at once, on this store too
    assert _raw(port, _post(b"/todo/c", b"Transfer-Encoding: chunked\r\n", b"-1\r\n{}"))[0] == 400
    assert _raw(port, _post(b"/todo/c", b"Content-Length: -1\r\n", b"{}"))[0] == 400
    # a request line longer than http.server reads: its own 414
    assert _raw(port, b"GET /todo/" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n")[0] == 414
    # the server still works, and it logged no traceback (a 500 would have)
    assert client.call("POST", "/todo/after-the-odd-ones", {"title": "x"}) == (201, "")
    with es.open_store(store_url) as store:
        ids = {e.aggregate_id for e in store.each_by_range(1, store.latest_event_id())}
    assert ids == {"nul", "after-the-odd-ones"}, ids
    stderr = (tmp_path / "app.stderr").read_text()
    assert "Traceback" not in stderr and '" 500 ' not in stderr, stderr


# ---------------------------------------------------------------------------
# The READMEs' commands, replayed against the app: the quick start's curl lines
# (root README), then the walkthrough (examples/todo/README.md), on one store


def _readme_commands(text: str, fence: str, *, prompt: str = "$ "):
    """(argv, expected output lines) for each command in the ```<fence> blocks of ``text``."""
    commands = []
    for block in re.findall(rf"```{fence}\n(.*?)```", text, flags=re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if fence == "console" and not line.startswith(prompt):
                i += 1
                continue
            source = line[len(prompt):] if fence == "console" else line
            while True:  # continuation lines: after a trailing backslash, or in a quote still open
                try:
                    argv = shlex.split(source.replace("\\\n", " "))
                    break
                except ValueError:
                    i += 1
                    source += "\n" + lines[i]
            i += 1
            output = []
            while fence == "console" and i < len(lines) and not lines[i].startswith(prompt):
                output.append(lines[i])
                i += 1
            if argv:
                commands.append((argv, output))
    return commands


_TIMESTAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?"


def _line_pattern(expected: str) -> re.Pattern:
    """``expected`` as a regex: any timestamp, any event id first, ``...`` for anything, any
    spacing."""
    parts = re.split(rf"({_TIMESTAMP}|\.\.\.|\s+)", expected.strip())
    pattern = "".join(
        ".*" if part == "..." else r"\S+" if re.fullmatch(_TIMESTAMP, part) else r"\s+"
            if part.isspace()
        else re.escape(part) for part in parts if part)
    pattern = re.sub(r"^\d+(?=\\s\+)", r"\\d+", pattern)  # the event id column
    return re.compile(pattern)


def _matches(expected: list[str], actual: str, others: set[str]) -> bool:
    # a query: what the README shows, plus other todos only
    if expected and expected[0].startswith("["):
        want, got = json.loads("\n".join(expected)), json.loads(actual)
        return [t for t in got if t["todo_id"] not in others] == want
    got = actual.splitlines()
    return len(got) == len(expected) and all(
        _line_pattern(e).fullmatch(g.strip()) for e, g in zip(expected, got, strict=True))


_ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=\$\((.*)")  # NAME=$(command ...)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")


def _write_out(format_: str, status: int, headers) -> str:
    """curl's ``-w`` text (``%{http_code}``, ``%header{name}``, ``\\n``: what the READMEs use)."""
    def field(m: re.Match) -> str:
        if m[1] == "http_code":
            return str(status)
        if m[2] is not None:
            return headers.get(m[2], "")
        pytest.fail(f"the README uses a curl -w variable this test does not know: {m[0]}")

    return re.sub(r"%\{(\w+)\}|%header\{([\w-]+)\}", field, format_).replace("\\n", "\n")


def _run_readme_command(argv, client, store_path, mail_log, variables=None) -> tuple[str, bool]:
    """(output, is_read_only) of one README command, run against the test's app and store.

    ``variables`` holds the shell variables the commands set (``id=$(curl ...)``, whose output is
    kept, as command substitution does, without its final newlines) and use (``"$id"``).
    """
    variables = {} if variables is None else variables
    assignment = _ASSIGNMENT.fullmatch(argv[0])
    if assignment and argv[-1].endswith(")"):
        inner = [assignment[2], *argv[1:-1], argv[-1][:-1]]
        output, _ = _run_readme_command([a for a in inner if a], client, store_path, mail_log,
                                        variables)
        variables[assignment[1]] = output.rstrip("\n")
        return "", False

    def expand(m: re.Match) -> str:
        name = m[1] or m[2]
        assert name in variables, f"the README uses ${name} before it sets it"
        return variables[name]

    argv = [_VARIABLE.sub(expand, a) for a in argv]
    argv = [str(store_path) if a == "todo.db" else str(mail_log) if a == "todo-mail.log" else a
            for a in argv]
    if argv[0] == "curl":
        method, data, show_headers, url, headers = None, None, False, None, {}
        write_out, discard_body = None, False
        args = iter(argv[1:])
        for arg in args:
            if arg == "-X":
                method = next(args)
            elif arg == "-d":
                data = next(args).encode()
            elif arg == "-H":
                name, value = next(args).split(":", 1)
                headers[name.strip()] = value.strip()
            elif arg == "-i":
                show_headers = True
            elif arg == "-w":
                write_out = next(args)
            elif arg == "-o":
                assert next(args) == "/dev/null", argv
                discard_body = True
            elif arg != "-s":
                url = arg
        path = "/" + url.split("://", 1)[-1].split("/", 1)[1]
        method = method or ("POST" if data is not None else "GET")
        req = urllib.request.Request(client.base + path, data=data, method=method, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        with resp:
            body = resp.read().decode()
            head = [f"HTTP/1.1 {resp.status} {resp.reason}",
                    *(f"{k}: {v}" for k, v in resp.headers.items())]
        assert resp.status < 500, (argv, body)
        output = "\n".join(head) + "\n\n" + body if show_headers else body
        if discard_body:
            output = ""
        if write_out is not None:
            output += _write_out(write_out, resp.status, resp.headers)
        return output, method == "GET"
    if argv[:3] in (["python", "-m", "eventsourcery"], ["python3", "-m", "eventsourcery"]):
        # full lines, as in the README
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        p = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, (argv, p.stdout, p.stderr)
        return p.stdout, True
    if argv[0] in ("cat", "tail"):
        lines = (pathlib.Path(argv[-1]).read_text().splitlines(keepends=True)
                 if os.path.exists(argv[-1]) else [])
        if argv[0] == "tail":
            lines = lines[-int(argv[argv.index("-n") + 1]):]
        return "".join(lines), True
    pytest.fail(f"the README runs a command this test does not know: {argv}")


@pytest.mark.parametrize("after_quick_start", [False, True], ids=["alone", "after-the-quick-start"])
def test_the_walkthrough_runs(after_quick_start, running_app):
    """The walkthrough on SQLite and Postgres, on a new store and after the root README's quick
    start (whose events make every id higher): the ids it keeps from the writes' answers are the
    real ones, and every query it sends with one shows that write at the first try."""
    client, proc, store_url, mail_log, _ = running_app
    others = set()
    if after_quick_start:
        readme = (ROOT / "README.md").read_text()
        quick_start = readme.split("## Try the todo app", 1)[1].split("\n## ", 1)[0]
        quick = [(argv, out) for argv, out in _readme_commands(quick_start, "sh")]
        assert quick, "the root README has no curl lines to try the app with"
        for argv, _ in quick:
            _run_readme_command(argv, client, store_url, mail_log)
            others.update(re.findall(r"/todo/([^/\s]+)", " ".join(argv)))
        assert others, quick
        with es.open_store(store_url) as store:
            notified = ["stakeholder_notified_of_todo_completion"]
            _wait_for(lambda: (bool(store.latest_event_id(notified)), None),
                      20, "the quick start's notification")

    readme = (ROOT / "examples" / "todo" / "README.md").read_text()
    walkthrough = readme.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    commands = _readme_commands(walkthrough, "console")
    assert len(commands) > 10, commands
    ids = {i for argv, _ in commands for i in re.findall(r"/todo/([^/\s]+)", " ".join(argv))}
    assert ids and not ids & others, (ids, others)  # ids of its own
    typed = [a for argv, _ in commands for a in argv
             if re.fullmatch(rf"{EVENT_ID_HEADER}:\s*\d+", a)]
    assert not typed, f"the walkthrough types event ids, not the ones the answers gave: {typed}"
    variables: dict[str, str] = {}
    waited = kept = 0
    with es.open_store(store_url) as store:
        for argv, expected in commands:
            before = dict(variables)
            output, read_only = _run_readme_command(argv, client, store_url, mail_log, variables)
            for name in [n for n in variables if variables[n] != before.get(n)]:
                # a kept id is the id of the event the write stored, on the todo it wrote to
                todo_id = re.findall(r"/todo/([^/\s)]+)", " ".join(argv))[-1]
                assert variables[name].isdigit(), (argv, variables)
                event = store.get_next_from(int(variables[name]), limit=1)[0]
                assert (event.id, event.aggregate_id) == (int(variables[name]), todo_id), argv
                kept += 1
            if any(a.startswith(EVENT_ID_HEADER) for a in argv):
                waited += 1  # read-your-writes: right at the first try, no retry
            elif read_only:  # the notifier catches up eventually
                deadline = time.monotonic() + 20
                while not _matches(expected, output, others) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    output, _ = _run_readme_command(argv, client, store_url, mail_log, variables)
            if expected and expected[0].startswith("HTTP/"):  # curl -i: the status line, headers
                got = output.splitlines()
                assert got[0] == expected[0], (argv, expected, output)
                assert set(expected[1:]) - {""} <= set(got), (argv, expected, output)
            else:
                assert _matches(expected, output, others), (argv, expected, output)
    assert waited >= 4, "the walkthrough's queries do not send the write's Eventsourcery-Event-Id"
    assert kept >= 4, "the walkthrough does not keep the ids its writes answer with"


def test_forget_me_erases_the_todo_and_every_read_model_forgets_it(tmp_path):
    store = es.SQLiteEventStore(tmp_path / "todo.db")
    projections_db = str(tmp_path / "projections.db")
    projectors = [cls(projections_db) for cls in (OutstandingTodos, ScheduledTodos, CompletedTodos)]
    notifier = TodoCompletedNotifier(store, mail_log=tmp_path / "mail.log")
    for processor in (*projectors, notifier):
        processor.setup()

    def catch_up():
        for processor in (*projectors, notifier):
            events = [e for e in store.get_next_from(processor.last_processed_event_id + 1)
                      if processor.processes_event_types is None
                      or e.type in processor.processes_event_types]
            if events:
                processor.process_batch(events)

    app = TodoApp(store, lambda: sqlite3.connect(projections_db))
    secret = "forget.me@example.com"
    for todo_id in ("forget-1", "keep-1"):
        body = json.dumps({"title": "t", "due_date": "2030-01-01",
                           "stakeholder_email": secret}).encode()
        assert app.dispatch("POST", f"/todo/{todo_id}", body).status == 201
    catch_up()
    assert {t["todo_id"] for t in app.query("outstanding")} == {"forget-1", "keep-1"}
    assert app.dispatch("DELETE", "/todo/forget-1").status == 200
    catch_up()
    for name in ("outstanding", "scheduled", "completed"):
        assert "forget-1" not in {t["todo_id"] for t in app.query(name)}
    assert [t["todo_id"] for t in app.query("outstanding")] == ["keep-1"]
    assert (notifier.db.execute("SELECT todo_id FROM reactor_todo_completed_notifier").fetchall()
            == [("keep-1",)])
    assert all(secret not in json.dumps(e.body)
               for e in store.get_events_for_aggregate_id("forget-1"))
    response = app.dispatch("POST", "/todo/forget-1/complete", b'{"completed_on": "2030-01-01"}')
    assert (response.status, response.body) == (410, b"Gone: this todo was forgotten\n")
    assert app.dispatch("DELETE", "/todo/forget-1").status == 200  # forgetting again is harmless
    assert app.dispatch("DELETE", "/todo/never-was").status == 404
    assert app.dispatch("DELETE", "/todo/%00").status == 400
    for processor in (*projectors, notifier):
        processor.close()
    store.close()


def test_resetting_the_notifier_re_sends_no_mail_and_emits_nothing_again(sqlite_store, tmp_path):
    todo_id = new_id()
    sqlite_store.sink(TodoAdded(aggregate_id=todo_id, title="Once",
                                stakeholder_email="a@example.com"))
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


# ---------------------------------------------------------------------------
# Read-your-writes: a write answers with Eventsourcery-Event-Id, a query sent with it waits


BAD_EVENT_ID = (
    f"Bad Request: {EVENT_ID_HEADER} must be an event id, a whole number from 0 to {2**63 - 1}")


@pytest.fixture
def ryw(tmp_path):
    """(app, store, the projector as the runner's child would run it) on SQLite, nothing running."""
    store = es.SQLiteEventStore(tmp_path / "todo.db")
    projections_db = str(tmp_path / "projections.db")
    running = OutstandingTodos(projections_db)
    running.setup()
    app = TodoApp(store, lambda: sqlite3.connect(projections_db),
                  projectors={"outstanding": OutstandingTodos(projections_db)}, wait_timeout=10)
    yield app, store, running
    app.close()
    running.close()
    store.close()


def _todo_ids(response) -> list[str]:
    assert response.status == 200, response
    return [row["todo_id"] for row in json.loads(response.body)]


def test_writes_answer_with_the_id_of_the_last_event_they_stored(ryw):
    app, store, _ = ryw
    assert app.dispatch("POST", "/todo/a", b'{"title": "x"}').headers == {EVENT_ID_HEADER: "1"}
    assert app.dispatch("PUT", "/todo/a", b'{"title": "y"}').headers == {EVENT_ID_HEADER: "2"}
    store.sink(TodoAdded(aggregate_id="other", title="z"))  # 3: someone else's write
    # an amend that changes nothing stores nothing: the store's latest id then (what the answer saw)
    assert app.dispatch("PUT", "/todo/a", b'{"title": "y"}').headers == {EVENT_ID_HEADER: "3"}
    assert app.dispatch("POST", "/todo/a/complete", b'{"completed_on": "2017-07-13"}').headers == {
        EVENT_ID_HEADER: "4"}
    # the AggregateErased
    assert app.dispatch("DELETE", "/todo/a").headers == {EVENT_ID_HEADER: "5"}
    assert app.dispatch("DELETE", "/todo/a").headers == {EVENT_ID_HEADER: "5"}  # forgotten already
    # a 422
    assert EVENT_ID_HEADER not in app.dispatch("POST", "/todo/other", b'{"title": "x"}').headers


def test_a_query_sent_with_the_id_waits_until_its_projection_has_the_event(ryw):
    app, store, running = ryw
    written = app.dispatch("POST", "/todo/a", b'{"title": "x"}').headers[EVENT_ID_HEADER]
    # nothing runs the projector yet
    assert _todo_ids(app.dispatch("GET", "/todos/outstanding")) == []

    def run_projector_later():
        time.sleep(0.3)
        _run(running, store)

    thread = threading.Thread(target=run_projector_later)
    thread.start()
    try:
        response = app.dispatch("GET", "/todos/outstanding", headers={EVENT_ID_HEADER: written})
    finally:
        thread.join(30)
    assert _todo_ids(response) == ["a"]
    assert BEHIND_HEADER not in response.headers
    # later answers follow the projection (the encoded answer is kept only while its position holds)
    app.dispatch("POST", "/todo/a/complete", b'{"completed_on": "2017-07-13"}')
    app.dispatch("POST", "/todo/b", b'{"title": "x"}')
    _run(running, store)
    assert _todo_ids(app.dispatch("GET", "/todos/outstanding")) == ["b"]
    assert _todo_ids(app.dispatch("HEAD", "/todos/outstanding",
                                  headers={"eventsourcery-event-id": "3"})) == ["b"]


def test_a_query_whose_projection_stays_behind_answers_with_the_behind_marker(ryw):
    app, store, running = ryw
    app.wait_timeout = 0.5
    app.dispatch("POST", "/todo/a", b'{"title": "x"}')
    _run(running, store)
    app.dispatch("POST", "/todo/b", b'{"title": "x"}')  # event 2: the projector is not running
    response = app.dispatch("GET", "/todos/outstanding", headers={EVENT_ID_HEADER: "2"})
    assert _todo_ids(response) == ["a"]  # what the projection holds, marked as behind: it is at 1
    assert response.headers == {BEHIND_HEADER: "1"}
    # an id no store has handed out yet: answered at once, marked as behind
    response = app.dispatch("GET", "/todos/outstanding", headers={EVENT_ID_HEADER: str(2**63 - 1)})
    assert _todo_ids(response) == ["a"] and response.headers == {BEHIND_HEADER: "1"}
    # caught up, and several values (repeated headers or a list) wait for the highest
    _run(running, store)
    for headers in ({EVENT_ID_HEADER: "2"}, {EVENT_ID_HEADER: "0, 02"}, {EVENT_ID_HEADER: " 1 "}):
        response = app.dispatch("GET", "/todos/outstanding", headers=headers)
        assert _todo_ids(response) == ["a", "b"] and response.headers == {}, headers
    response = app.dispatch("GET", "/todos/outstanding", headers={EVENT_ID_HEADER: "1, 3"})
    assert response.headers == {BEHIND_HEADER: "2"}


@pytest.mark.parametrize("value", ["", " ", "x", "-1", "+1", "1.5", "1e3", "0x10", "1 2", "1,", ",",
                                   "\u0661", str(2**63), "9" * 30, "9" * 5000])
def test_a_bad_event_id_header_is_a_400(value, ryw):
    app, store, _ = ryw
    # with or without a projector to wait for
    for path in ("/todos/outstanding", "/todos/completed"):
        response = app.dispatch("GET", path, headers={EVENT_ID_HEADER: value})
        assert (response.status, response.body.decode()) == (400, BAD_EVENT_ID + "\n"), value
    assert wanted_event_id({}) is None and wanted_event_id(None) is None


class KeepAlive:
    """One keep-alive HTTP connection: (status, headers, body text) per request."""

    def __init__(self, base: str):
        self.conn = http.client.HTTPConnection(urlsplit(base).hostname, urlsplit(base).port,
                                               timeout=30)

    def __call__(self, method, path, payload=None, headers=None):
        body = None if payload is None else json.dumps(payload).encode()
        self.conn.request(method, path, body, headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.headers, resp.read().decode()


def test_read_your_writes_over_http(running_app):
    """On SQLite and Postgres: a query sent with the write's id sees the write at the first try."""
    client, proc, store_url, mail_log, _ = running_app
    call = KeepAlive(client.base)
    last = 0
    for i in range(20):
        todo_id = f"ryw-{i}"
        status, headers, _ = call("POST", f"/todo/{todo_id}",
                                  {"title": "x", "due_date": "2030-01-01"})
        assert status == 201
        written = int(headers[EVENT_ID_HEADER])
        assert written > last
        last = written
        status, headers, body = call("GET", "/todos/scheduled",
                                     headers={EVENT_ID_HEADER: str(written)})
        assert status == 200 and BEHIND_HEADER not in headers, headers
        assert todo_id in [t["todo_id"] for t in json.loads(body)]
        if i % 2:
            status, headers, _ = call("POST", f"/todo/{todo_id}/complete",
                                      {"completed_on": "2030-01-02"})
            assert status == 200
            written = last = int(headers[EVENT_ID_HEADER])
            status, headers, body = call("GET", "/todos/completed",
                                         headers={EVENT_ID_HEADER: str(written)})
            assert status == 200 and BEHIND_HEADER not in headers, headers
            assert todo_id in [t["todo_id"] for t in json.loads(body)]
            _, _, body = call("GET", "/todos/outstanding", headers={EVENT_ID_HEADER: str(written)})
            assert todo_id not in [t["todo_id"] for t in json.loads(body)]
    # far in the future: answered with the marker (the position reached), not after a wait for ever
    status, headers, body = call("GET", "/todos/outstanding",
                                 headers={EVENT_ID_HEADER: str(2**63 - 1)})
    assert status == 200 and int(headers[BEHIND_HEADER]) >= last, headers
    assert len(json.loads(body)) == 10
    for value in ("-1", "x", str(2**63)):
        status, _, body = call("GET", "/todos/outstanding", headers={EVENT_ID_HEADER: value})
        assert (status, body) == (400, BAD_EVENT_ID + "\n")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0


@pytest.mark.parametrize("rows", [
    [],
    [{"todo_id": "a", "title": "x", "description": None, "due_date": "2017-07-13", "added": 12}],
    [{"todo_id": "a\"b\\c\n\t\x01\x7f", "title": "\u20ac \u2028 \U0001f600 \ud800"},
     {"todo_id": "b"}],
    [{"a": 1}, {}],  # an empty object: json.dumps's own
    [{"a": True, "b": 1.5, "c": [1, {"d": None}]}],  # other values: json.dumps's own
    [{1: "x"}],
])
def test_encoded_answers_are_what_json_dumps_makes(rows):
    assert encode_rows(rows) == json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("seconds", ["-1", "nan", "soon", "3601"])
def test_wait_timeout_out_of_range_is_a_usage_error(seconds, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        app_main.main(["--wait-timeout", seconds, "--store", str(tmp_path / "todo.db")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert ("argument --wait-timeout: invalid number of seconds" in err
            and "Traceback" not in err), err
    assert not (tmp_path / "todo.db").exists()


def test_sqlite_queries_built_by_the_database_match_the_rows_read_one_by_one(tmp_path):
    """On SQLite the queries' JSON is built in the database (one row to step through): the same
    answer."""
    from examples.todo.projections import TODO_COLUMNS, _plain_rows

    projector = CompletedTodos(tmp_path / "projections.db")
    projector.setup()
    odd = ["a\x00b", "\u2028 \U0001f600 \"quoted\" \\", "123", "", "  ", "null"]
    with contextlib.closing(sqlite3.connect(tmp_path / "projections.db")) as db:
        for i, text in enumerate(odd):  # added in the reverse order of their ids
            db.execute("INSERT INTO query_completed_todos VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (f"t{i}", 100 - i, text, None if i % 2 else text,
                        "2017-07-13" if i % 3 else None, text, "2017-07-14"))
        db.commit()
        got = completed_todos(db)
        statement = (f"SELECT {', '.join(TODO_COLUMNS)}, completed_on FROM query_completed_todos"
                     " ORDER BY added_event_id")
        assert got == _plain_rows(db, statement, (*TODO_COLUMNS, "completed_on"))
        assert [t["todo_id"] for t in got] == [f"t{i}" for i in reversed(range(len(odd)))]
        assert got[-1]["title"] == "a\x00b"
        db.execute("DELETE FROM query_completed_todos")
        assert completed_todos(db) == []
    projector.close()
