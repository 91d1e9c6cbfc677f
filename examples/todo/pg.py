"""The projectors on Postgres: the same logic on ``eventsourcery_pg.Projector``.

Imported only when the store is a ``postgresql://`` URL, so the SQLite mode
needs nothing beyond the standard library.
"""

from __future__ import annotations

import eventsourcery_pg as es_pg

from .projections import CompletedTodosLogic, OutstandingTodosLogic, ScheduledTodosLogic


class OutstandingTodosPg(OutstandingTodosLogic, es_pg.Projector):
    pass


class ScheduledTodosPg(ScheduledTodosLogic, es_pg.Projector):
    pass


class CompletedTodosPg(CompletedTodosLogic, es_pg.Projector):
    pass


POSTGRES_PROJECTORS = (OutstandingTodosPg, ScheduledTodosPg, CompletedTodosPg)


def connect(url: str):
    """A connection for the query side (autocommit: reads only).

    Honours a ``?schema=`` in the URL as the store and projectors do: the
    projection tables are read from that schema.
    """
    import psycopg

    conninfo, schema = es_pg.split_schema(url)
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    if schema != "public":
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
    return conn
