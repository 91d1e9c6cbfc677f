"""A small typed application on eventsourcery's public API, for the type checkers.

tests/test_typed_wheel.py installs the built wheel into a fresh virtual environment and
checks this file with ``mypy --strict`` and with basedpyright (no error expected), then
runs it with that environment's interpreter (``main()`` asserts what it did).
Every name it uses comes from ``import eventsourcery as es``; nothing is ``# type: ignore``d.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile

import eventsourcery as es


class ChoreAdded(es.Event):
    """A chore was put on the list."""

    title: str


class ChoreDone(es.Event):
    """A chore was done."""


class HelperThanked(es.Event):
    """The reactor's answer to a done chore."""

    note: str


class Chore(es.Aggregate):
    """A chore: added once, done once."""

    title = ""
    done = False

    @es.on(ChoreAdded)
    def _added(self, event: ChoreAdded) -> None:
        self.title = event.title

    @es.on(ChoreDone)
    def _done(self, event: ChoreDone) -> None:
        self.done = True

    def add(self, title: str) -> None:
        """The command: add the chore."""
        if self.title:
            raise ValueError("already added")
        self.apply_event(ChoreAdded, title=title)

    def finish(self) -> ChoreDone:
        """The command: do the chore; returns the new event."""
        if self.done:
            raise ValueError("already done")
        return self.apply_event(ChoreDone)


class OpenChores(es.Projector):
    """A read model: the chores not done yet."""

    schema = "CREATE TABLE IF NOT EXISTS open_chores (chore_id TEXT PRIMARY KEY, title TEXT)"

    @es.on(ChoreAdded)
    def _added(self, event: ChoreAdded) -> None:
        p = self.placeholder
        self.db.execute(f"INSERT INTO open_chores VALUES ({p}, {p})",
                        (event.aggregate_id, event.title))

    @es.on(ChoreDone)
    def _done(self, event: ChoreDone) -> None:
        self.db.execute(f"DELETE FROM open_chores WHERE chore_id = {self.placeholder}",
                        (event.aggregate_id,))

    def titles(self) -> list[str]:
        """The open chores' titles."""
        rows = self.db.execute("SELECT title FROM open_chores ORDER BY title")
        return [str(row[0]) for row in rows]


class Thanker(es.Reactor):
    """Thanks whoever did a chore; declares what it emits as a list (SPEC 8)."""

    emits_events = [HelperThanked]

    @es.on(ChoreDone)
    def _done(self, event: ChoreDone) -> None:
        self.emit_event(HelperThanked(aggregate_id=event.aggregate_id, note="thanks"))


def command(repo: es.Repository, chore_id: str, title: str) -> list[es.Event]:
    """Load, act, save: what a request handler does."""
    chore = repo.load(Chore, chore_id)
    chore.add(title)
    if title.startswith("!"):
        chore.finish()
    return repo.save(chore)


def read_your_writes(folder: str) -> list[str]:
    """Sink through the repository, run the projector to the last event, query it."""
    store: es.EventStore = es.open_store(os.path.join(folder, "chores.db"))
    try:
        repo = es.Repository(store)
        command(repo, "chore-1", "wash up")
        stored = command(repo, "chore-2", "!sweep")
        last_id: int | None = stored[-1].id
        assert last_id is not None
        with contextlib.closing(sqlite3.connect(os.path.join(folder, "read.db"))) as read_db:
            projector = OpenChores(read_db)
            projector.setup()
            projector.process_batch(store.get_next_from(1))
            reached: bool = projector.wait_for(last_id, timeout=5)
            assert reached and projector.last_processed_event_id == last_id
            return projector.titles()
    finally:
        store.close()


def testing_helpers() -> None:
    """The given/when/then helpers, for an aggregate and for both kinds of processor."""
    scenario: es.AggregateScenario[Chore] = es.given(Chore, ChoreAdded(title="dust"), id="c-1")
    done: list[es.Event] = scenario.when(lambda chore: chore.finish()).then(ChoreDone)
    assert len(done) == 1 and scenario.aggregate.done
    finished = es.given(Chore, ChoreDone())
    error = finished.when(Chore.finish).then_raises(ValueError, match="already done")
    assert isinstance(error, ValueError)

    run: es.ProcessorScenario[Thanker] = es.given_events(ChoreDone(aggregate_id="c-1")).feed(
        Thanker(es.MemoryEventStore()))
    thanks = run.then_emitted(HelperThanked(note="thanks"))
    es.assert_events(thanks, [HelperThanked])

    added = ChoreAdded(aggregate_id="c-2", title="iron")
    projection = es.given_events(added).feed(OpenChores(":memory:"))
    assert projection.processor.titles() == ["iron"]
    assert projection.rows("SELECT chore_id FROM open_chores") == [("c-2",)]


async def async_commands(folder: str) -> list[str]:
    """The asyncio API (SPEC 7): a command through AsyncRepository, read-your-writes with
    wait_for_async, and a subscription read from an async for."""
    store = es.open_store(os.path.join(folder, "async.db"))
    async with es.AsyncEventStore(store) as astore:
        arepo = es.AsyncRepository(astore)
        chore: Chore = await arepo.load(Chore, "chore-a")
        chore.add("cook")
        stored: list[es.Event] = await arepo.save(chore)
        last_id = stored[-1].id
        assert last_id is not None
        projector = OpenChores(":memory:")
        projector.setup()
        projector.process_batch(await astore.get_next_from(1))
        assert await projector.wait_for_async(last_id, timeout=5)
        titles: list[str] = []
        async for batch in astore.subscribe(1, event_types=[ChoreAdded]):
            titles += [event.title for event in batch if isinstance(event, ChoreAdded)]
            break
        version: int = await astore.aggregate_version("chore-a")
        assert version == 1
        return titles


def main() -> None:
    """Run it all; raises AssertionError if anything is off."""
    with tempfile.TemporaryDirectory() as folder:
        assert read_your_writes(folder) == ["wash up"]
        assert asyncio.run(async_commands(folder)) == ["cook"]
    testing_helpers()
    print("typed app: ok")


if __name__ == "__main__":
    main()
