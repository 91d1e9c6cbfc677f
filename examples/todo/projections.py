"""Projections: read models built from the events, and the queries that read them.

Each projector keeps its tables and its position in one database and commits
both together per batch. The SQL is written once, with ``?`` placeholders,
and runs on SQLite (``es.Projector``) and on Postgres (``eventsourcery_pg.
Projector``, see ``examples/todo/pg.py``): the ``placeholder`` attribute says
what the driver wants, and the DDL keeps to types both understand.

Rows carry ``added_event_id``, the global position of the todo's
``TodoAdded``, so every query lists todos in the order they were added.
"""

from __future__ import annotations

import datetime

import eventsourcery as es

from .events import AMENDABLE_FIELDS, TodoAbandoned, TodoAdded, TodoAmended, TodoCompleted

TODO_COLUMNS = ("todo_id", "title", "description", "due_date", "stakeholder_email")


class SQLMixin:
    """Runs ``?``-placeholder SQL on ``self.db``, whichever the driver (its ``placeholder`` says which)."""

    placeholder: str  # provided by es.Projector / es.Reactor / eventsourcery_pg.Projector

    def sql(self, statement: str, params=()):
        if self.placeholder != "?":
            statement = statement.replace("?", self.placeholder)
        return self.db.execute(statement, tuple(params))

    def date_param(self, value: datetime.date | None):
        # sqlite3's date adapter is deprecated (3.12): store ISO text there;
        # Postgres DATE columns take the date itself.
        if value is None or self.placeholder != "?":
            return value
        return value.isoformat()

    # helpers shared by the todo tables ------------------------------------

    def insert_todo(self, table: str, event: TodoAdded) -> None:
        self.sql(
            f"INSERT INTO {table} (todo_id, added_event_id, title, description,"
            " due_date, stakeholder_email) VALUES (?, ?, ?, ?, ?, ?)",
            (event.aggregate_id, event.id, event.title, event.description,
             self.date_param(event.due_date), event.stakeholder_email),
        )

    def amend_todo(self, table: str, event: TodoAmended, fields=AMENDABLE_FIELDS) -> None:
        names = [name for name in event.amended_fields if name in fields]
        if not names:
            return
        values = [
            self.date_param(event.due_date) if name == "due_date" else getattr(event, name)
            for name in names
        ]
        assignments = ", ".join(f"{name} = ?" for name in names)
        self.sql(f"UPDATE {table} SET {assignments} WHERE todo_id = ?",
                 (*values, event.aggregate_id))

    def delete_todo(self, table: str, event) -> None:
        self.sql(f"DELETE FROM {table} WHERE todo_id = ?", (event.aggregate_id,))


def _todo_table(name: str, extra: str = "") -> str:
    return f"""CREATE TABLE IF NOT EXISTS {name} (
        todo_id TEXT PRIMARY KEY,
        added_event_id BIGINT NOT NULL,
        title TEXT,
        description TEXT,
        due_date DATE,
        stakeholder_email TEXT{extra}
    )"""


# ---------------------------------------------------------------------------
# Projector logic (dialect-free); the concrete classes below pick the base.


class OutstandingTodosLogic(SQLMixin):
    """Todos that are neither completed nor abandoned."""

    processor_name = "outstanding_todos"
    schema = _todo_table("query_outstanding_todos")
    tables = ("query_outstanding_todos",)

    @es.on(TodoAdded)
    def _added(self, event):
        self.insert_todo("query_outstanding_todos", event)

    @es.on(TodoAmended)
    def _amended(self, event):
        self.amend_todo("query_outstanding_todos", event)

    @es.on(TodoCompleted, TodoAbandoned)
    def _gone(self, event):
        self.delete_todo("query_outstanding_todos", event)


