"""The Postgres side of the typed application: type-checked only (running it needs a server).

tests/test_typed_wheel.py checks it with the other files; psycopg need not be installed for that.
"""

from __future__ import annotations

from app import ChoreAdded, OpenChores

import eventsourcery as es
import eventsourcery_pg as es_pg


class OpenChoresPg(es_pg.Projector):
    """OpenChores on Postgres: the same handlers, ``%s`` placeholders."""

    schema = OpenChores.schema

    @es.on(ChoreAdded)
    def _added(self, event: ChoreAdded) -> None:
        p = self.placeholder
        self.db.execute(f"INSERT INTO open_chores VALUES ({p}, {p})",
                        (event.aggregate_id, event.title))


def open_postgres(conninfo: str) -> tuple[es.EventStore, es.Projector]:
    """A Postgres store and a projector on it, through the public names."""
    store = es_pg.PostgresEventStore(conninfo, schema="chores")
    same: es.EventStore = es.open_store(conninfo)
    same.close()
    return store, OpenChoresPg(conninfo, schema="chores")
