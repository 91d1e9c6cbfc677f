"""Commands: validated requests to change a todo, and the handler that runs them.

``AddTodo.build(params)`` (and friends) take the request's parameters, keep the
keys the command knows (others are ignored), check them and raise
``BadRequest`` with the original app's messages. ``CommandHandler.handle``
loads the todo, calls the aggregate and saves the new events; a
``ConcurrencyError`` (someone else wrote to the todo in between, e.g. the
notifier reactor) is retried a few times on a fresh load, then reported as
``Conflict``.
"""

from __future__ import annotations

import dataclasses
import datetime
import re

import eventsourcery as es

from .aggregate import Todo, UnprocessableEntity, quoted
from .events import AMENDABLE_FIELDS

__all__ = [
    "AbandonTodo",
    "AddTodo",
    "AmendTodo",
    "BadRequest",
    "CommandHandler",
    "CompleteTodo",
    "Conflict",
    "UnprocessableEntity",
]


class BadRequest(Exception):
    """The command's parameters are missing or malformed (HTTP 400)."""


class Conflict(Exception):
    """The todo kept changing under us; the client may try again (HTTP 409)."""


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: The longest todo id, in characters: ids go into the stores' and projections' indexes
#: (Postgres refuses index entries over about 2.7 kB; 200 characters are at most 800 bytes).
MAX_TODO_ID_LENGTH = 200
# control characters (NUL, newlines, escapes, DEL, C1) and lone surrogates: no store takes all of
# them
_ODD_ID_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def todo_id_of(params) -> str:
    """The ``todo_id`` parameter, checked (blank, control characters, too long: BadRequest)."""
    todo_id = params.get("todo_id")
    if _blank(todo_id):
        raise BadRequest("todo_id is blank")
    if (not isinstance(todo_id, str) or len(todo_id) > MAX_TODO_ID_LENGTH
            or _ODD_ID_CHARACTERS.search(todo_id)):
        raise BadRequest("todo_id is invalid")
    return todo_id


def _date(params, name, *, required=False) -> datetime.date | None:
    """A ``YYYY-MM-DD`` date; None when absent or null (``<name> is blank`` if required)."""
    value = params.get(name)
    if _blank(value):
        if required:
            raise BadRequest(f"{name} is blank")
        if value is None:
            return None
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return datetime.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise BadRequest(f"{name} is invalid")


def _text(params, name, *, required=False) -> str | None:
    value = params.get(name)
    if required and _blank(value):
        raise BadRequest(f"{name} is blank")
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} is invalid")
    return value


def _params(params) -> dict:
    if not isinstance(params, dict):
        raise BadRequest("parameters must be a JSON object")
    return params


@dataclasses.dataclass(frozen=True)
class AddTodo:
    todo_id: str
    title: str
    description: str | None = None
    due_date: datetime.date | None = None
    stakeholder_email: str | None = None

    @classmethod
    def build(cls, params: dict) -> AddTodo:
        params = _params(params)
        return cls(
            todo_id=todo_id_of(params),
            title=_text(params, "title", required=True),
            description=_text(params, "description"),
            due_date=_date(params, "due_date"),
            stakeholder_email=_text(params, "stakeholder_email"),
        )

    def __call__(self, todo: Todo) -> None:
        todo.add(
            title=self.title,
            description=self.description,
            due_date=self.due_date,
            stakeholder_email=self.stakeholder_email,
        )


@dataclasses.dataclass(frozen=True)
class AmendTodo:
    """Only the keys present in ``changes`` are amended; ``{"due_date": None}`` clears it.

    Without any amendable key, running it checks the todo's rules first, as the
    original app does (a todo that does not exist, is complete or is abandoned:
    ``UnprocessableEntity``), then raises ``BadRequest("nothing to amend")``.
    """

    todo_id: str
    changes: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, params: dict) -> AmendTodo:
        params = _params(params)
        todo_id = todo_id_of(params)
        changes = {}
        for name in AMENDABLE_FIELDS:
            if name not in params:
                continue
            if name == "due_date":
                changes[name] = _date(params, name)
            else:
                # A todo always has a title: it may change, not go away.
                changes[name] = _text(params, name, required=(name == "title"))
        return cls(todo_id=todo_id, changes=changes)

    def __call__(self, todo: Todo) -> None:
        todo.amend(**self.changes)  # the todo's rules first: a 422 before the 400 below
        if not self.changes:
            raise BadRequest("nothing to amend")


@dataclasses.dataclass(frozen=True)
class CompleteTodo:
    todo_id: str
    completed_on: datetime.date

    @classmethod
    def build(cls, params: dict) -> CompleteTodo:
        params = _params(params)
        return cls(
            todo_id=todo_id_of(params),
            completed_on=_date(params, "completed_on", required=True),
        )

    def __call__(self, todo: Todo) -> None:
        todo.complete(completed_on=self.completed_on)


@dataclasses.dataclass(frozen=True)
class AbandonTodo:
    todo_id: str
    abandoned_on: datetime.date

    @classmethod
    def build(cls, params: dict) -> AbandonTodo:
        params = _params(params)
        return cls(
            todo_id=todo_id_of(params),
            abandoned_on=_date(params, "abandoned_on", required=True),
        )

    def __call__(self, todo: Todo) -> None:
        todo.abandon(abandoned_on=self.abandoned_on)


class CommandHandler:
    """Load the todo, run the command on it, save its new events.

    A ``ConcurrencyError`` means another writer (a second request, or the
    notifier reactor appending to the todo's stream) got there first: the
    command is re-run on a fresh load, up to ``attempts`` times in all, and
    then ``Conflict`` is raised.
    """

    def __init__(self, repository: es.Repository, *, attempts: int = 5, backoff: float = 0.01):
        self.repository = repository
        self.attempts = attempts
        self.backoff = backoff

    def handle(self, command) -> list:
        """Run ``command``; returns the events it stored (``Repository.update`` retries)."""
        try:
            # UnprocessableEntity (or BadRequest) propagates at once: retrying would not help
            return self.repository.update(Todo, command.todo_id, command, attempts=self.attempts,
                                          backoff=self.backoff)
        except es.DuplicateEventError:
            raise
        except es.ConcurrencyError:
            raise Conflict(
                f"Todo {quoted(command.todo_id)} was changed by another request; try again"
            ) from None