class ScheduledTodosLogic(SQLMixin):
    """Outstanding todos; the query keeps those with a due date."""

    processor_name = "scheduled_todos"
    schema = (
        _todo_table("query_scheduled_todos") + ";\n"
        "CREATE INDEX IF NOT EXISTS query_scheduled_todos_due_date"
        " ON query_scheduled_todos (due_date)"
    )
    tables = ("query_scheduled_todos",)

    @es.on(TodoAdded)
    def _added(self, event):
        self.insert_todo("query_scheduled_todos", event)

    @es.on(TodoAmended)
    def _amended(self, event):
        self.amend_todo("query_scheduled_todos", event)

    @es.on(TodoCompleted, TodoAbandoned)
    def _gone(self, event):
        self.delete_todo("query_scheduled_todos", event)


class CompletedTodosLogic(SQLMixin):
    """Completed todos, with the date they were completed on.

    A todo's fields arrive before it is completed, so they are staged in
    ``query_completed_todos_incomplete_todos`` until its ``TodoCompleted``
    moves them to ``query_completed_todos`` (an abandoned todo just leaves).
    """

    processor_name = "completed_todos"
    schema = (
        _todo_table("query_completed_todos", ",\n        completed_on DATE") + ";\n"
        + _todo_table("query_completed_todos_incomplete_todos")
    )
    tables = ("query_completed_todos", "query_completed_todos_incomplete_todos")

    @es.on(TodoAdded)
    def _added(self, event):
        self.insert_todo("query_completed_todos_incomplete_todos", event)

    @es.on(TodoAmended)
    def _amended(self, event):
        self.amend_todo("query_completed_todos_incomplete_todos", event)

    @es.on(TodoAbandoned)
    def _abandoned(self, event):
        self.delete_todo("query_completed_todos_incomplete_todos", event)

    @es.on(TodoCompleted)
    def _completed(self, event):
        self.sql(
            "INSERT INTO query_completed_todos (todo_id, added_event_id, title,"
            " description, due_date, stakeholder_email, completed_on)"
            " SELECT todo_id, added_event_id, title, description, due_date,"
            " stakeholder_email, ? FROM query_completed_todos_incomplete_todos"
            " WHERE todo_id = ?",
            (self.date_param(event.completed_on), event.aggregate_id),
        )
        self.delete_todo("query_completed_todos_incomplete_todos", event)


# ---------------------------------------------------------------------------
# SQLite projectors (es.Projector(path_or_connection)).


class OutstandingTodos(OutstandingTodosLogic, es.Projector):
    pass


class ScheduledTodos(ScheduledTodosLogic, es.Projector):
    pass


class CompletedTodos(CompletedTodosLogic, es.Projector):
    pass


SQLITE_PROJECTORS = (OutstandingTodos, ScheduledTodos, CompletedTodos)


# ---------------------------------------------------------------------------
# Queries: plain DB-API reads, lists of JSON-ready dicts in the order added.


def _rows(db, statement: str, columns) -> list[dict]:
    result = []
    for row in db.execute(statement).fetchall():
        item = {}
        for name, value in zip(columns, row, strict=True):
            if isinstance(value, datetime.date):
                value = value.isoformat()
            item[name] = value
        result.append(item)
    return result


def outstanding_todos(db) -> list[dict]:
    return _rows(
        db,
        f"SELECT {', '.join(TODO_COLUMNS)} FROM query_outstanding_todos"
        " ORDER BY added_event_id",
        TODO_COLUMNS,
    )


def scheduled_todos(db) -> list[dict]:
    return _rows(
        db,
        f"SELECT {', '.join(TODO_COLUMNS)} FROM query_scheduled_todos"
        " WHERE due_date IS NOT NULL ORDER BY added_event_id",
        TODO_COLUMNS,
    )


def completed_todos(db) -> list[dict]:
    columns = TODO_COLUMNS + ("completed_on",)
    return _rows(
        db,
        f"SELECT {', '.join(columns)} FROM query_completed_todos ORDER BY added_event_id",
        columns,
    )


QUERIES = {
    "outstanding": outstanding_todos,
    "scheduled": scheduled_todos,
    "completed": completed_todos,
}
