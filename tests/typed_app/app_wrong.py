"""Deliberate type errors: the checkers must report each line marked ``# expected error``.

If the library's types were not seen (an untyped import is ``Any``), none of these would be
reported; tests/test_typed_wheel.py checks that both checkers report exactly these lines.
"""

from __future__ import annotations

import eventsourcery as es
import eventsourcery_pg as es_pg


class Noted(es.Event):
    """An event."""

    text: str


class Notebook(es.Aggregate):
    """An aggregate."""

    @es.on(Noted)
    def _noted(self, event: Noted) -> None:
        pass


class Echo(es.Reactor):
    """A reactor whose emits_events is not an iterable of event classes."""

    emits_events = 3  # expected error


def wrong(store: es.EventStore) -> None:
    """Each marked line misuses a library type."""
    repo = es.Repository(store)
    notebook: Notebook = repo.load(Notebook, 42)  # expected error
    saved: int = repo.save(notebook)  # expected error
    latest: str = store.latest_event_id()  # expected error
    print(notebook, saved, latest)


async def wrong_async(store: es.EventStore) -> None:
    """The asyncio API's results are typed as the store's."""
    arepo = es.AsyncRepository(es.AsyncEventStore(store))
    n: int = await arepo.save(Notebook("n-1"))  # expected error
    print(n)


def wrong_testing() -> None:
    """The testing helpers are generic in the aggregate or processor they were given."""
    es.given(Notebook).aggregate.erase()  # expected error


def wrong_pg() -> None:
    """The Postgres module's types are seen too."""
    es_pg.PostgresEventStore(5432)  # expected error
