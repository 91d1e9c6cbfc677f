"""The ``todo_completed_notifier`` reactor: tells a todo's stakeholder it is done.

It keeps its own table of each open todo's title and stakeholder email (a
reactor must not read the projections: they belong to other processors and
may lag). When a todo with a stakeholder email is completed it "sends" the
mail (appends a line to the mail log) and records that fact by emitting
``StakeholderNotifiedOfTodoCompletion`` onto the todo's own stream, caused by
the ``TodoCompleted``.

Its table lives in the event store's database (``es.Reactor(store)`` with no
``db``), so its rows, its position and the events it emits commit together.
Only the mail itself is outside that transaction: after a crash between
writing the line and committing, the mail is "sent" again (at least once).
After a reset the reactor replays its history with ``self.replaying`` True:
it rebuilds its table but sends no mail again (and ``emit_event`` emits
nothing again). Its table writes are upserts, because on SQLite they commit
as the handler makes them.
"""

from __future__ import annotations

import datetime
import os

import eventsourcery as es

from .events import (
    StakeholderNotifiedOfTodoCompletion,
    TodoAbandoned,
    TodoAdded,
    TodoAmended,
    TodoCompleted,
)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def send_email(mail_log: str | os.PathLike | None, *, email: str, message: str,
               sent_at: datetime.datetime) -> None:
    """Our stand-in for a mailer: one line per mail in ``mail_log``."""
    line = f"{sent_at.isoformat(timespec='seconds')}\tTo: {email}\tMessage: {message}\n"
    if mail_log is None:
        print(line, end="", flush=True)
        return
    with open(mail_log, "a", encoding="utf-8") as log:
        log.write(line)
        log.flush()
        os.fsync(log.fileno())


class TodoCompletedNotifier(es.Reactor):
    processor_name = "todo_completed_notifier"
    emits_events = (StakeholderNotifiedOfTodoCompletion,)
    schema = """CREATE TABLE IF NOT EXISTS reactor_todo_completed_notifier (
        todo_id TEXT PRIMARY KEY,
        title TEXT,
        stakeholder_email TEXT
    )"""
    tables = ("reactor_todo_completed_notifier",)

    def __init__(self, store, db=None, *, mail_log=None, clock=utcnow):
        super().__init__(store, db)
        self.mail_log = None if mail_log is None else os.fspath(mail_log)
        self.clock = clock

    @es.on(TodoAdded)
    def _added(self, event):
        p = self.placeholder
        self.db.execute(
            "INSERT INTO reactor_todo_completed_notifier (todo_id, title, stakeholder_email)"
            f" VALUES ({p}, {p}, {p}) ON CONFLICT (todo_id) DO UPDATE"
            " SET title = excluded.title, stakeholder_email = excluded.stakeholder_email",
            (event.aggregate_id, event.title, event.stakeholder_email),
        )

    @es.on(TodoAmended)
    def _amended(self, event):
        names = [n for n in event.amended_fields if n in ("title", "stakeholder_email")]
        if names:
            p = self.placeholder
            self.db.execute(
                "UPDATE reactor_todo_completed_notifier SET "
                + ", ".join(f"{n} = {p}" for n in names)
                + f" WHERE todo_id = {p}",
                (*(getattr(event, n) for n in names), event.aggregate_id),
            )

    @es.on(TodoAbandoned, es.AggregateErased)
    def _abandoned(self, event):
        self._forget(event.aggregate_id)

    def _forget(self, todo_id: str) -> None:
        self.db.execute("DELETE FROM reactor_todo_completed_notifier WHERE todo_id = "
                        f"{self.placeholder}", (todo_id,))

    @es.on(TodoCompleted)
    def _completed(self, event):
        row = self.db.execute(
            "SELECT title, stakeholder_email FROM reactor_todo_completed_notifier"
            f" WHERE todo_id = {self.placeholder}",
            (event.aggregate_id,),
        ).fetchone()
        if row is not None:
            title, email = row
            # after a reset: the mail was sent before
            if email and email.strip() and not self.replaying:
                now = self.clock()
                send_email(self.mail_log, email=email,
                           message=f"Your todo item {title} has been completed!",
                           sent_at=now)
                self.emit_event(StakeholderNotifiedOfTodoCompletion(
                    aggregate_id=event.aggregate_id,
                    notified_on=now,
                    stakeholder_email=email,
                ))
        self._forget(event.aggregate_id)
