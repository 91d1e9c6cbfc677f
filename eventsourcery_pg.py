"""eventsourcery_pg: the Postgres event store, tracker and projector for eventsourcery (psycopg 3)."""

from __future__ import annotations

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("eventsourcery_pg needs psycopg 3: pip install 'eventsourcery[postgres]'") from exc

import eventsourcery as es

__all__ = ["psycopg", "es"]


class PostgresEventStore(es.EventStore):
    """The Postgres event store (being built; see the Postgres issue)."""

    def __init__(self, conninfo: str) -> None:
        raise NotImplementedError("the Postgres store is not built yet")
