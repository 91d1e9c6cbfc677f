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

    # -- state: handlers only record what happened ---------------------------

    @es.on(TodoAdded)
    def _added(self, event):
        self.added = True

    @es.on(TodoAmended)
    def _amended(self, event):
        pass

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
        """Change only the given fields; ``due_date=None`` clears the due date."""
        unknown = set(changes) - set(AMENDABLE_FIELDS)
        if unknown:
            raise TypeError(f"cannot amend {', '.join(sorted(unknown))}")
        if not self.added:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} does not exist")
        if self.completed:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} is complete")
        if self.abandoned:
            raise UnprocessableEntity(f"Todo {quoted(self.id)} is abandoned")
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
