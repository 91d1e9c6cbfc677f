"""The event browser of eventsourcery: a web page over an event store (standard library only).

``python -m eventsourcery STORE serve [--host 127.0.0.1] [--port 8100] [--allow-actions]``
serves it. Vendor it by copying this file beside ``eventsourcery.py`` (as ``eventsourcery_pg.py``
for Postgres).

Pages: the events (newest first, filtered by type and aggregate id, paged by id, new ones appear
without a reload), one event (every field, its cause, the events it caused and those of its
correlation), one aggregate's history, the processors (refreshed live, with a chart of each one's
lag over the time the page has been open) and the store's statistics. Behind them, a JSON API with
the fields of the command line's ``--json`` output::

    GET /api/events?type=&aggregate_id=&after=&before=&limit=   newest first, paged by id
    GET /api/events/<id>                      one event, its cause and consequences
    GET /api/aggregates/<id>?from_version=&limit=    one aggregate's history, version order
    GET /api/processors                       processor_statuses(), as processors --json
    GET /api/processors/<name>/parked         its parked events (where the library parks)
    GET /api/stats                            store.stats(), as stats --json
    POST /api/processors/<name>/<action>      reset, skip, retry-parked, drop-parked

Safe by default: it listens on 127.0.0.1, answers only requests addressed to this machine when it
does, and only reads (an SQLite store is opened read-only, as the command line's read commands
do). Actions are offered only with ``--allow-actions``: each is a POST that carries a token made
when the server starts (``X-Eventsourcery-Token``; 403 without it), and the page asks before
sending one; each opens the store for writing for that action alone. Every page is sent with a
Content-Security-Policy that allows only this server's own script and style (no inline script, no
other origin), and the page's script shows every stored string as text (``textContent``), never as
markup.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hmac
import html
import http.server
import json
import secrets
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import eventsourcery as es

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "EventBrowser",
    "BrowserServer",
    "make_server",
    "serve_command",
]

#: Sent with every answer: only this server's own script, style and requests; no inline script or
#: style, no frames, no plugins, no forms sent elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: Events on one page unless ``limit`` says otherwise, and the most ``limit`` may ask for.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: How many events before and after one event are searched for its cause, the events it caused and
#: those of its correlation (the store has no index on those fields: a page never scans them all).
CAUSAL_WINDOW = 1000
#: The most POST body the actions read.
MAX_BODY = 16_384

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class BrowserError(Exception):
    """A request the browser answers with ``status`` and a one-line message (as JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _label(target: str) -> str:
    """The store's name as the page shows it: a URL's password is masked."""
    try:
        parts = urllib.parse.urlsplit(target)
    except ValueError:
        return target
    if parts.password is None:
        return target
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class EventBrowser:
    """What the pages show, as JSON-ready dicts read from ``store`` (which it does not close).

    ``target`` names the store on the page; ``allow_actions`` enables the actions, which run on a
    store that ``open_for_actions()`` opens for each one and that is closed after it (default:
    ``store`` itself). ``token`` is the secret every action must carry, made here when not given.
    """

    def __init__(
        self,
        store: es.EventStore,
        *,
        target: str | None = None,
        allow_actions: bool = False,
        open_for_actions: Callable[[], es.EventStore] | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        self.label = _label(target if target is not None else repr(store))
        self.allow_actions = allow_actions
        self._open_for_actions = open_for_actions
        self.token = token or secrets.token_urlsafe(32)

    # -- events -----------------------------------------------------------------------------------

    def events(
        self,
        types: list[str] | None = None,
        aggregate_id: str | None = None,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = PAGE_SIZE,
    ) -> dict[str, Any]:
        """One page of events, newest first: the newest ``limit`` matching ones (with ``before``: of
        those with a smaller id; with ``after``: the oldest ``limit`` of those with a greater id).
        ``older`` and ``newer`` are the ``before`` and ``after`` of the neighbouring pages (None
        when there is none). Keyset paging by id: a page reads about as many events as it shows,
        never counts or scans them all."""
        if before is not None and after is not None:
            raise BrowserError(400, "give before or after, not both")
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise BrowserError(400, f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        finder = _Finder(self.store, types or None, aggregate_id)
        if after is not None:
            page = finder.oldest_above(after, limit + 1)
            has_newer = len(page) > limit
            page = page[:limit]
            has_older = bool(finder.newest_below(after + 1, 1))
        else:
            page = finder.newest_below(before, limit + 1)
            has_older = len(page) > limit
            page = page[-limit:]
            has_newer = before is not None and bool(finder.oldest_above(before - 1, 1))
        page.reverse()
        return {
            "events": [es._cli_event_dict(e) for e in page],
            "limit": limit,
            "latest_event_id": self.store.latest_event_id(),
            "older": page[-1].id if page and has_older else None,
            "newer": page[0].id if page and has_newer else None,
        }

    def event(self, event_id: int) -> dict[str, Any]:
        """One event with every field, its cause, the events it caused and those of its correlation
        (looked for among the ``CAUSAL_WINDOW`` events before and after it: ``searched`` says
        which)."""
        found = self.store.get_next_from(event_id, limit=1)
        if not found or found[0].id != event_id:
            raise BrowserError(404, f"no event {event_id} in this store")
        event = found[0]
        first, last = (
            max(event_id - CAUSAL_WINDOW, 1),
            min(event_id + CAUSAL_WINDOW, self.store.latest_event_id()),
        )
        around = [e for e in self.store.each_by_range(first, last) if e.id != event_id]
        correlation = event.correlation_id or event.uuid
        return {
            "event": es._cli_event_dict(event),
            "caused_by": [
                es._cli_event_dict(e)
                for e in around
                if event.causation_id is not None and e.uuid == event.causation_id
            ],
            "caused": [es._cli_event_dict(e) for e in around if e.causation_id == event.uuid],
            "correlated": [
                es._cli_event_dict(e)
                for e in around
                if e.correlation_id == correlation or e.uuid == correlation
            ],
            "searched": {"from": first, "to": max(last, event_id)},
        }

    def aggregate(
        self, aggregate_id: str, *, from_version: int = 1, limit: int = 200
    ) -> dict[str, Any]:
        """One aggregate's events in version order (``limit`` of them from ``from_version``), and
        its snapshots as the command line's ``aggregate`` describes them."""
        if from_version < 1 or not 1 <= limit <= MAX_PAGE_SIZE:
            raise BrowserError(
                400, f"from_version must be at least 1 and limit between 1 and {MAX_PAGE_SIZE}"
            )
        version = self.store.aggregate_version(aggregate_id)
        events = self.store.get_events_for_aggregate_id(
            aggregate_id, from_version=from_version, to_version=from_version + limit - 1
        )
        snapshots = [
            {
                "aggregate_type": s.aggregate_type,
                "version": s.version,
                "snapshot_version": s.snapshot_version,
                "created_at": str(s.created_at),
            }
            for s in self.store.snapshots(aggregate_id)
        ]
        last = events[-1].version if events else None
        return {
            "aggregate_id": aggregate_id,
            "version": version,
            "from_version": from_version,
            "events": [es._cli_event_dict(e) for e in events],
            "snapshots": snapshots,
            "next_from_version": last + 1 if last is not None and last < version else None,
        }

    # -- processors and statistics ----------------------------------------------------------------

    def processors(self) -> dict[str, Any]:
        """Every processor's status (the fields of ``processors --json``), and what the page may
        do."""
        statuses = [dataclasses.asdict(s) for s in es.processor_statuses(self.store)]
        return {
            "processors": statuses,
            "latest_event_id": self.store.latest_event_id(),
            "actions": self.available_actions(),
        }

    def available_actions(self) -> list[str]:
        """The actions this server performs: none unless it was started with actions allowed."""
        if not self.allow_actions:
            return []
        return ["reset", "skip"] + [
            name
            for name, function in (("retry-parked", "retry_parked"), ("drop-parked", "drop_parked"))
            if _optional(function) is not None
        ]

    def parked(self, name: str) -> dict[str, Any]:
        """The parked events of processor ``name``, where this eventsourcery parks events."""
        parked_events = _optional("parked_events")
        if parked_events is None:
            raise BrowserError(404, "this eventsourcery does not park events")
        try:
            parked = parked_events(self.store, name)
        except (ValueError, KeyError) as exc:
            raise BrowserError(404, str(exc)) from exc
        return {"name": name, "parked": [_as_dict(p) for p in parked]}

    def stats(self) -> dict[str, Any]:
        """The store's statistics, as ``stats --json`` gives them."""
        return {"store": self.label, **self.store.stats()}

    # -- actions ----------------------------------------------------------------------------------

    def check_token(self, token: str | None) -> None:
        """Raise 403 unless actions are allowed and ``token`` is this server's."""
        if not self.allow_actions:
            raise BrowserError(
                403, "actions are not allowed: start the browser with --allow-actions"
            )
        if not token or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise BrowserError(
                403,
                "this action needs the token the server made when it started "
                "(the page sends it; a request without it is refused)",
            )

    def act(self, name: str, action: str, event_id: int | None) -> dict[str, Any]:
        """Perform ``action`` (reset, skip, retry-parked, drop-parked) on processor ``name``; the
        caller checked the token. Returns what happened, as a sentence, and the processor's new
        status."""
        if action not in ("reset", "skip", "retry-parked", "drop-parked"):
            raise BrowserError(
                404, f"no action {action!r} (reset, skip, retry-parked, drop-parked)"
            )
        if action not in self.available_actions():
            raise BrowserError(404, f"this eventsourcery has no {action}")
        if action in ("skip", "drop-parked") and event_id is None:
            raise BrowserError(400, f"{action} needs an event_id")
        with self._writable() as store:
            try:
                message = self._perform(store, name, action, event_id)
            except es.UnableToLockProcessorError as exc:
                raise BrowserError(
                    409, f"cannot reset {name!r} while it is running; stop it first ({exc})"
                ) from exc
            except ValueError as exc:
                raise BrowserError(409, str(exc)) from exc
        status = next(
            (dataclasses.asdict(s) for s in es.processor_statuses(self.store) if s.name == name),
            None,
        )
        return {"done": message, "processor": status}

    def _perform(self, store: es.EventStore, name: str, action: str, event_id: int | None) -> str:
        if action == "skip":
            assert event_id is not None
            es.skip_event(store, name, event_id)
            return f"skipped event {event_id} for {name}: it will not process it"
        if action == "reset":
            records = {r.name: r for r in store.tracker().records()}
            if name not in records:
                raise BrowserError(404, f"unknown processor {name!r}")
            record = es._located_record(records[name])
            tables = es._tables_to_reset(record)  # (ValueError: 409, like a refused skip)
            es._reset_processor(store, record, tables)
            dropped = f" and dropped its tables {', '.join(tables)}" if tables else ""
            return (f"reset {name}: position {record.position} -> 0{dropped}; its next run "
                    "processes every event again")
        function = _optional(action.replace("-", "_"))
        assert function is not None  # (act() checked it)
        if action == "retry-parked":
            function(store, name, event_id)
            which = "s" if event_id is None else f" {event_id}"
            return f"asked {name} to retry its parked event{which}"
        function(store, name, event_id)
        return f"dropped parked event {event_id} of {name}"

    @contextlib.contextmanager
    def _writable(self) -> Iterator[es.EventStore]:
        if self._open_for_actions is None:
            yield self.store
            return
        store = self._open_for_actions()
        try:
            yield store
        finally:
            store.close()


def _optional(name: str) -> Callable[..., Any] | None:
    """The library's function ``name`` when this eventsourcery has it (parking came later)."""
    function = getattr(es, name, None)
    return function if callable(function) else None


def _as_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "_asdict"):
        return value._asdict()
    return value


class _Finder:
    """Finds the matching events next to an id, reading about as many as it returns.

    Ids grow in commit order; the store reads forward only (``get_next_from``), so the events before
    an id are read in windows that end there and grow four times over until they hold enough. A
    type is read through the store's (type, id) index, one type at a time; an aggregate through its
    versions."""

    def __init__(
        self, store: es.EventStore, types: list[str] | None, aggregate_id: str | None
    ) -> None:
        self.store, self.types, self.aggregate_id = store, types, aggregate_id

    def newest_below(self, below: int | None, n: int) -> list[es.Event]:
        """The newest ``n`` matching events with an id below ``below`` (None: all), in id order."""
        if self.aggregate_id is not None:
            return self._aggregate_below(below, n)
        if self.types is None:
            top = self.store.latest_event_id() + 1 if below is None else below
            return self._back(top, None, n)
        found: list[es.Event] = []
        for name in self.types:
            top = self.store.latest_event_id(name) + 1
            found += self._back(top if below is None else min(top, below), name, n)
        return sorted(found, key=lambda e: e.id or 0)[-n:]

    def oldest_above(self, above: int, n: int) -> list[es.Event]:
        """The oldest ``n`` matching events with an id above ``above``, in id order."""
        if self.aggregate_id is not None:
            return self._aggregate_above(above, n)
        if self.types is None:
            return self.store.get_next_from(above + 1, limit=n)
        found: list[es.Event] = []
        for name in self.types:
            found += self.store.get_next_from(above + 1, name, limit=n)
        return sorted(found, key=lambda e: e.id or 0)[:n]

    def _back(self, top: int, name: str | None, n: int) -> list[es.Event]:
        found: list[es.Event] = []  # the matching events of [first, top), in id order
        width, end = n, top
        while True:
            first = max(top - width, 1)
            found = self._between(first, end, name, n) + found  # each id is read once
            if len(found) >= n or first == 1:
                return found[-n:]
            end, width = first, width * 4

    def _between(self, first: int, end: int, name: str | None, n: int) -> list[es.Event]:
        """The events (of type ``name``) with ``first <= id < end``: a read by type may run past
        ``end`` by one read's ``limit``, which is kept small for that."""
        found: list[es.Event] = []
        position = first
        while position < end:
            limit = min(end - position, 1000 if name is None else max(2 * n, 100))
            page = self.store.get_next_from(position, name, limit=limit)
            found += [e for e in page if (e.id or 0) < end]
            if len(page) < limit or (page[-1].id or 0) >= end - 1:
                break
            position = (page[-1].id or 0) + 1
        return found

    def _matches(self, event: es.Event) -> bool:
        return self.types is None or event.type in self.types

    def _version_below(self, below: int, version: int) -> int:
        """The highest version of the aggregate stored with an id below ``below`` (0: none)."""
        assert self.aggregate_id is not None
        at = self.store.get_next_from(below, limit=1)
        if at and at[0].id == below and at[0].aggregate_id == self.aggregate_id:
            return (at[0].version or 1) - 1  # the usual case: ``below`` is one of its events
        low, high = 0, version  # versions grow with ids: the last one below ``below``, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            (event,) = self.store.get_events_for_aggregate_id(
                self.aggregate_id, from_version=middle, to_version=middle
            )
            if (event.id or 0) < below:
                low = middle
            else:
                high = middle - 1
        return low

    def _aggregate_below(self, below: int | None, n: int) -> list[es.Event]:
        assert self.aggregate_id is not None
        version = self.store.aggregate_version(self.aggregate_id)
        top = version if below is None else self._version_below(below, version)
        width, found = n, []
        while top >= 1:
            first = max(top - width + 1, 1)
            found = [
                e
                for e in self.store.get_events_for_aggregate_id(
                    self.aggregate_id, from_version=first, to_version=top
                )
                if self._matches(e)
            ]
            if len(found) >= n or first == 1:
                break
            width *= 4
        return found[-n:]

    def _aggregate_above(self, above: int, n: int) -> list[es.Event]:
        assert self.aggregate_id is not None
        version = self.store.aggregate_version(self.aggregate_id)
        start = self._version_below(above + 1, version) + 1
        found: list[es.Event] = []
        width = n
        while start <= version and len(found) < n:
            events = self.store.get_events_for_aggregate_id(
                self.aggregate_id, from_version=start, to_version=start + width - 1
            )
            found += [e for e in events if self._matches(e)]
            start += width
            width *= 4
        return found[:n]


# -- the page ------------------------------------------------------------------------------------

_PAGES = {
    "": "events",
    "processors": "processors",
    "stats": "stats",
    "events": "event",
    "aggregates": "aggregate",
}

_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}" data-actions="{actions}" data-token="{token}">
<header>
<nav><a href="/" id="nav-events">Events</a><a href="/processors" id="nav-processors">Processors</a>\
<a href="/stats" id="nav-stats">Statistics</a></nav>
<span class="store" title="the store">{store}</span>
</header>
<main id="main"><p class="note">Loading…</p></main>
<noscript><p>This page needs JavaScript (its own, served here); the JSON API is under /api/.</p>
</noscript>
</body>
</html>
"""

_CSS = """
:root {
  --fg: #1d2330;
  --muted: #5b6475;
  --line: #d9dde5;
  --bg: #f7f8fa;
  --accent: #2457c5;
  --bad: #b3261e;
  --good: #1f7a3a;
  --warn: #9a6700;
}
* {
  box-sizing: border-box;
}
body {
  margin: 0;
  font:
    14px/1.45 system-ui,
    -apple-system,
    "Segoe UI",
    sans-serif;
  color: var(--fg);
  background: var(--bg);
}
header {
  display: flex;
  align-items: center;
  gap: 1.5em;
  padding: 0.6em 1.2em;
  background: #fff;
  border-bottom: 1px solid var(--line);
}
nav a {
  margin-right: 1.2em;
  color: var(--accent);
  text-decoration: none;
  font-weight: 600;
}
nav a.current {
  color: var(--fg);
  border-bottom: 2px solid var(--accent);
}
.store {
  color: var(--muted);
  font-family: ui-monospace, monospace;
  overflow-wrap: anywhere;
}
main {
  padding: 1em 1.2em;
}
h1 {
  font-size: 1.25em;
  margin: 0.2em 0 0.7em;
  overflow-wrap: anywhere;
}
h2 {
  font-size: 1.05em;
  margin: 1.2em 0 0.5em;
}
table {
  border-collapse: collapse;
  width: 100%;
  background: #fff;
  border: 1px solid var(--line);
}
th,
td {
  text-align: left;
  padding: 0.35em 0.6em;
  border-bottom: 1px solid var(--line);
  vertical-align: top;
}
th {
  font-weight: 600;
  color: var(--muted);
  background: #fbfbfd;
}
td.num,
th.num {
  text-align: right;
  font-variant-numeric: tabular-nums;
}
td.when {
  white-space: nowrap;
}
td.body {
  font-family: ui-monospace, monospace;
  font-size: 12px;
  color: var(--muted);
  width: 100%;
  max-width: 1px;
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: nowrap;
}
td {
  overflow-wrap: break-word;
}
.mono {
  overflow-wrap: anywhere;
}
td.actions button {
  white-space: nowrap;
  margin: 0 0.3em 0.3em 0;
}
.mono {
  font-family: ui-monospace, monospace;
  font-size: 12px;
}
pre {
  background: #fff;
  border: 1px solid var(--line);
  padding: 0.7em;
  overflow: auto;
  font-size: 12px;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
}
a {
  color: var(--accent);
}
form.filters {
  display: flex;
  gap: 0.6em;
  flex-wrap: wrap;
  align-items: end;
  margin-bottom: 0.8em;
}
form.filters label {
  display: flex;
  flex-direction: column;
  font-size: 12px;
  color: var(--muted);
}
input {
  font: inherit;
  padding: 0.25em 0.4em;
  border: 1px solid var(--line);
  border-radius: 3px;
}
button {
  font: inherit;
  padding: 0.25em 0.8em;
  border: 1px solid var(--accent);
  background: #fff;
  color: var(--accent);
  border-radius: 3px;
  cursor: pointer;
}
button.danger {
  border-color: var(--bad);
  color: var(--bad);
}
button.primary {
  background: var(--accent);
  color: #fff;
}
.pager {
  margin: 0.7em 0;
  display: flex;
  gap: 1em;
}
.note {
  color: var(--muted);
}
.error {
  color: var(--bad);
}
.live {
  font-size: 12px;
  color: var(--good);
}
.live.stale {
  color: var(--warn);
}
tr.new {
  animation: flash 2s ease-out;
}
@keyframes flash {
  from {
    background: #fff4c2;
  }
  to {
    background: transparent;
  }
}
.state-failing {
  color: var(--bad);
  font-weight: 600;
}
.state-running {
  color: var(--good);
  font-weight: 600;
}
.state-standby {
  color: var(--warn);
}
.confirm {
  border: 1px solid var(--bad);
  background: #fff;
  padding: 0.7em;
  margin: 0.7em 0;
}
.confirm p {
  margin: 0 0 0.5em;
}
.result {
  margin: 0.7em 0;
  padding: 0.5em 0.7em;
  background: #fff;
  border-left: 3px solid var(--good);
}
.chart {
  background: #fff;
  border: 1px solid var(--line);
  margin-top: 0.5em;
}
.legend span {
  margin-right: 1.2em;
  font-size: 12px;
}
.legend i {
  display: inline-block;
  width: 0.9em;
  height: 0.9em;
  margin-right: 0.3em;
  vertical-align: -2px;
}
dl.fields {
  display: grid;
  grid-template-columns: max-content 1fr;
  gap: 0.2em 1em;
  background: #fff;
  border: 1px solid var(--line);
  padding: 0.7em;
}
dl.fields dt {
  color: var(--muted);
}
dl.fields dd {
  margin: 0;
  overflow-wrap: anywhere;
  font-family: ui-monospace, monospace;
  font-size: 12px;
}
.partitions td,
.partitions th {
  font-size: 12px;
  padding: 0.15em 0.4em;
}
"""

_JS = r"""'use strict';
// The event browser's page: everything stored is shown with textContent (never as markup).
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const token = body.dataset.token || '';
  const main = document.getElementById('main');
  const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
  const COLORS = [
    '#2457c5',
    '#b3261e',
    '#1f7a3a',
    '#9a6700',
    '#7b3fb3',
    '#0f7c8c',
    '#c2571a',
    '#555'
  ];

  // A stored string as text, with control and direction characters made visible (\xNN, \uNNNN).
  // (keepLines: a block's own line breaks stay.)
  function shown(value, keepLines) {
    const text = value === null || value === undefined ? '' : String(value);
    return text.replace(CONTROL, function (c) {
      if (keepLines && c === '\n') return c;
      const code = c.charCodeAt(0);
      return code < 0x100
        ? '\\x' + code.toString(16).padStart(2, '0')
        : '\\u' + code.toString(16).padStart(4, '0');
    });
  }

  function el(tag, attrs) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === 'text') node.textContent = shown(value);
      else if (key === 'cls') node.className = value;
      else if (key === 'on')
        for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value);
    }
    for (let i = 2; i < arguments.length; i++) {
      const child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === 'string' ? document.createTextNode(shown(child)) : child);
    }
    return node;
  }
  // A value as indented JSON (which escapes the line breaks inside its strings).
  function block(id, value) {
    const pre = el('pre', { id: id });
    pre.textContent = shown(JSON.stringify(value, null, 2), true);
    return pre;
  }
  function link(href, text, cls) {
    return el('a', { href: href, text: text, cls: cls || '' });
  }
  function eventHref(id) {
    return '/events/' + encodeURIComponent(id);
  }
  function aggregateHref(id) {
    return '/aggregates/' + encodeURIComponent(id);
  }
  function cell(content, cls) {
    return el(
      'td',
      { cls: cls || '' },
      typeof content === 'object' && content !== null ? content : String(content)
    );
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }
  function time(text) {
    return text
      ? shown(text)
          .replace('T', ' ')
          .replace(/\.(\d{3})\d*/, '.$1')
      : '';
  }

  async function api(path, options) {
    const answer = await fetch(
      path,
      Object.assign({ headers: { Accept: 'application/json' } }, options || {})
    );
    let data = null;
    try {
      data = await answer.json();
    } catch (e) {
      data = null;
    }
    if (!answer.ok) throw new Error((data && data.error) || 'HTTP ' + answer.status);
    return data;
  }
  function failure(where, error) {
    where.append(el('p', { cls: 'error', text: 'Error: ' + error.message }));
  }

  for (const a of document.querySelectorAll('nav a')) {
    const target = a.getAttribute('href');
    if (
      (target === '/' && (page === 'events' || page === 'event' || page === 'aggregate')) ||
      (target !== '/' && location.pathname.startsWith(target))
    )
      a.classList.add('current');
  }

  // -- events ---------------------------------------------------------------------------------
  function eventRow(e, fresh) {
    return el(
      'tr',
      { cls: fresh ? 'new event' : 'event', 'data-id': String(e.id) },
      cell(link(eventHref(e.id), String(e.id)), 'num'),
      cell(time(e.created_at), 'mono when'),
      cell(e.type),
      cell(link(aggregateHref(e.aggregate_id), e.aggregate_id)),
      cell(String(e.version), 'num'),
      cell(
        JSON.stringify(e.body) +
          (Object.keys(e.metadata || {}).length ? '  metadata ' + JSON.stringify(e.metadata) : ''),
        'body'
      )
    );
  }
  function eventTable(events, id) {
    const head = el(
      'tr',
      {},
      el('th', { cls: 'num', text: 'id' }),
      el('th', { text: 'created at' }),
      el('th', { text: 'type' }),
      el('th', { text: 'aggregate' }),
      el('th', { cls: 'num', text: 'version' }),
      el('th', { text: 'body' })
    );
    const tbody = el('tbody', { id: id || '' });
    for (const e of events) tbody.append(eventRow(e, false));
    return el('table', { cls: 'events' }, el('thead', {}, head), tbody);
  }

  async function eventsPage() {
    const params = new URLSearchParams(location.search);
    const filters = new URLSearchParams();
    for (const key of ['type', 'aggregate_id', 'limit']) {
      for (const value of params.getAll(key)) if (value !== '') filters.append(key, value);
    }
    clear(main);
    main.append(el('h1', { text: 'Events' }));
    const form = el(
      'form',
      { cls: 'filters', method: 'get', action: '/' },
      el(
        'label',
        {},
        'type',
        el('input', { name: 'type', id: 'filter-type', value: params.get('type') || '' })
      ),
      el(
        'label',
        {},
        'aggregate id',
        el('input', {
          name: 'aggregate_id',
          id: 'filter-aggregate',
          value: params.get('aggregate_id') || ''
        })
      ),
      el('button', { type: 'submit', id: 'filter-apply' }, 'Filter'),
      link('/', 'Clear')
    );
    main.append(form);
    const status = el('p', { cls: 'live', id: 'live' });
    main.append(status);
    const query = new URLSearchParams(filters);
    if (params.get('before')) query.set('before', params.get('before'));
    if (params.get('after')) query.set('after', params.get('after'));
    let data;
    try {
      data = await api('/api/events?' + query);
    } catch (e) {
      failure(main, e);
      return;
    }
    const table = eventTable(data.events, 'event-rows');
    if (!data.events.length)
      main.append(el('p', { cls: 'note', id: 'no-events', text: 'No events.' }));
    main.append(table);
    const pager = el('div', { cls: 'pager' });
    function pageLink(key, value, text, id) {
      const q = new URLSearchParams(filters);
      if (key) q.set(key, value);
      return el('a', { href: '/?' + q, id: id, text: text });
    }
    const head = !params.get('before') && !params.get('after');
    if (!head) pager.append(pageLink(null, null, '« Newest', 'page-newest'));
    if (data.newer !== null) pager.append(pageLink('after', data.newer, '‹ Newer', 'page-newer'));
    if (data.older !== null) pager.append(pageLink('before', data.older, 'Older ›', 'page-older'));
    main.append(pager);
    if (!head) {
      status.textContent = 'An older page: new events show on the newest page.';
      return;
    }
    // Live: ask for the events after the newest shown, and put them on top.
    let newest = data.events.length
      ? data.events[0].id
      : filters.has('type') || filters.has('aggregate_id')
        ? 0
        : data.latest_event_id;
    const rows = document.getElementById('event-rows');
    const most = Math.max(Number(filters.get('limit')) || 50, 50) * 4;
    async function poll() {
      try {
        const q = new URLSearchParams(filters);
        q.set('after', newest);
        const fresh = await api('/api/events?' + q);
        for (const e of fresh.events.slice().reverse()) {
          rows.insertBefore(eventRow(e, true), rows.firstChild);
          newest = Math.max(newest, e.id);
        }
        if (fresh.events.length) {
          const none = document.getElementById('no-events');
          if (none) none.remove();
        }
        while (rows.children.length > most) rows.removeChild(rows.lastChild);
        status.className = 'live';
        status.textContent =
          'Live: new events appear on top (checked ' + new Date().toLocaleTimeString() + ')';
        setTimeout(poll, fresh.newer !== null ? 50 : 1000);
      } catch (e) {
        status.className = 'live stale';
        status.textContent = 'Not live: ' + e.message + ' (trying again)';
        setTimeout(poll, 3000);
      }
    }
    poll();
  }

  // -- one event ------------------------------------------------------------------------------
  function fields(pairs) {
    const dl = el('dl', { cls: 'fields' });
    for (const [name, value] of pairs) dl.append(el('dt', { text: name }), el('dd', {}, value));
    return dl;
  }
  function related(title, events, id, empty) {
    const box = el('section', { id: id }, el('h2', { text: title }));
    box.append(events.length ? eventTable(events) : el('p', { cls: 'note', text: empty }));
    return box;
  }
  async function eventPage() {
    const id = decodeURIComponent(location.pathname.split('/')[2] || '');
    clear(main);
    let data;
    try {
      data = await api('/api/events/' + encodeURIComponent(id));
    } catch (e) {
      failure(main, e);
      return;
    }
    const e = data.event;
    main.append(el('h1', { text: 'Event ' + e.id + ': ' + shown(e.type) }));
    const cause = data.caused_by.length
      ? link(eventHref(data.caused_by[0].id), 'event ' + data.caused_by[0].id)
      : e.causation_id || '';
    main.append(
      fields([
        ['id', String(e.id)],
        ['uuid', e.uuid],
        ['type', e.type],
        ['aggregate', link(aggregateHref(e.aggregate_id), e.aggregate_id)],
        ['version', String(e.version)],
        ['created at', time(e.created_at)],
        ['causation id', e.causation_id || ''],
        ['caused by', cause],
        ['correlation id', e.correlation_id || '']
      ])
    );
    main.append(
      el('h2', { text: 'Body' }),
      block('event-body', e.body)
    );
    main.append(
      el('h2', { text: 'Metadata' }),
      block('event-metadata', e.metadata)
    );
    const where = 'among events ' + data.searched.from + '–' + data.searched.to;
    main.append(related('Caused by', data.caused_by, 'caused-by', 'No cause ' + where + '.'));
    main.append(related('Caused', data.caused, 'caused', 'It caused no event ' + where + '.'));
    main.append(
      related('Same correlation', data.correlated, 'correlated', 'No other event ' + where + '.')
    );
  }

  // -- one aggregate --------------------------------------------------------------------------
  async function aggregatePage() {
    const raw = location.pathname.slice('/aggregates/'.length);
    const id = decodeURIComponent(raw);
    const params = new URLSearchParams(location.search);
    clear(main);
    let data;
    try {
      data = await api('/api/aggregates/' + encodeURIComponent(id) + '?' + params);
    } catch (e) {
      failure(main, e);
      return;
    }
    main.append(
      el(
        'h1',
        {},
        'Aggregate ',
        el('span', { cls: 'mono', id: 'aggregate-id', text: data.aggregate_id })
      )
    );
    main.append(
      el('p', { cls: 'note', text: 'Version ' + data.version + '; events in version order.' })
    );
    main.append(eventTable(data.events, 'aggregate-rows'));
    if (data.next_from_version !== null) {
      main.append(
        el(
          'div',
          { cls: 'pager' },
          link('?from_version=' + data.next_from_version, 'Later versions ›')
        )
      );
    }
    main.append(
      el(
        'p',
        {},
        link('/?aggregate_id=' + encodeURIComponent(data.aggregate_id), 'Newest first, live')
      )
    );
    main.append(el('h2', { text: 'Snapshots' }));
    if (!data.snapshots.length) main.append(el('p', { cls: 'note', text: 'No snapshot.' }));
    for (const s of data.snapshots) {
      main.append(
        el('p', {
          text:
            'snapshot of ' +
            shown(s.aggregate_type) +
            ' at version ' +
            s.version +
            ' (snapshot_version ' +
            s.snapshot_version +
            ', taken ' +
            time(s.created_at) +
            ')'
        })
      );
    }
  }

  // -- processors -----------------------------------------------------------------------------
  const KNOWN = [
    'name',
    'kind',
    'state',
    'position',
    'lag',
    'running',
    'owner',
    'standby',
    'last_error',
    'failing_event_id',
    'replay_horizon',
    'partitions',
    'parked'
  ];
  const history = {}; // name -> [[time, lag], ...] since the page opened
  let confirmBox = null;

  function ask(question, run) {
    if (confirmBox) confirmBox.remove();
    const result = el('div', {});
    confirmBox = el(
      'div',
      { cls: 'confirm', id: 'confirm' },
      el('p', { id: 'confirm-question', text: question }),
      el(
        'button',
        {
          cls: 'danger',
          id: 'confirm-yes',
          on: {
            click: async function () {
              confirmBox.remove();
              confirmBox = null;
              try {
                const done = await run();
                showResult(done.done, false);
              } catch (e) {
                showResult(e.message, true);
              }
              refresh();
            }
          }
        },
        'Confirm'
      ),
      ' ',
      el(
        'button',
        {
          id: 'confirm-no',
          on: {
            click: function () {
              confirmBox.remove();
              confirmBox = null;
            }
          }
        },
        'Cancel'
      )
    );
    document.getElementById('actions-area').append(confirmBox, result);
  }
  function showResult(text, bad) {
    const area = document.getElementById('action-result');
    area.className = bad ? 'result error' : 'result';
    area.textContent = shown(text);
  }
  function post(name, action, eventId) {
    return api('/api/processors/' + encodeURIComponent(name) + '/' + action, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        Accept: 'application/json',
        'X-Eventsourcery-Token': token
      },
      body: JSON.stringify(eventId === null || eventId === undefined ? {} : { event_id: eventId })
    });
  }
  function actionButtons(p, actions) {
    const td = el('td', { cls: 'actions' });
    if (actions.includes('reset')) {
      td.append(
        el(
          'button',
          {
            cls: 'danger',
            'data-action': 'reset',
            'data-name': p.name,
            on: {
              click: function () {
                ask(
                  'Reset processor ' +
                    shown(p.name) +
                    ' (position ' +
                    p.position +
                    ' -> 0)? Its next run processes ' +
                    'every event again; its tables are not dropped.',
                  function () {
                    return post(p.name, 'reset');
                  }
                );
              }
            }
          },
          'Reset'
        )
      );
    }
    if (
      actions.includes('skip') &&
      p.failing_event_id !== null &&
      p.failing_event_id !== undefined
    ) {
      td.append(
        ' ',
        el(
          'button',
          {
            cls: 'danger',
            'data-action': 'skip',
            'data-name': p.name,
            on: {
              click: function () {
                ask(
                  'Skip event ' +
                    p.failing_event_id +
                    ' for processor ' +
                    shown(p.name) +
                    '? It will never process it ' +
                    '(position ' +
                    (p.failing_event_id - 1) +
                    ' -> ' +
                    p.failing_event_id +
                    '). It is failing on it: ' +
                    shown(p.last_error),
                  function () {
                    return post(p.name, 'skip', p.failing_event_id);
                  }
                );
              }
            }
          },
          'Skip event ' + p.failing_event_id
        )
      );
    }
    if (actions.includes('retry-parked') && p.parked) {
      td.append(
        ' ',
        el(
          'button',
          {
            'data-action': 'retry-parked',
            'data-name': p.name,
            on: {
              click: function () {
                ask(
                  'Retry the ' + p.parked + ' parked events of ' + shown(p.name) + '?',
                  function () {
                    return post(p.name, 'retry-parked');
                  }
                );
              }
            }
          },
          'Retry parked'
        )
      );
    }
    return td;
  }
  function headRow(names) {
    return el('tr', {}, ...names.map((name) => el('th', { text: name })));
  }
  function partitionsTable(parts) {
    const t = el(
      'table',
      { cls: 'partitions' },
      headRow(['partition', 'position', 'lag', 'owner', 'state'])
    );
    for (const q of parts) {
      t.append(
        el(
          'tr',
          {},
          cell(String(q.partition)),
          cell(String(q.position), 'num'),
          cell(String(q.lag), 'num'),
          cell(q.owner || ''),
          cell(q.state || '', 'state-' + shown(q.state || ''))
        )
      );
    }
    return t;
  }
  async function parkedList(p, actions, into) {
    let data;
    try {
      data = await api('/api/processors/' + encodeURIComponent(p.name) + '/parked');
    } catch (e) {
      return;
    }
    if (!data.parked.length) return;
    const t = el(
      'table',
      { cls: 'parked' },
      headRow(['event', 'aggregate', 'attempts', 'behind', 'error', ''])
    );
    for (const q of data.parked) {
      const drop = actions.includes('drop-parked')
        ? el(
            'button',
            {
              cls: 'danger',
              'data-action': 'drop-parked',
              on: {
                click: function () {
                  ask(
                    'Drop parked event ' +
                      q.event_id +
                      ' of ' +
                      shown(p.name) +
                      '? It will not be processed; the events ' +
                      'parked behind it are retried.',
                    function () {
                      return post(p.name, 'drop-parked', q.event_id);
                    }
                  );
                }
              }
            },
            'Drop'
          )
        : '';
      const retry = actions.includes('retry-parked')
        ? el(
            'button',
            {
              'data-action': 'retry-parked-one',
              on: {
                click: function () {
                  ask(
                    'Retry parked event ' + q.event_id + ' of ' + shown(p.name) + '?',
                    function () {
                      return post(p.name, 'retry-parked', q.event_id);
                    }
                  );
                }
              }
            },
            'Retry'
          )
        : '';
      t.append(
        el(
          'tr',
          {},
          cell(link(eventHref(q.event_id), String(q.event_id))),
          cell(link(aggregateHref(q.aggregate_id), q.aggregate_id)),
          cell(String(q.attempts), 'num'),
          cell(q.behind === null || q.behind === undefined ? '' : String(q.behind)),
          cell(q.error || ''),
          el('td', {}, retry, ' ', drop)
        )
      );
    }
    into.append(el('div', {}, el('strong', { text: 'Parked events of ' + shown(p.name) })), t);
  }

  function drawChart(svg, names) {
    clear(svg);
    const ns = 'http://www.w3.org/2000/svg';
    const width = 800,
      height = 200,
      left = 50,
      bottom = 20;
    let start = Infinity,
      end = -Infinity,
      most = 1;
    for (const name of names)
      for (const [t, lag] of history[name]) {
        start = Math.min(start, t);
        end = Math.max(end, t);
        most = Math.max(most, lag);
      }
    if (end <= start) end = start + 1;
    function line(x1, y1, x2, y2, color) {
      const l = document.createElementNS(ns, 'line');
      for (const [k, v] of Object.entries({ x1: x1, y1: y1, x2: x2, y2: y2, stroke: color }))
        l.setAttribute(k, v);
      svg.append(l);
    }
    function label(x, y, text) {
      const t = document.createElementNS(ns, 'text');
      t.setAttribute('x', x);
      t.setAttribute('y', y);
      t.setAttribute('font-size', '11');
      t.setAttribute('fill', '#5b6475');
      t.textContent = text;
      svg.append(t);
    }
    line(left, 5, left, height - bottom, '#d9dde5');
    line(left, height - bottom, width - 5, height - bottom, '#d9dde5');
    label(4, 14, String(most));
    label(4, height - bottom, '0');
    label(
      left,
      height - 4,
      'lag (events) over the ' + Math.round((end - start) / 1000) + ' s this page has been open'
    );
    names.forEach(function (name, i) {
      const points = history[name].map(function ([t, lag]) {
        const x = left + ((t - start) / (end - start)) * (width - left - 10);
        const y = height - bottom - (lag / most) * (height - bottom - 10);
        return x.toFixed(1) + ',' + y.toFixed(1);
      });
      const poly = document.createElementNS(ns, 'polyline');
      poly.setAttribute('points', points.join(' '));
      poly.setAttribute('fill', 'none');
      poly.setAttribute('stroke', COLORS[i % COLORS.length]);
      poly.setAttribute('stroke-width', '2');
      poly.setAttribute('data-name', name);
      svg.append(poly);
    });
  }

  let refresh = function () {};
  let shownSignature = null;
  async function processorsPage() {
    clear(main);
    main.append(
      el('h1', { text: 'Processors' }),
      el('p', { cls: 'live', id: 'live' }),
      el('div', { id: 'actions-area' }, el('div', { id: 'action-result' })),
      el('div', { id: 'processors' }),
      el('h2', { text: 'Lag' }),
      el('div', { cls: 'legend', id: 'legend' })
    );
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 800 200');
    svg.setAttribute('width', '800');
    svg.setAttribute('height', '200');
    svg.setAttribute('class', 'chart');
    svg.setAttribute('id', 'lag-chart');
    main.append(svg);
    const status = document.getElementById('live');
    let timer = null;
    refresh = async function () {
      clearTimeout(timer);
      let data;
      try {
        data = await api('/api/processors');
      } catch (e) {
        status.className = 'live stale';
        status.textContent = 'Not live: ' + e.message + ' (trying again)';
        timer = setTimeout(refresh, 3000);
        return;
      }
      const now = Date.now();
      for (const p of data.processors) {
        (history[p.name] = history[p.name] || []).push([now, p.lag]);
        if (history[p.name].length > 3600) history[p.name].shift();
      }
      const names = data.processors.map(function (p) {
        return p.name;
      });
      drawChart(svg, names);
      status.className = 'live';
      status.textContent =
        'Live: refreshed every 2 s (latest event ' +
        data.latest_event_id +
        ', ' +
        new Date().toLocaleTimeString() +
        ')';
      timer = setTimeout(refresh, 2000);
      const signature = JSON.stringify([data.processors, data.actions]);
      if (signature === shownSignature) return; // the table stays as it is (and its buttons)
      shownSignature = signature;
      const box = document.getElementById('processors');
      const rows = el('tbody', {});
      const head = [
        'name',
        'kind',
        'state',
        'position',
        'lag',
        'running',
        'owner',
        'partitions',
        'parked',
        'last error'
      ];
      const table = el(
        'table',
        { id: 'processor-table' },
        el(
          'thead',
          {},
          el(
            'tr',
            {},
            ...head.map(function (h) {
              return el('th', { text: h });
            }),
            data.actions.length ? el('th', { text: 'actions' }) : null
          )
        ),
        rows
      );
      const parkedBoxes = el('div', { id: 'parked' });
      for (const p of data.processors) {
        const extra = Object.keys(p).filter(function (k) {
          return !KNOWN.includes(k);
        });
        const error = p.last_error
          ? el(
              'div',
              {},
              p.failing_event_id !== null && p.failing_event_id !== undefined
                ? el(
                    'span',
                    {},
                    'at ',
                    link(eventHref(p.failing_event_id), 'event ' + p.failing_event_id),
                    ': '
                  )
                : null,
              el('span', { cls: 'error mono', text: p.last_error })
            )
          : '';
        rows.append(
          el(
            'tr',
            { 'data-name': p.name, cls: 'processor' },
            cell(el('strong', { text: p.name })),
            cell(p.kind || ''),
            cell(p.state, 'state-' + shown(p.state)),
            cell(String(p.position), 'num'),
            cell(String(p.lag), 'num'),
            cell(p.running ? 'yes' : 'no'),
            cell(
              (p.owner || '') + (p.standby ? ' (standby: ' + shown(p.standby) + ')' : ''),
              'mono'
            ),
            cell(
              Array.isArray(p.partitions) && p.partitions.length
                ? partitionsTable(p.partitions)
                : ''
            ),
            cell(p.parked === undefined || p.parked === null ? '' : String(p.parked), 'num'),
            el(
              'td',
              {},
              error,
              extra.length
                ? el('div', {
                    cls: 'mono note',
                    text: extra
                      .map(function (k) {
                        return k + ': ' + JSON.stringify(p[k]);
                      })
                      .join('; ')
                  })
                : null
            ),
            data.actions.length ? actionButtons(p, data.actions) : null
          )
        );
        if (p.parked) parkedList(p, data.actions, parkedBoxes);
      }
      clear(box);
      if (!data.processors.length)
        box.append(el('p', { cls: 'note', text: 'No processor has run against this store.' }));
      else box.append(table, parkedBoxes);
      const legend = document.getElementById('legend');
      clear(legend);
      names.forEach(function (name, i) {
        const swatch = el('i', {});
        swatch.style.background = COLORS[i % COLORS.length];
        legend.append(el('span', {}, swatch, name));
      });
    };
    refresh();
  }

  // -- statistics -----------------------------------------------------------------------------
  async function statsPage() {
    clear(main);
    main.append(el('h1', { text: 'Statistics' }));
    let data;
    try {
      data = await api('/api/stats');
    } catch (e) {
      failure(main, e);
      return;
    }
    const rows = [
      ['store', data.store],
      ['events', Number(data.events).toLocaleString()],
      ['aggregates', Number(data.aggregates).toLocaleString()],
      ['first event', time(data.first_created_at) || '-'],
      ['last event', time(data.last_created_at) || '-']
    ];
    if ('file_size' in data) {
      rows.push([
        'file size',
        Number(data.file_size).toLocaleString() +
          ' bytes (+ ' +
          Number(data.wal_size).toLocaleString() +
          ' bytes of WAL)'
      ]);
    }
    main.append(fields(rows));
    main.append(el('h2', { text: 'Events by type' }));
    const t = el(
      'table',
      { id: 'types' },
      el('tr', {}, el('th', { text: 'type' }), el('th', { cls: 'num', text: 'events' }))
    );
    for (const [name, count] of Object.entries(data.types)) {
      t.append(
        el(
          'tr',
          {},
          cell(link('/?type=' + encodeURIComponent(name), name)),
          cell(Number(count).toLocaleString(), 'num')
        )
      );
    }
    main.append(t);
  }

  const pages = {
    events: eventsPage,
    event: eventPage,
    aggregate: aggregatePage,
    processors: processorsPage,
    stats: statsPage
  };
  (pages[page] || eventsPage)();
})();
"""

_ASSETS = {
    "/static/app.js": ("text/javascript; charset=utf-8", _JS.encode()),
    "/static/app.css": ("text/css; charset=utf-8", _CSS.encode()),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: BrowserServer
    server_version = "eventsourcery-browser"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # no line per request: a request's path could drive the terminal

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(
            status, "application/json; charset=utf-8", json.dumps(value, default=str).encode()
        )

    def _host_allowed(self) -> bool:
        """Bound to this machine only, the server answers only requests addressed to it: a page of
        another site whose name resolves here (DNS rebinding) gets nothing."""
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in _LOOPBACK | {self.server.bound_host.lower()}

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._answer(self._post)

    def _answer(self, route: Callable[[list[str], dict[str, list[str]]], None]) -> None:
        try:
            if not self._host_allowed():
                raise BrowserError(
                    403, "this server answers only requests addressed to this machine"
                )
            split = urllib.parse.urlsplit(self.path)
            segments = [urllib.parse.unquote(s) for s in split.path.split("/")[1:]]
            route(segments, urllib.parse.parse_qs(split.query))
        except BrowserError as exc:
            self._json(exc.status, {"error": str(exc)})
        except es.Error as exc:  # the store could not answer (damaged data, a lost connection, ...)
            self._json(500, {"error": es._cli_one_line(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            es.config.logger.exception(
                "event browser: %s %s", self.command, es._cli_safe(self.path)
            )
            self._json(500, {"error": es._cli_one_line(exc)})

    def _get(self, segments: list[str], query: dict[str, list[str]]) -> None:
        browser = self.server.browser
        path = "/" + "/".join(segments)
        if path in _ASSETS:
            content_type, body = _ASSETS[path]
            self._send(200, content_type, body)
            return
        if path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
            return
        if segments and segments[0] == "api":
            self._json(200, self._api(segments[1:], query))
            return
        segments = segments if segments[-1:] != [""] or len(segments) == 1 else segments[:-1]
        page = _PAGES.get(segments[0] if segments else "")
        if page == "event" and len(segments) == 1:
            page = "events"  # /events: the list
        elif page is None or len(segments) != (2 if page in ("event", "aggregate") else 1):
            raise BrowserError(404, f"no page {path!r}")
        token = browser.token if browser.allow_actions else ""
        shell = _SHELL.format(
            title=html.escape(f"eventsourcery · {browser.label}"),
            page=page,
            actions="yes" if browser.allow_actions else "no",
            token=html.escape(token),
            store=html.escape(browser.label),
        )
        self._send(200, "text/html; charset=utf-8", shell.encode())

    def _api(self, segments: list[str], query: dict[str, list[str]]) -> Any:
        browser = self.server.browser
        what = segments[0] if segments else ""
        if what == "events" and len(segments) == 1:
            return browser.events(
                _all(query, "type"),
                _one(query, "aggregate_id"),
                before=_number(query, "before"),
                after=_number(query, "after", minimum=0),
                limit=_number(query, "limit") or PAGE_SIZE,
            )
        if what == "events" and len(segments) == 2:
            return browser.event(_parse_int(segments[1], "event id"))
        if what == "aggregates" and len(segments) == 2 and segments[1]:
            return browser.aggregate(
                segments[1],
                from_version=_number(query, "from_version") or 1,
                limit=_number(query, "limit") or 200,
            )
        if what == "processors" and len(segments) == 1:
            return browser.processors()
        if what == "processors" and len(segments) == 3 and segments[2] == "parked":
            return browser.parked(segments[1])
        if what == "stats" and len(segments) == 1:
            return browser.stats()
        raise BrowserError(404, f"no API {'/'.join(['/api', *segments])!r}")

    def _post(self, segments: list[str], query: dict[str, list[str]]) -> None:
        browser = self.server.browser
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise BrowserError(413, f"a request body of at most {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        token = self.headers.get("X-Eventsourcery-Token") or body.get("token")
        browser.check_token(token if isinstance(token, str) else None)
        if len(segments) != 4 or segments[:2] != ["api", "processors"]:
            raise BrowserError(404, "actions are POST /api/processors/<name>/<action>")
        event_id = body.get("event_id")
        if event_id is not None and (
            isinstance(event_id, bool) or not isinstance(event_id, int) or event_id < 1
        ):
            raise BrowserError(400, f"event_id must be a positive integer, not {event_id!r}")
        self._json(200, browser.act(segments[2], segments[3], event_id))


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = [v for v in query.get(key, []) if v != ""]
    return values[-1] if values else None


def _all(query: dict[str, list[str]], key: str) -> list[str] | None:
    values = [v for v in query.get(key, []) if v != ""]
    return values or None


def _parse_int(text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum or len(text) > 20:
        raise BrowserError(400, f"{what} must be an integer of at least {minimum}, not {text!r}")
    return value


def _number(query: dict[str, list[str]], key: str, minimum: int = 1) -> int | None:
    text = _one(query, key)
    return None if text is None else _parse_int(text, key, minimum)


class BrowserServer(http.server.ThreadingHTTPServer):
    """The event browser's HTTP server: one thread per request, over one ``EventBrowser``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], browser: EventBrowser) -> None:
        self.browser = browser
        self.bound_host = address[0]
        self.loopback_only = address[0].lower() in _LOOPBACK or address[0].startswith("127.")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The address of the events page."""
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def make_server(
    store: es.EventStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8100,
    target: str | None = None,
    allow_actions: bool = False,
    open_for_actions: Callable[[], es.EventStore] | None = None,
    token: str | None = None,
) -> BrowserServer:
    """A server (not started: call ``serve_forever()``) for the event browser over ``store``."""
    browser = EventBrowser(
        store,
        target=target,
        allow_actions=allow_actions,
        open_for_actions=open_for_actions,
        token=token,
    )
    return BrowserServer((host, port), browser)


def serve_command(store: es.EventStore, args: argparse.Namespace) -> int:
    """``python -m eventsourcery STORE serve``: serve until Ctrl-C or SIGTERM; returns the exit
    status."""
    import signal

    try:
        server = make_server(
            store,
            host=args.host,
            port=args.port,
            target=args.store,
            allow_actions=args.allow_actions,
            open_for_actions=lambda: es._cli_open_store(args.store, read_only=False),
        )
    except OSError as exc:
        raise es._CLIError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from exc
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    what = "with actions (reset, skip, ...; each asks first)" if args.allow_actions else "read-only"
    sys.stderr.write(
        f"event browser of {es._cli_safe(_label(args.store))} on {server.url} ({what}); "
        "Ctrl-C to stop\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
