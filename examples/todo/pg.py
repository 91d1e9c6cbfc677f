"""The query side on Postgres: a read-only connection to the projections.

Imported only when the store is a ``postgresql://`` URL, so the SQLite mode
needs nothing beyond the standard library. (The projectors themselves are the
same classes on both databases: see projections.py.)
"""

from __future__ import annotations

import eventsourcery_pg as es_pg


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
