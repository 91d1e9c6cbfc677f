"""The ``Todo`` aggregate: the rules a todo's commands must obey."""

from __future__ import annotations

import json

import eventsourcery as es

from .events import (
    AMENDABLE_FIELDS,
    StakeholderNotifiedOfTodoCompletion,
    TodoAbandoned,
    TodoAdded,
    TodoAmended,
    TodoCompleted,
)


class UnprocessableEntity(Exception):
    """A command that breaks a rule of the todo (HTTP 422)."""


def quoted(todo_id: str) -> str:
    """``"<id>"``, in double quotes, as the original's ``id.inspect`` shows it."""
    return json.dumps(todo_id, ensure_ascii=False)


class Todo(es.Aggregate):
    added = False
    completed = False
    abandoned = False
    # the current values of the amendable fields, so an amend can tell a no-op
    title: str | None = None
    description: str | None = None
    due_date = None
    stakeholder_email: str | None = None

    # -- state: handlers only record what happened ---------------------------

    @es.on(TodoAdded)
    def _added(self, event):
        self.added = True
        for name in AMENDABLE_FIELDS:
            setattr(self, name, getattr(event, name))

    @es.on(TodoAmended)
    def _amended(self, event):
        for name, value in event.changes.items():
            setattr(self, name, value)

    @es.on(TodoCompleted)
    def _completed(self, event):
        self.completed = True

    @es.on(TodoAbandoned)
    def _abandoned(self, event):
        self.abandoned = True

    @es.on(StakeholderNotifiedOfTodoCompletion)
    def _stakeholder_notified(self, event):
        # Emitted onto this stream by the notifier reactor; nothing to track,
        # but the handler must exist for the todo to load.
        pass

    # -- commands: check the rules, then apply -------------------------------

    def add(self, *, title, description=None, due_date=None, stakeholder_email=None):
        if self.added:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} already exists")
        self.apply_event(
            TodoAdded,
            title=title,
            description=description,
            due_date=due_date,
            stakeholder_email=stakeholder_email,
        )

    def amend(self, **changes):
        """Change only the given fields; ``due_date=None`` clears the due date.

        When every given field already has its value, nothing happens: no
        event (the rules above are checked first all the same).
        """
        unknown = set(changes) - set(AMENDABLE_FIELDS)
        if unknown:
            raise TypeError(f"cannot amend {', '.join(sorted(unknown))}")
        if not self.added:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} does not exist")
        if self.completed:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} is complete")
        if self.abandoned:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} is abandoned")
        if all(getattr(self, name) == value for name, value in changes.items()):
            return
        self.apply_event(
            TodoAmended,
            amended_fields=tuple(f for f in AMENDABLE_FIELDS if f in changes),
            **changes,
        )

    def complete(self, *, completed_on):
        self._check_open()
        self.apply_event(TodoCompleted, completed_on=completed_on)

    def abandon(self, *, abandoned_on):
        self._check_open()
        self.apply_event(TodoAbandoned, abandoned_on=abandoned_on)

    def _check_open(self):
        if not self.added:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} does not exist")
        if self.completed:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} already complete")
        if self.abandoned:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} already abandoned")
