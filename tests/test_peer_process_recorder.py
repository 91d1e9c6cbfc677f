"""The `eventsourcing` package's own ProcessRecorder test cases, run against eventsourcery's
documented API.

A process recorder writes the events a processor emits together with its tracking position,
atomically: ``store.transaction()`` around ``sink`` calls (one per aggregate, each with its own
expected version) and the store tracker's ``processed_event``. The adapter below uses nothing else
(no private name), and the peer's test cases run unchanged on the memory, SQLite and Postgres
stores.
"""

from __future__ import annotations

import base64
import itertools
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

# the bench extra brings eventsourcing (and the pycryptodome
import eventsourcing.persistence as persistence
import eventsourcing.tests.persistence as peer_tests  # its test module imports); CI installs it

import eventsourcery as es


def _originator(aggregate_id: str) -> uuid.UUID | str:
    try:
        parsed = uuid.UUID(aggregate_id)
    except ValueError:
        return aggregate_id
    return parsed if str(parsed) == aggregate_id else aggregate_id


def _stored(event: es.Event) -> Any:
    return persistence.StoredEvent(originator_id=_originator(event.aggregate_id),
                                   originator_version=event.body["originator_version"],
                                   topic=event.type,
                                   state=base64.b64decode(event.body["state"]))


class EventsourceryProcessRecorder(persistence.ProcessRecorder):
    """eventsourcing's ProcessRecorder on an eventsourcery store, through its documented API
    only."""

    def __init__(self, store: es.EventStore) -> None:
        self.store = store

    def insert_events(self, stored_events: Sequence[Any], **kwargs: Any) -> Sequence[int] | None:
        tracking = kwargs.get("tracking")
        tracker = self.store.tracker()
        try:
            with self.store.transaction():
                if tracking is not None:
                    current = self.max_tracking_id(tracking.application_name)
                    if current is not None and tracking.notification_id <= current:
                        raise persistence.IntegrityError(f"{tracking} is not after {current}")
                ids: list[int] = []
                for originator_id, group in itertools.groupby(
                        stored_events, key=lambda e: e.originator_id):
                    events = list(group)
                    sunk = self.store.sink(
                        [es.Event(type=e.topic, aggregate_id=str(originator_id),
                                  body={"originator_version": e.originator_version,
                                        "state": base64.b64encode(e.state).decode()})
                         for e in events],
                        expected_version=max(events[0].originator_version - 1, 0))
                    ids += [e.id for e in sunk if e.id is not None]
                if tracking is not None:
                    tracker.processed_event(tracking.application_name, tracking.notification_id)
        except es.ConcurrencyError as exc:
            raise persistence.IntegrityError(str(exc)) from exc
        return ids

    def select_events(self, originator_id: uuid.UUID | str, *, gt: int | None = None, lte: int
                      | None = None, desc: bool = False, limit: int | None = None) -> Sequence[Any]:
        events = [_stored(e) for e in self.store.get_events_for_aggregate_id(str(originator_id))]
        events = [e for e in events if (gt is None or e.originator_version > gt)
                  and (lte is None or e.originator_version <= lte)]
        if desc:
            events.reverse()
        return events if limit is None else events[:limit]

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *,
                             inclusive_of_start: bool = True) -> Sequence[Any]:
        first = (start or 1) + (0 if inclusive_of_start or start is None else 1)
        events = self.store.get_next_from(first, list(topics) or None, limit=limit)
        return [persistence.Notification(id=e.id, **vars(_stored(e))) for e in events
                if stop is None or (e.id or 0) <= stop]

    def max_notification_id(self) -> int | None:
        return self.store.latest_event_id() or None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Any:
        raise NotImplementedError("not part of the ProcessRecorder test cases")

    def insert_tracking(self, tracking: Any) -> None:
        self.insert_events([], tracking=tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.store.tracker().positions().get(application_name)


class _OnEventsourcery(peer_tests.ProcessRecorderTestCase):
    """The peer's test cases, unchanged, each on a new empty store of ``kind`` (conftest's
    STORE_FACTORIES)."""

    kind = ""

    def create_recorder(self) -> Any:
        from tests.conftest import STORE_FACTORIES

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        store = STORE_FACTORIES[self.kind](pathlib.Path(folder) / "events.db")
        self.addCleanup(store.close)
        return EventsourceryProcessRecorder(store)


class TestProcessRecorderOnMemory(_OnEventsourcery):
    kind = "memory"


class TestProcessRecorderOnSQLite(_OnEventsourcery):
    kind = "sqlite"


class TestProcessRecorderOnPostgres(_OnEventsourcery):
    kind = "postgres"


del _OnEventsourcery  # not a test case of its own
