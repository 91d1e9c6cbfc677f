"""The todo app's events: the facts it records, in the past tense."""

from __future__ import annotations

import datetime

import eventsourcery as es

#: The todo fields a ``TodoAmended`` may change, in their canonical order.
AMENDABLE_FIELDS = ("title", "description", "due_date", "stakeholder_email")


class TodoAdded(es.Event):
    title: str
    description: str | None = None
    due_date: datetime.date | None = None
    stakeholder_email: str | None = None


class TodoAmended(es.Event):
    """Some of a todo's fields changed.

    ``amended_fields`` names the fields this amendment sets, so "set to None"
    (``due_date=None`` with ``"due_date"`` in ``amended_fields``: the due date
    is cleared) differs from "not mentioned" (``"due_date"`` absent: it is
    kept), and that difference survives being stored. The other fields are
    None and mean nothing.
    """

    title: str | None = None
    description: str | None = None
    due_date: datetime.date | None = None
    stakeholder_email: str | None = None
    amended_fields: tuple[str, ...] = ()

    @property
    def changes(self) -> dict:
        """The amended fields and their new values, e.g. ``{"due_date": None}``."""
        return {name: getattr(self, name) for name in self.amended_fields}


# The commands always give the date; the events allow None (as the original's
# event bodies may be empty), so a stored body without the date still loads.
class TodoCompleted(es.Event):
    completed_on: datetime.date | None = None


class TodoAbandoned(es.Event):
    abandoned_on: datetime.date | None = None


class StakeholderNotifiedOfTodoCompletion(es.Event):
    """Emitted by the ``todo_completed_notifier`` reactor onto the todo's stream."""

    notified_on: datetime.datetime
    stakeholder_email: str | None = None
