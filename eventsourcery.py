"""eventsourcery: event sourcing and CQRS in one file of standard-library Python.

You model your domain with events and aggregates; the library stores the
events, replays them, and feeds them to projectors and reactors::

    import eventsourcery as es

    class ChoreAdded(es.Event):            # every subclass is a frozen dataclass
        title: str

    class Chore(es.Aggregate):
        added = False

        @es.on(ChoreAdded)
        def _added(self, event):
            self.added = True

        def add(self, title):
            if self.added:
                raise ValueError("already added")
            self.apply_event(ChoreAdded, title=title)

    store = es.open_store("memory:")       # or "chores.db", or "postgresql://..."
    repo = es.Repository(store)
    chore = repo.load(Chore, "chore-1")
    chore.add("Buy milk")
    repo.save(chore)
    assert [e.title for e in store.get_next_from(1)] == ["Buy milk"]

The sections below follow that story, as a user meets it: errors, serialisation
and configuration, events, aggregates and the repository, the event store
contract, event processing (projectors, reactors, trackers, error handlers),
partitions shared by a processor's instances, the multiprocess runner, testing
helpers and asyncio. Then the machinery: the backend interface (rows, group
commit, Database and trackers in a database: what a store module such as
eventsourcery_pg builds on), the SQL store base, the memory store, the SQLite
backend, opening stores by URL, and last the command line (``python -m
eventsourcery STORE COMMAND``).
"""

from __future__ import annotations

import abc
import argparse
import concurrent.futures
import contextlib
import contextvars
import copy
import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import itertools
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import shlex
import signal
import sqlite3
import sys
import threading
import time
import types
import typing
import urllib.parse
import uuid as _uuid
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar, Union

if typing.TYPE_CHECKING:
    import asyncio  # imported where used (see the Asyncio section)

if __name__ == "__main__":
    # Run as ``python -m eventsourcery``, this file is the module __main__. Let a backend's
    # ``import eventsourcery`` find this module, not a second copy with classes of its own.
    sys.modules.setdefault("eventsourcery", sys.modules[__name__])

__version__ = "0.1.0"

#: What an application uses: events, aggregates, stores, processors, the runner, testing helpers,
#: configuration and errors.
__all__ = [
    # events and aggregates
    "Event", "event_class", "new_uuid", "AggregateErased", "ERASED_TYPE", "Aggregate", "Repository",
    "on",
    # stores, and the trackers that keep processor positions
    "EventStore", "MemoryEventStore", "SQLiteEventStore", "open_store",
    "Tracker", "TrackerRecord", "MemoryTracker", "SQLiteTracker",
    # processing and the runner
    "EventStreamProcessor", "TableProcessor", "Projector", "Reactor", "partition_of",
    "ProcessorStatus", "PartitionStatus", "processor_statuses", "skip_event", "ParkedEvent",
    "parked_events", "retry_parked", "drop_parked", "ErrorHandler", "NoRetry", "ConstantRetry",
    "ExponentialBackoffRetry", "run_processor", "ESPRunner",
    # asyncio
    "AsyncEventStore", "AsyncRepository",
    # testing helpers
    "given", "AggregateScenario", "given_events", "GivenEvents", "ProcessorScenario",
    "assert_events",
    # configuration
    "BodySerializer", "Config", "config", "configure",
    # errors
    "Error", "ConcurrencyError", "DuplicateEventError",
    "AtomicWriteToMultipleAggregatesNotSupported",
    "UnknownEventError", "EventProcessingError", "UndeclaredEventEmissionError",
    "MultipleCatchAllHandlersDefined", "UnableToLockProcessorError", "ProcessorFencedError",
    "InvalidEventError", "DuplicateEventTypeError", "StoreError", "CorruptEventError",
    "AggregateErasedError",
]

#: The backend interface: what a store module (such as eventsourcery_pg) builds on. Public, and
#: kept apart from ``__all__``: a backend needs these names of this module and no private one.
__backend__ = [
    # rows, their encoding and decoding, and the checks every store makes of its arguments
    "EventRow", "EVENT_COLUMNS", "Snapshot", "SNAPSHOT_COLUMNS", "encode_events", "stored_copies",
    "decode_rows", "type_names", "check_position", "check_limit", "check_text",
    "check_aggregate_id", "version_range", "batch_size", "check_pool_arguments", "MAX_POSITION",
    "MAX_BODY_DEPTH", "EventTypes", "StopSignal", "Stopper", "Converter", "LockHeld",
    # SQL databases and the store base they share
    "Database", "SQLiteDatabase", "DatabaseTracker", "SQLEventStore", "GroupCommit",
    "TRACKER_TABLE", "tracker_table_ddl", "SQLITE_SCHEMA_VERSION",
    # opening stores and databases by URL
    "StoreURL", "BACKENDS", "parse_store_url", "open_database",
]

_E = TypeVar("_E", bound="Event")
_A = TypeVar("_A", bound="Aggregate")
_S = TypeVar("_S", bound="EventStore")


# ---------------------------------------------------------------------------
# Errors: every error the library raises on purpose derives from Error.
# ---------------------------------------------------------------------------

class Error(Exception):
    """Base class of every eventsourcery error."""


class ConcurrencyError(Error):
    """A write's ``expected_version`` did not match the aggregate's version; nothing was written."""


class DuplicateEventError(ConcurrencyError):
    """An event with this uuid is already stored (the same event was written twice); nothing was
    written."""


class AtomicWriteToMultipleAggregatesNotSupported(Error):
    """``sink`` was given an empty list, or events for more than one aggregate."""


class UnknownEventError(Error):
    """An aggregate met an event type it has no handler for."""


class EventProcessingError(Error):
    """A processor's handler raised; the original exception is ``__cause__``."""

    def __init__(self, event: Event, processor: EventStreamProcessor, cause: BaseException) -> None:
        self.event = event
        self.processor = processor
        super().__init__(
            f"{processor.processor_name} failed on event {event.id} ({event.type}, uuid "
            f"{event.uuid}): {cause!r}"
        )
        self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        # The processor may hold connections and cannot cross a process boundary;
        # a pickled copy (e.g. in a log record sent elsewhere) keeps the message only.
        return (_rebuild_processing_error, (str(self),))


def _rebuild_processing_error(message: str) -> Error:
    return Error(message)


class UndeclaredEventEmissionError(Error):
    """A reactor emitted an event class missing from its ``emits_events``."""


class MultipleCatchAllHandlersDefined(Error):
    """A processor declared more than one ``@es.on()`` catch-all handler."""


class UnableToLockProcessorError(Error):
    """Another live process is already running a processor of this name against this store."""


class ProcessorFencedError(Error):
    """This processor instance no longer owns its name (another instance took it over): the position
    update it tried, and the writes committed with it, were rolled back, and it must stop."""


class InvalidEventError(Error, ValueError):
    """An event cannot be stored as given (empty aggregate id, bad type name, ...); nothing was
    written."""


class DuplicateEventTypeError(Error, TypeError):
    """Two different Event classes claim one type name (raised when the second class is created)."""


class StoreError(Error):
    """An event store cannot be opened or used: a missing, corrupt or foreign file, a bad URL,
    ..."""


class CorruptEventError(StoreError):
    """A stored event cannot be decoded; the message names its id, and ``event_id`` is that id where
    it is known (None for a damaged file). A processor that meets one stops there (see
    ``skip_event``)."""

    event_id: int | None = None


class AggregateErasedError(Error):
    """The aggregate was erased (``store.erase_aggregate``): it cannot be loaded or written
    again."""


# ---------------------------------------------------------------------------
# Serialisation: field values of annotated types to JSON-ready values and back.
# Encoders and decoders are compiled once per event class, never per event.
# ---------------------------------------------------------------------------

Converter = Callable[[Any], Any]


def _none_safe(fn: Converter) -> Converter:
    return lambda value: None if value is None else fn(value)


class BodySerializer:
    """Knows how to turn values of each annotated type into JSON and back.

    Built in: ``str int float bool None``, ``list/tuple/set/dict`` of those,
    ``datetime date time Decimal UUID Enum``, nested dataclasses and
    ``X | None``. Add more with :meth:`add`.
    """

    def __init__(self) -> None:
        self._custom: dict[Any, tuple[Converter, Converter]] = {}
        self._codecs: dict[type, _FieldCodec] = {}
        self._attributes: dict[tuple[type, str], tuple[Converter | None, Converter | None]] = {}

    def add(self, type_: type, to_json: Converter, from_json: Converter) -> BodySerializer:
        """Register ``to_json``/``from_json`` for fields annotated with ``type_``; returns self."""
        self._custom[type_] = (to_json, from_json)
        # codecs compiled before may have encoded this type by its runtime type
        self._codecs.clear()
        self._attributes.clear()
        return self

    def attribute_converters(self, cls: type,
                             name: str) -> tuple[Converter | None, Converter | None]:
        """``(encode, decode)`` of an attribute of a class (an aggregate's state, in snapshots): by
        the class's annotation of ``name``, else by the value's runtime type (cached)."""
        key = (cls, name)
        converters = self._attributes.get(key)
        if converters is None:
            try:
                hints = typing.get_type_hints(cls)
            except Exception:  # an unresolvable forward reference: encode by runtime type
                hints = {}
            annotation = hints.get(name)
            converters = self._attributes[key] = (
                (self.encode_any, None) if annotation is None else self.converters(annotation))
        return converters

    def codec(self, cls: type) -> _FieldCodec:
        """The compiled codec of an Event subclass's own fields (built on first use, then
        cached)."""
        codec = self._codecs.get(cls)
        if codec is None:
            names = [f.name for f in dataclasses.fields(cls) if f.name not in _ENVELOPE]
            codec = self._codecs[cls] = _FieldCodec(cls, self, names)
            codec.upcast = any("upcast" in k.__dict__ for k in cls.__mro__
                               if k is not Event and issubclass(k, Event))
        return codec

    def encode_any(self, value: Any) -> Any:
        """Encode a value whose annotation does not say how: by its runtime type."""
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.encode_any(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.encode_any(v) for k, v in value.items()}
        custom = self._custom.get(type(value))
        if custom:
            return custom[0](value)
        if isinstance(value, (_dt.date, _dt.time)):
            return value.isoformat()
        if isinstance(value, (decimal.Decimal, _uuid.UUID)):
            return str(value)
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: self.encode_any(getattr(value, f.name))
                    for f in dataclasses.fields(value)}
        raise TypeError(f"{type(value).__name__} is not JSON serialisable; "
                        "register it with es.config.body_serializer.add(type, to_json, from_json)")

    def converters(self, annotation: Any) -> tuple[Converter | None, Converter | None]:
        """Return ``(encode, decode)`` for a type annotation; ``None`` means "leave as is"."""
        if annotation in self._custom:
            return self._custom[annotation]
        if annotation in (str, int, bool, type(None), None, Any, object):
            return None, None
        if annotation is float:
            return None, lambda v: float(v) if isinstance(v, int) else v
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            return self.converters(args[0])
        if origin is typing.Literal:
            return None, None
        if origin is Union or origin is types.UnionType:
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:
                return self.converters(options[0])
            if all(self.converters(a) == (None, None) for a in options):
                return None, None
            return self.encode_any, None
        if isinstance(annotation, type):
            if issubclass(annotation, _dt.datetime):
                return _dt.datetime.isoformat, _dt.datetime.fromisoformat
            if issubclass(annotation, _dt.date):
                return _dt.date.isoformat, _dt.date.fromisoformat
            if issubclass(annotation, _dt.time):
                return _dt.time.isoformat, _dt.time.fromisoformat
            if issubclass(annotation, decimal.Decimal):
                return str, decimal.Decimal
            if issubclass(annotation, _uuid.UUID):
                return str, _uuid.UUID
            if issubclass(annotation, enum.Enum):
                return _enum_value, annotation
            if dataclasses.is_dataclass(annotation):
                return self._dataclass_converters(annotation)
        if (origin in (list, Sequence, tuple, set, frozenset)
            or annotation in (tuple, set, frozenset)):
            return self._collection_converters(origin or annotation, args)
        if origin in (dict, Mapping):
            key_enc, key_dec = self.converters(args[0]) if args else (None, None)
            val_enc, val_dec = self.converters(args[1]) if args else (None, None)
            enc = _mapping_converter(key_enc or str, val_enc)
            dec = _mapping_converter(key_dec, val_dec) if (key_dec or val_dec) else None
            return enc, dec
        if annotation in (list, dict):
            return self.encode_any, None
        return self.encode_any, None

    def _collection_converters(self, origin: Any,
                               args: tuple[Any, ...]) -> tuple[Converter, Converter | None]:
        make: Callable[[Iterable[Any]], Any] = {tuple: tuple, set: set,
                                                frozenset: frozenset}.get(origin, list)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            pairs = [self.converters(a) for a in args]
            encs = [_none_safe(e) if e else None for e, _ in pairs]
            decs = [_none_safe(d) if d else None for _, d in pairs]
            return (
                lambda v: [f(x) if f else x for f, x in zip(encs, v, strict=True)],
                lambda v: tuple(f(x) if f else x for f, x in zip(decs, v, strict=True)),
            )
        item_enc, item_dec = self.converters(args[0]) if args else (self.encode_any, None)
        enc = _none_safe(item_enc) if item_enc else None
        dec = _none_safe(item_dec) if item_dec else None
        if enc is None:
            encoder: Converter = (list if origin in (set, frozenset)
                                  else (lambda v: v if type(v) is list else list(v)))
        else:
            encoder = lambda v: [enc(x) for x in v]  # noqa: E731
        if dec is None:
            decoder: Converter | None = None if make is list else make
        else:
            decoder = lambda v: make(dec(x) for x in v)  # noqa: E731
        return encoder, decoder

    def _dataclass_converters(self, cls: type) -> tuple[Converter, Converter]:
        codec = _FieldCodec(cls, self, [f.name for f in dataclasses.fields(cls)])

        def decode(value: Any) -> Any:
            return cls(**codec.decode_fields(value))

        return codec.encode_fields, decode


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _mapping_converter(key: Converter | None, value: Converter | None) -> Converter:
    value = _none_safe(value) if value else None
    if key and value:
        return lambda d: {key(k): value(v) for k, v in d.items()}
    if key:
        return lambda d: {key(k): v for k, v in d.items()}
    return lambda d: {k: value(v) for k, v in d.items()}  # type: ignore[misc]


class _FieldCodec:
    """Encoder/decoder for a fixed list of dataclass fields, compiled from their annotations."""

    def __init__(self, cls: Any, serializer: BodySerializer, names: list[str]) -> None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an unresolvable forward reference: encode by runtime type
            hints = {}
        self.cls = cls
        self.names = tuple(names)
        self.name_set = frozenset(names)
        self.upcast = False
        self.defaults: dict[str, tuple[Any, bool]] = {
            f.name: (f.default_factory, True) if f.default_factory is not dataclasses.MISSING
                else (f.default, False)
            for f in dataclasses.fields(cls)
            if f.name in self.name_set and (f.default is not dataclasses.MISSING
                                            or f.default_factory is not dataclasses.MISSING)}
        self.encoders: list[tuple[str, Converter]] = []
        self.decoders: list[tuple[str, Converter]] = []
        for name in names:
            enc, dec = serializer.converters(hints.get(name, Any))
            if enc is not None:
                self.encoders.append((name, enc))
            if dec is not None:
                self.decoders.append((name, dec))

    def encode_fields(self, obj: Any) -> dict[str, Any]:
        values = (obj.__dict__ if hasattr(obj, "__dict__")
                  else {n: getattr(obj, n) for n in self.names})
        body = {name: values[name] for name in self.names}
        for name, enc in self.encoders:
            value = body[name]
            if value is not None:
                body[name] = enc(value)
        return body

    def fill(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The fields of a body that lacks some (their defaults apply) or has others (ignored)."""
        values = {}
        for name in self.names:
            if name in body:
                values[name] = body[name]
            elif name in self.defaults:
                default, is_factory = self.defaults[name]
                values[name] = default() if is_factory else default
            else:
                raise ValueError(f"stored body has no value for required field {name!r}")
        return values

    def decode_fields(self, body: Mapping[str, Any]) -> dict[str, Any]:
        values = {name: body[name] for name in self.names if name in body}
        for name, dec in self.decoders:
            value = values.get(name)
            if value is not None:
                values[name] = dec(value)
        return values


_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


# ---------------------------------------------------------------------------
# Configuration: one module-level object, changed with configure().
# ---------------------------------------------------------------------------

def _raise_unknown_event(event: Event, aggregate: Aggregate) -> None:
    raise UnknownEventError(f"{event.type} is unknown to {type(aggregate).__name__}")


def _ignore_error(exc: BaseException, processor_name: str) -> None:
    return None


@dataclasses.dataclass
class Config:
    """Library-wide settings; change them with :func:`configure`."""

    logger: logging.Logger = dataclasses.field(
        default_factory=lambda: logging.getLogger("eventsourcery"))
    on_unknown_event: Callable[[Event, Aggregate], None] = _raise_unknown_event
    on_event_processor_error: Callable[[BaseException, str], None] = _ignore_error
    on_event_processor_critical_error: Callable[[BaseException, str], None] = _ignore_error
    error_handler: Callable[[], ErrorHandler] | None = None  # None: ConstantRetry
    subscription_batch_size: int = 1000
    body_serializer: BodySerializer = dataclasses.field(default_factory=BodySerializer)


config = Config()


def configure(**options: Any) -> Config:
    """Set fields of ``es.config`` by name, e.g. ``configure(subscription_batch_size=500)``."""
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid options: "
                        f"{', '.join(sorted(names))}")
    for name, value in options.items():
        setattr(config, name, value)
    if "subscription_batch_size" in options:
        batch_size()
    return config


# ---------------------------------------------------------------------------
# Events: dataclass subclasses of Event, a registry of type names, and the
# conversion of events to stored rows and back.
# ---------------------------------------------------------------------------

#: The fields every event carries besides its own (its body).
_ENVELOPE = ("id", "uuid", "aggregate_id", "version", "created_at", "correlation_id",
             "causation_id", "metadata")
_registry: dict[str, type[Event]] = {}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def new_uuid() -> str:
    """A new time-ordered (version 7) UUID as a lower-case string.

    Its first 48 bits are the time in milliseconds, so the store's unique index
    on uuids grows at its end instead of at random places (about twice as fast).
    """
    h = ((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)).hex()
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class _Body:
    """``Event.body``: the event's own fields as a JSON-ready dict."""

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        return _codec(owner).encode_fields(obj)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, init=False, repr=False)
class Event:
    """Base class of domain events. Subclasses become frozen, keyword-only dataclasses.

    ``class TodoAdded(Event)`` has type name ``"todo_added"``;
    ``class TodoAdded(Event, type="todo.added")`` chooses another. A plain
    ``Event(type="x", body={...})`` is a generic event: stores return one for
    a stored type that has no class.
    """

    id: int | None = None
    uuid: str = dataclasses.field(default_factory=new_uuid)
    aggregate_id: str = ""
    version: int | None = None
    created_at: _dt.datetime | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    metadata: Mapping[str, str | int | float | bool | None] = dataclasses.field(
        default_factory=dict)

    #: the type name: each subclass's own (set when it is defined), or a generic event's (on the
    #: instance)
    type: ClassVar[Any] = None
    body: ClassVar[Any] = _Body()

    def __init__(self, *, type: str | None = None, body: Mapping[str, Any] | None = None,
                 **envelope: Any) -> None:
        unknown = set(envelope) - set(_ENVELOPE)
        if unknown:
            raise TypeError(f"Event() got unexpected field(s) {sorted(unknown)}; "
                            "define an Event subclass for typed fields, or pass body={...}")
        for field in dataclasses.fields(Event):
            if field.name in envelope:
                value = envelope[field.name]
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
            else:
                value = field.default
            object.__setattr__(self, field.name, value)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "body", dict(body or {}))
        object.__setattr__(self, "__dataclass_fields__", _GENERIC_FIELDS)
        self.__post_init__()

    def __post_init__(self) -> None:
        aggregate_id = self.__dict__["aggregate_id"]
        if isinstance(aggregate_id, _uuid.UUID):
            object.__setattr__(self, "aggregate_id", str(aggregate_id))
        metadata = self.__dict__["metadata"]
        if type(metadata) is not dict:  # any mapping (or None) is kept as a plain dict of its own
            object.__setattr__(self, "metadata", {} if metadata is None else dict(metadata))

    def __init_subclass__(cls, type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__annotations__", {})
        for reserved in ("type", "body", "metadata"):
            if reserved in own:
                raise TypeError(f"{cls.__qualname__}: '{reserved}' is reserved by es.Event; name "
                                "the field otherwise")
        if type is None:
            name = _snake_case(cls.__name__)
        elif not isinstance(type, str) or not type:
            raise TypeError(f"{cls.__qualname__}: type= must be a non-empty str, not {type!r}")
        else:
            name = type
        dataclasses.dataclass(frozen=True, kw_only=True, eq=False)(cls)
        existing = _registry.get(name)
        if (existing is not None and (existing.__module__, existing.__qualname__)
            != (cls.__module__, cls.__qualname__)):
            raise DuplicateEventTypeError(f"event type name {name!r} is claimed by both "
                                          f"{existing.__module__}.{existing.__qualname__} and "
                                          f"{cls.__module__}.{cls.__qualname__}; pass type='...' "
                                          "to one of them")
        cls.type = name  # a plain class attribute, not a descriptor: read for every event handled
        _registry[name] = cls

    @classmethod
    def upcast(cls, body: dict[str, Any]) -> dict[str, Any]:
        """Override to turn a stored body of an older shape into today's; applied on every read."""
        return body

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__

    # by identity of the event, so metadata (a dict) does not stop hashing
    def __hash__(self) -> int:
        return hash((self.type, self.uuid))

    def __repr__(self) -> str:
        return (f"Event(type={self.type!r}, id={self.id!r}, aggregate_id={self.aggregate_id!r}, "
                f"version={self.version!r}, uuid={self.uuid!r}, body={self.body!r})")


def _generic_fields() -> dict[str, dataclasses.Field[Any]]:
    # A generic event's type and body are per instance. Listing them in the
    # instance's own __dataclass_fields__ lets dataclasses.replace() keep them,
    # while dataclasses.fields() still lists only the metadata fields.
    fields = dict(Event.__dataclass_fields__)
    for name in ("type", "body"):
        field: dataclasses.Field[Any] = dataclasses.field()
        field.name = name
        fields[name] = field
    return fields


_GENERIC_FIELDS = _generic_fields()


class AggregateErased(Event, type="eventsourcery.aggregate_erased"):
    """Appended to an aggregate's stream by ``store.erase_aggregate``: its earlier events were
    erased.

    Projectors handle it to forget the aggregate in their read models too.
    """

    erased_events: int
    reason: str | None = None


#: The type name of the tombstone an erased event leaves: the row keeps its id, uuid, aggregate id,
#: version and time; its body and metadata are gone.
ERASED_TYPE = "eventsourcery.erased"


def event_class(type_name: str) -> type[Event] | None:
    """The Event subclass registered for a type name, or None."""
    return _registry.get(type_name)


def _codec(cls: type) -> _FieldCodec:
    """The compiled codec of an Event subclass's own fields, from the configured serializer."""
    return config.body_serializer.codec(cls)


def _with_fields(event: _E, **fields: Any) -> _E:
    """A copy of ``event`` with some envelope fields replaced (no validation, no __init__)."""
    copy = object.__new__(event.__class__)
    copy.__dict__.update(event.__dict__)
    copy.__dict__.update(fields)
    return copy


# ---------------------------------------------------------------------------
# Aggregates: state rebuilt from events; commands check, then apply_event().
# The Repository loads them from a store and saves their changes.
# ---------------------------------------------------------------------------

def on(*event_types: type[Event] | str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of these event classes (or type names).

    On an Aggregate it changes state; on a processor it handles events.
    ``@es.on()`` with no classes, on a processor, receives every event.
    """
    names = type_names(event_types) or ()

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__es_handles__ = names  # type: ignore[attr-defined]
        return fn

    return mark


def _collect_handlers(cls: type) -> list[tuple[tuple[str, ...], Callable[..., Any]]]:
    """Handlers marked with @on along the MRO, base classes first, each in definition order."""
    found: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in klass.__dict__.items():
            names = getattr(value, "__es_handles__", None)
            if names is not None:
                found.pop(attr, None)
                found[attr] = (names, value)
            elif attr in found:
                del found[attr]  # overridden by something that is not a handler
    return list(found.values())


def _ignore_event(aggregate: Aggregate, event: Event) -> None:
    """The replay handler of a type in ``Aggregate.ignores_events``: no change of state."""


class Aggregate:
    """Base class of aggregates: state rebuilt from events; commands call apply_event().

    ``Aggregate(id, events=())`` replays ``events``. ``version`` counts the
    events applied (history and new); ``changes`` holds the new ones.

    With ``snapshot_every = N`` the Repository keeps a snapshot of the state
    whenever a save takes the version to or past a multiple of N, and loads
    start from it. The state is ``snapshot_state()`` (by default the instance
    attributes, encoded like event bodies by their class annotations); a
    snapshot is used only if it decodes to exactly that state, so a loaded
    aggregate is indistinguishable from a full replay. Change
    ``snapshot_version`` when the meaning of the state changes: snapshots
    taken under another version are ignored.
    """

    _handlers: ClassVar[dict[str, list[Callable[..., Any]]]] = {}
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1
    ignores_events: ClassVar[tuple[type[Event] | str, ...]] = ()
    """Event classes (or type names) replay skips: e.g. those a reactor emits onto this aggregate's
    stream.

    An ignored event changes no state but counts in ``version``, so saving
    after it still writes at the right version. Any iterable works; it is
    stored as a tuple. A type with a handler here is handled, not ignored.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        every = cls.snapshot_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise TypeError(f"{cls.__qualname__}.snapshot_every must be a positive int or None, "
                            f"not {every!r}")
        if isinstance(cls.snapshot_version, bool) or not isinstance(cls.snapshot_version, int):
            raise TypeError(f"{cls.__qualname__}.snapshot_version must be an int, not "
                            f"{cls.snapshot_version!r}")
        handlers: dict[str, list[Callable[..., Any]]] = {}
        for names, fn in _collect_handlers(cls):
            for name in names:
                handlers.setdefault(name, []).append(fn)
        ignored = cls.__dict__.get("ignores_events", cls.ignores_events)
        if isinstance(ignored, (str, type)) or not isinstance(ignored, Iterable):
            raise TypeError(f"{cls.__qualname__}.ignores_events must be an iterable of Event "
                            f"classes or type names, not {ignored!r}")
        cls.ignores_events = tuple(ignored)
        for item in cls.ignores_events:
            if (not isinstance(item, str)
                and not (isinstance(item, type) and issubclass(item, Event))):
                raise TypeError(f"{cls.__qualname__}.ignores_events: {item!r} is not an Event "
                                "class or type name")
        for name in type_names(cls.ignores_events) or ():
            handlers.setdefault(name, [_ignore_event])
        cls._handlers = handlers

    def __init__(self, id: str | _uuid.UUID, events: Iterable[Event] = ()) -> None:
        self.id = str(id)
        self.version = 0
        self.changes: list[Event] = []
        for event in events:
            self._mutate(event)

    def _mutate(self, event: Event) -> None:
        handlers = self._handlers.get(event.type)
        if handlers:
            for handler in handlers:
                handler(self, event)
        else:
            config.on_unknown_event(event, self)
        self.version += 1

    def apply_event(self, event: type[_E] | _E, **fields: Any) -> _E:
        """Build (from a class and fields) or take an event, apply it to state and record it in
        changes."""
        if isinstance(event, type):
            instance = event(aggregate_id=self.id, **fields)
        else:
            if fields:
                raise TypeError("apply_event(instance) takes no fields; use "
                                "apply_event(EventClass, **fields)")
            if event.aggregate_id and event.aggregate_id != self.id:
                raise InvalidEventError(
                    f"event for aggregate {event.aggregate_id!r} applied to {self.id!r}")
            instance = event if event.aggregate_id else _with_fields(event, aggregate_id=self.id)
        self._mutate(instance)
        self.changes.append(instance)
        return instance

    def clear_changes(self) -> None:
        """Forget the unsaved events (the Repository calls this after saving them)."""
        self.changes = []

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot keeps: by default every instance attribute but ``id``, ``version``
        and ``changes``. Override it (and ``restore_snapshot``) to keep something else."""
        return {k: v for k, v in self.__dict__.items() if k not in ("id", "version", "changes")}

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        """Set the state ``snapshot_state()`` returned (on a new instance, before later events
        replay)."""
        self.__dict__.update(state)


def _aggregate_type(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode_state(cls: type, state: dict[str, Any]) -> str:
    encoded = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"snapshot state keys must be str, not {name!r}")
        encode, _ = config.body_serializer.attribute_converters(cls, name)
        encoded[name] = encode(value) if encode is not None and value is not None else value
    return _json_encode(encoded)


def _decode_state(cls: type, text: str) -> dict[str, Any]:
    state = _parse_body(text)
    if type(state) is not dict:
        raise ValueError("a snapshot's state is not a JSON object")
    for name, value in state.items():
        _, decode = config.body_serializer.attribute_converters(cls, name)
        if decode is not None and value is not None:
            state[name] = decode(value)
    return state


class Repository:
    """Loads aggregates from an event store and saves their changes with optimistic concurrency;
    ``update`` runs a command on an aggregate, retrying it when another writer got in between."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def load(self, aggregate_class: type[_A], aggregate_id: str | _uuid.UUID) -> _A:
        """Replay one aggregate's events into a new instance of ``aggregate_class`` (from its latest
        snapshot on, when the class keeps snapshots and a usable one exists)."""
        if aggregate_class.snapshot_every:
            aggregate = self._load_from_snapshot(aggregate_class, aggregate_id)
            if aggregate is not None:
                return aggregate
        events = self.store.get_events_for_aggregate_id(aggregate_id)
        if events and isinstance(events[-1], AggregateErased):
            raise AggregateErasedError(f"aggregate {str(aggregate_id)!r} was erased "
                                       f"({events[-1].created_at})")
        return aggregate_class(aggregate_id, events)

    def _load_from_snapshot(self, aggregate_class: type[_A],
                            aggregate_id: str | _uuid.UUID) -> _A | None:
        """The aggregate from its snapshot and the events after it; None when there is no usable
        snapshot."""
        kind = _aggregate_type(aggregate_class)
        snapshot = next((s for s in self.store.snapshots(aggregate_id) if s.aggregate_type == kind),
                        None)
        if snapshot is None or snapshot.snapshot_version != aggregate_class.snapshot_version:
            return None
        events = self.store.get_events_for_aggregate_id(aggregate_id, from_version=snapshot.version)
        if (not events or events[0].version != snapshot.version
            or events[0].uuid != snapshot.last_event_uuid):
            return None  # the history the snapshot was taken of is not there any more
        if isinstance(events[-1], AggregateErased):
            return None
        try:
            aggregate = aggregate_class(aggregate_id)
            aggregate.restore_snapshot(_decode_state(aggregate_class, snapshot.state))
        except Exception as exc:
            config.logger.warning("snapshot of %s %r at version %d cannot be used (%r); replaying "
                                  "its events", kind, str(aggregate_id), snapshot.version, exc)
            return None
        aggregate.version = snapshot.version
        for event in events[1:]:
            aggregate._mutate(event)
        return aggregate

    def _save_snapshot(self, aggregate: Aggregate, last_event_uuid: str) -> None:
        """Keep a snapshot of ``aggregate`` if its state survives encoding exactly; a cache, so a
        failure is logged, never raised."""
        cls = type(aggregate)
        kind = _aggregate_type(cls)
        try:
            state = aggregate.snapshot_state()
            text = _encode_state(cls, state)
            if _decode_state(cls, text) != state:
                raise ValueError("its state does not survive encoding unchanged (annotate the "
                                 "attributes, or override snapshot_state and restore_snapshot)")
            # a savepoint inside a caller's transaction: a failure leaves it usable
            with self.store.transaction():
                self.store.save_snapshot(Snapshot(aggregate.id, kind, aggregate.version,
                                                  cls.snapshot_version, last_event_uuid, text,
                                                  _dt.datetime.now(_dt.timezone.utc)))
        except Exception as exc:
            config.logger.warning("no snapshot of %s %r at version %d: %s", kind, aggregate.id,
                                  aggregate.version, exc)

    def save(self, *aggregates: Aggregate) -> list[Event]:
        """Sink each aggregate's changes with ``expected_version = version - len(changes)``; return
        them stored.

        Several aggregates are saved in one transaction: a concurrent write to
        any of them since its load raises ConcurrencyError naming it, and then
        nothing at all is written and no aggregate's changes are cleared.
        """
        if not aggregates:
            raise TypeError("save() needs at least one aggregate")
        pending = [a for a in aggregates if a.changes]
        if not pending:
            return []
        if len(pending) == 1:
            (aggregate,) = pending
            stored = self.store.sink(aggregate.changes,
                                     expected_version=aggregate.version - len(aggregate.changes))
        else:
            stored = []
            with self.store.transaction():
                for aggregate in pending:
                    changes = aggregate.changes
                    stored += self.store.sink(changes,
                                              expected_version=aggregate.version - len(changes))
        for aggregate in pending:
            every = type(aggregate).snapshot_every
            if (every and aggregate.version // every > (aggregate.version - len(aggregate.changes))
                // every):
                self._save_snapshot(aggregate, aggregate.changes[-1].uuid)
            aggregate.clear_changes()
        return stored

    def update(self, aggregate_class: type[_A], aggregate_id: str | _uuid.UUID,
               command: Callable[[_A], object], *, attempts: int = 5,
               backoff: float = 0.01) -> list[Event]:
        """Load the aggregate, run ``command(aggregate)``, save it, and start over on a conflict;
        returns what ``save`` returns (the stored events: the last one's id feeds ``wait_for``).

        ``repo.update(Order, "o-1", lambda order: order.ship("Paris"))``. When another writer
        stored an event on the aggregate between the load and the save (a second request, or a
        reactor emitting onto this aggregate's stream), the save raises ConcurrencyError and
        nothing is written; then the aggregate is loaded afresh and ``command`` runs again on what
        is now there, up to ``attempts`` times in all, sleeping a random time of up to
        ``backoff * attempt`` seconds between attempts. After the last attempt the
        ConcurrencyError is raised. Any other error, the command's own or the store's, is raised
        at once and never retried; so is a DuplicateEventError (an event uuid stored already:
        running the command again would not help).

        ``command`` may run several times, so it must only decide on the aggregate (apply
        events): no effects outside it. Loading uses the aggregate's snapshots like ``load``, and
        the save takes snapshots like ``save``.
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be a whole number of at least 1, not {attempts!r}")
        if (isinstance(backoff, bool) or not isinstance(backoff, (int, float))
                or not 0 <= backoff < math.inf):
            raise ValueError(f"backoff must be a number of seconds >= 0, not {backoff!r}")
        for attempt in range(1, attempts + 1):
            aggregate = self.load(aggregate_class, aggregate_id)
            command(aggregate)
            try:
                return self.save(aggregate)
            except DuplicateEventError:
                raise
            except ConcurrencyError:
                if attempt == attempts:
                    raise
                # random: writers that collided do not collide again in step
                time.sleep(random.uniform(0, backoff * attempt))
        raise AssertionError("unreachable")  # the loop returns or raises


# ---------------------------------------------------------------------------
# Event stores: the contract. MemoryEventStore and SQLiteEventStore below
# keep it, and so does eventsourcery_pg.PostgresEventStore.
# ---------------------------------------------------------------------------

StopSignal = Union[threading.Event, Callable[[], bool], None]
EventTypes = Union[Iterable[Union[str, type[Event]]], str, type[Event], None]


#: What ``EventStore.lock`` gives: whether the lock is still held (cheap: asked at every commit).
LockHeld = Callable[[], bool]


class EventStore(abc.ABC):
    """The contract every event store keeps (see each method).

    Guarantees, under concurrent writers in several processes: ids are 1, 2,
    3, ... in commit order, so a subscriber never skips or repeats an event;
    two writers to one aggregate with ``expected_version`` never both succeed.
    A store also owns the single-instance lock of each processor name
    (``lock``, ``is_running``) and, through ``tracker()``, the positions of
    the processors that keep them in its database.
    """

    #: Whether other processes see this store's events (a file or a server), so that processors
    #: may run in processes of their own (ESPRunner); False for a store in one process's memory.
    shared_between_processes: ClassVar[bool] = True

    @abc.abstractmethod
    def sink(self, event_or_events: Event | Sequence[Event],
             expected_version: int | None = None) -> list[Event]:
        """Append events of one aggregate atomically; return the stored copies.

        ``expected_version`` is the aggregate's version before the write
        (0: it must not exist yet); a mismatch raises ConcurrencyError and
        writes nothing. ``None`` appends unconditionally.
        """

    @abc.abstractmethod
    def get_next_from(self, id: int, event_types: EventTypes = None,
                      limit: int = 1000) -> list[Event]:
        """Events with ``id >= id`` in id order, optionally of these types only, at most
        ``limit``."""

    @abc.abstractmethod
    def latest_event_id(self, event_types: EventTypes = None) -> int:
        """The highest stored id (among these types); 0 when there is none."""

    @abc.abstractmethod
    def get_events_for_aggregate_id(self, aggregate_id: str | _uuid.UUID, *, from_version: int = 1,
                                    to_version: int | None = None) -> list[Event]:
        """One aggregate's events in version order, those with ``from_version <= version <=
        to_version`` (no upper bound when ``to_version`` is None)."""

    def aggregate_version(self, aggregate_id: str | _uuid.UUID) -> int:
        """The aggregate's highest stored version; 0 when it has none."""
        events = self.get_events_for_aggregate_id(aggregate_id)
        return events[-1].version or 0 if events else 0

    def each_by_range(self, from_id: int, to_id: int,
                      event_types: EventTypes = None) -> Iterator[Event]:
        """Events with ``from_id <= id <= to_id`` (of these types), read in pages, never past
        ``to_id``."""
        names = type_names(event_types)
        position = max(check_position("from_id", from_id), 1)
        to_id = check_position("to_id", to_id)
        while position <= to_id:
            page = self.get_next_from(position, names, limit=min(1000, to_id - position + 1))
            for event in page:
                if event.id > to_id:  # type: ignore[operator]
                    return
                yield event
            if not page:
                return
            position = page[-1].id + 1  # type: ignore[operator]

    def subscribe(self, from_id: int, event_types: EventTypes = None, *,
                  stop: StopSignal = None) -> Iterator[list[Event]]:
        """Yield non-empty batches from ``from_id`` on: stored events first, then new ones as any
        process commits them; return once ``stop`` (a threading.Event or a callable) is set."""
        names = type_names(event_types)
        stopper = Stopper(stop)
        position = max(check_position("from_id", from_id), 1)
        size = batch_size()
        while not stopper.is_set():
            token = self._change_token()
            batch = self.get_next_from(position, names, limit=size)
            if batch:
                yield batch
                position = batch[-1].id + 1  # type: ignore[operator]
            else:
                self._wait_for_change(token, stopper)

    def _change_token(self) -> Any:
        """Something that differs once another event may have been committed (for ``subscribe``)."""
        return None

    def _wait_for_change(self, token: Any, stopper: Stopper) -> None:
        """Block until the store may have changed since ``token`` was taken, or a short while
        passed."""
        stopper.sleep(0.05)

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which ``sink`` calls and the store tracker's writes commit together (or not
        at all)."""

    @abc.abstractmethod
    def tracker(self) -> Tracker:
        """The tracker that keeps processor positions in this store's own database."""

    @property
    def database(self) -> Database | None:
        """The SQL database this store keeps its events in, where a reactor without a ``db`` of its
        own keeps its tables; None for a store that has none (the memory store)."""
        return None

    @abc.abstractmethod
    def lock(self, name: str) -> contextlib.AbstractContextManager[LockHeld | None]:
        """Hold the single-instance lock of processor ``name`` on this store, or raise
        UnableToLockProcessorError.

        The lock is released when the context exits or its holder dies, even by ``kill -9``.
        The context gives a function that says whether the lock is still held (False once it
        was lost behind the holder's back: its session ended, its file was removed), or None
        where the store cannot tell.
        """

    @abc.abstractmethod
    def is_running(self, name: str) -> bool:
        """Whether a live process holds the single-instance lock of processor ``name`` on this
        store."""

    # keeping no snapshots is allowed
    def save_snapshot(self, snapshot: Snapshot) -> None:  # noqa: B027
        """Keep ``snapshot`` as the latest of its aggregate and type, unless a newer one is kept
        already.

        Snapshots are a cache, never events: subscribers never see them. A
        store that keeps none (this default) just makes every load replay.
        """

    def snapshots(self, aggregate_id: str | _uuid.UUID) -> list[Snapshot]:
        """The snapshots kept of one aggregate (one per aggregate type at most); none by default."""
        return []

    # see save_snapshot
    def delete_snapshots(self, aggregate_id: str | _uuid.UUID) -> None:  # noqa: B027
        """Forget every snapshot of one aggregate."""

    def erase_aggregate(self, aggregate_id: str | _uuid.UUID, *,
                        reason: str | None = None) -> AggregateErased | None:
        """Remove one aggregate's data for good (a person's right to erasure); return the
        AggregateErased event appended to its stream, or None when it has no events. Calling it
        again returns that event.

        In one transaction each of its events becomes a tombstone (type ``ERASED_TYPE``, empty body,
        no metadata; id, uuid, aggregate id, version and time stay, so no other id changes and no
        subscriber meets a gap), its snapshots are deleted and ``AggregateErased`` is appended; then
        ``scrub()`` removes the old contents from the database's free space where the backend can.
        The aggregate cannot be loaded afterwards (AggregateErasedError).
        """
        aggregate_id = check_aggregate_id(aggregate_id)
        with self.transaction():
            version = self.aggregate_version(aggregate_id)
            if version == 0:
                return None
            (last,) = self.get_events_for_aggregate_id(aggregate_id, from_version=version)
            if isinstance(last, AggregateErased):
                return last
            self.erase_events(aggregate_id, version)
            self.delete_snapshots(aggregate_id)
            erased = self.sink(AggregateErased(aggregate_id=aggregate_id, erased_events=version,
                                               reason=reason), expected_version=version)[0]
        self.scrub()
        assert isinstance(erased, AggregateErased)
        return erased

    def erase_events(self, aggregate_id: str, to_version: int) -> None:
        """Backend primitive of ``erase_aggregate``: turn the aggregate's events up to
        ``to_version`` into tombstones, in place, inside the open transaction."""
        raise NotImplementedError(f"{type(self).__name__} cannot erase events")

    def scrub(self) -> None:  # noqa: B027 - a store whose data leaves no copies has nothing to do
        """Overwrite or release what erased and deleted data left in the database's files, where the
        backend can (SQLite: secure_delete and a WAL checkpoint; Postgres: VACUUM)."""

    def stats(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Counts for people: ``events``, ``aggregates``, ``first_created_at`` and
        ``last_created_at`` (ISO text or None), ``types`` (type name -> count, most frequent first),
        and whatever else the backend knows (SQLite: ``file_size``, ``wal_size``). This default
        reads every event once, calling ``progress(done_id, latest_id)`` now and then."""
        latest = self.latest_event_id()
        counts: dict[str, int] = {}
        aggregates: set[str] = set()
        first_at = last_at = None
        for event in self.each_by_range(1, latest):
            counts[event.type] = counts.get(event.type, 0) + 1
            aggregates.add(event.aggregate_id)
            first_at = first_at or event.created_at
            last_at = event.created_at
            if progress is not None and (event.id or 0) % 1000 == 0:
                progress(event.id or 0, latest)
        return {"events": sum(counts.values()), "aggregates": len(aggregates),
                "first_created_at": first_at.isoformat() if first_at else None,
                "last_created_at": last_at.isoformat() if last_at else None,
                "types": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}

    def close(self) -> None:  # noqa: B027 - a store with no connections has nothing to release
        """Release connections; the store reconnects if used again."""

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class TrackerRecord:
    """Everything a tracker keeps about one processor name.

    ``generation`` counts the instances that have taken the name (the fencing
    token: a position update commits only with the current one);
    ``horizon`` is the position reached before the last ``reset()`` (events up
    to it are a replay); ``fresh`` is True until the first position is
    recorded (where ``start_from`` applies). ``state`` is what the owner last
    said (``running`` or ``stopped``); ``last_error`` and
    ``failing_event_id`` the failure it has not yet got past; ``owner`` and
    ``standby`` are ``pid@host`` of the instance that took the name last and
    of one waiting for it (``standby_at``: when it last tried, Unix time).
    ``kind`` is ``projector``, ``reactor`` or ``processor``; ``location`` is
    set on a registration in the store of a processor whose position lives
    in another database (the URL or path of that database). ``tables``: the
    tables of a processor with a ``schema`` (in the database this record
    lives in), which its ``reset()`` drops; None when it has not said.
    ``partitions``: how many partitions a processor's work is split into (its
    partitions' records are named ``name#0``, ``name#1``, ...); None for one.
    """

    name: str
    position: int = 0
    generation: int = 0
    horizon: int = 0
    fresh: bool = False
    state: str | None = None
    last_error: str | None = None
    failing_event_id: int | None = None
    owner: str | None = None
    standby: str | None = None
    standby_at: float | None = None
    kind: str | None = None
    location: str | None = None
    tables: tuple[str, ...] | None = None
    partitions: int | None = None


@dataclasses.dataclass(frozen=True)
class ParkedEvent:
    """An event a processor has set aside (see ``es.parked_events``): ``event_id``,
    ``aggregate_id``; ``error`` the last failure of its handler and ``attempts`` how often it
    failed (None and 0 for an event parked ``behind`` another, unhandled: ``behind`` is the id of
    the parked event of its aggregate it waits for, None for the one that failed); ``parked_at``
    when it was parked (UTC)."""

    event_id: int
    aggregate_id: str
    error: str | None
    attempts: int
    parked_at: _dt.datetime
    behind: int | None = None


class Tracker(abc.ABC):
    """Keeps each processor's last processed event id, by processor name.

    The abstract methods are all a tracker needs; the others (ownership,
    replay, state) have defaults that keep nothing, which ``DatabaseTracker``
    and ``MemoryTracker`` override.
    """

    #: True for a tracker that records who runs each name (``acquire``, ``report``, ``standby``), so
    #: that its ``record`` tells whether any instance does (``wait_for`` warns when none does).
    keeps_owners: ClassVar[bool] = False

    @abc.abstractmethod
    def setup(self, name: str) -> None:
        """Start tracking ``name`` at 0, keeping an existing position."""

    @abc.abstractmethod
    def last_processed_event_id(self, name: str) -> int:
        """The position of ``name``; 0 when it has none."""

    @abc.abstractmethod
    def processed_event(self, name: str, event_id: int) -> None:
        """Record that ``name`` has processed everything up to ``event_id``."""

    def reset(self, name: str) -> None:
        """Set the position of ``name`` back to 0 (keeping the position it had as its replay
        horizon)."""
        self.processed_event(name, 0)

    @abc.abstractmethod
    def positions(self) -> dict[str, int]:
        """Every tracked processor name with its position."""

    def records(self) -> list[TrackerRecord]:
        """Everything kept about every tracked name, by name."""
        return [TrackerRecord(name, position)
                for name, position in sorted(self.positions().items())]

    def start_fresh(self, names: Iterable[str], event_id: int) -> None:
        """Move each of ``names`` whose record is fresh (no position recorded since it was set up
        or reset) to ``event_id`` (where ``start_from = "end"`` starts), each only while it is
        fresh: a DatabaseTracker checks and moves in one statement."""
        for name in names:
            if self.record(name).fresh:
                self.processed_event(name, event_id)

    def set_partitions(self, name: str, partitions: int) -> None:
        """Record that the work of ``name`` is split into ``partitions`` (1: not split), each with a
        record of its own; an Error, changing nothing, when it has positions under another count.
        This tracker keeps no partitions: only 1."""
        if partitions != 1:
            raise Error(f"processor {name!r} has partitions = {partitions}, which its tracker "
                        f"({type(self).__name__}) cannot keep; use a DatabaseTracker")

    def partition_names(self, name: str) -> list[str]:
        """The names of the records that hold the positions of ``name``: its partitions', or
        ``name`` itself when its work is not split."""
        return _partition_names(name, self.record(name).partitions or 1)

    def record(self, name: str) -> TrackerRecord:
        """Everything kept about ``name`` (a fresh record when it is not tracked)."""
        return next((r for r in self.records() if r.name == name), TrackerRecord(name, fresh=True))

    def acquire(self, name: str, owner: str, kind: str | None = None) -> int:
        """Take ownership of ``name`` for a new instance (``owner``: ``pid@host``); returns its
        generation."""
        return 0

    def commit_position(self, name: str, event_id: int, generation: int | None) -> None:
        """Record the position as ``processed_event`` does, but only while ``generation`` (None:
        any) still owns ``name``, else raise ProcessorFencedError; clears a failure the position has
        got past."""
        self.processed_event(name, event_id)

    def skip_event(self, name: str, event_id: int) -> None:
        """Move the position of ``name`` from exactly ``event_id - 1`` to ``event_id``, so that
        event is never processed; ValueError (nothing changed) when the position is anywhere else.
        Clears a failure the position gets past, as ``commit_position`` does. This default reads,
        then writes; ``DatabaseTracker`` and ``MemoryTracker`` do it in one step (see
        ``es.skip_event``)."""
        _check_skip(self.record(name), event_id)
        self.processed_event(name, event_id)

    # by default nothing is kept
    def check_owner(self, name: str, generation: int | None) -> None:  # noqa: B027
        """Raise ProcessorFencedError unless ``generation`` (None: any) still owns ``name``."""

    # by default nothing is kept
    def report(self, name: str, generation: int | None, state: str,  # noqa: B027
               error: str | None = None, failing_event_id: int | None = None) -> None:
        """Record what the owning instance is doing (``running``/``stopped``) and the failure it is
        stuck at (not one at an event the position is past: it was skipped meanwhile)."""

    def standby(self, name: str, who: str) -> None:  # noqa: B027 - by default nothing is kept
        """Record that ``who`` (``pid@host``) is waiting to take ``name`` over."""

    # by default nothing is kept
    def register(self, name: str, kind: str, location: str) -> None:  # noqa: B027
        """Record that ``name`` runs against this tracker's store with its position kept at
        ``location``."""

    def declare_tables(self, name: str, tables: Sequence[str]) -> None:  # noqa: B027
        """Record the tables of ``name`` (beside this record) that its ``reset()`` drops; by default
        nothing is kept."""

    # -- parked events (see es.parked_events): kept by DatabaseTracker; by default there are none --

    def parked_events(self, name: str) -> list[ParkedEvent]:
        """The events ``name`` has parked, by id."""
        return []

    def park(self, name: str, event: Event, error: str | None, attempts: int,
             generation: int | None, behind: int | None = None) -> bool:
        """Park ``event``, in one transaction fenced by ``generation``: one that failed
        (``behind`` None) with its ``error``, moving the position to it; else behind the first
        parked event of its aggregate (``behind``: the one it was seen to wait for), to be retried
        with them if they are; False, and nothing parked, when none of its aggregate is parked
        any more."""
        raise Error(f"processor {name!r}: its tracker ({type(self).__name__}) keeps no parked "
                    "events, so it cannot park one (use a DatabaseTracker, or no park_after)")

    def retry_requested(self, name: str) -> list[int]:
        """The parked events of ``name`` it has been asked to retry, by id."""
        return []

    def request_retry(self, name: str, event_id: int | None = None) -> list[int]:
        """Ask ``name`` to retry its parked events (``event_id``: that one with those behind it);
        returns their ids."""
        raise ValueError(f"processor {name!r} has no parked events")

    def unpark(self, name: str, event_id: int, generation: int | None,  # noqa: B027 - none kept
               error: str | None = None) -> None:
        """After a retry, fenced by ``generation``: forget parked ``event_id`` (it was handled),
        or, with ``error``, keep it with that error, the rest of its aggregate behind it."""

    def drop_parked(self, name: str, event_id: int) -> None:
        """Forget parked ``event_id`` for good; the events parked behind it are to be retried."""
        raise ValueError(f"processor {name!r} has no parked event {event_id}")


def _partition_names(name: str, partitions: int) -> list[str]:
    """The tracker names of the partitions of processor ``name`` (``name`` itself for 1)."""
    return [name] if partitions == 1 else [f"{name}#{p}" for p in range(partitions)]


class _LockLost(ProcessorFencedError):
    """The instance lost the store's lock of its name, and no other has taken the name yet."""


def _fenced(name: str, generation: int | None) -> ProcessorFencedError:
    return ProcessorFencedError(f"processor {name!r}: another instance has taken over (this "
                                f"instance's generation {generation} is no longer current); its "
                                "last writes were rolled back")


def _skip_id(event_id: object) -> int:
    """``event_id`` checked as the id of an event to skip (TypeError unless an int, ValueError below
    1)."""
    if check_position("event_id", event_id) != event_id or event_id < 1:
        raise ValueError(f"cannot skip event {event_id!r}: event ids start at 1")
    return event_id


def _check_skip(record: TrackerRecord, event_id: int) -> None:
    """Raise ValueError unless a skip of ``event_id`` may move ``record``'s position: only the next
    event to process (the position is ``event_id - 1``) can be skipped."""
    event_id = _skip_id(event_id)
    position = record.position
    if position >= event_id:
        raise ValueError(f"cannot skip event {event_id} of processor {record.name!r}: its position "
                         f"is {position}, so it is past that event already; nothing changed")
    if position != event_id - 1:
        raise ValueError(f"cannot skip event {event_id} of processor {record.name!r}: its position "
                         f"is {position}, so the next event it processes is {position + 1}; only "
                         "that next event can be skipped (the position moves by one event); "
                         "nothing changed")


# ---------------------------------------------------------------------------
# Event processing: processors (projectors, reactors) handle events in
# batches and keep their position in a tracker; error handlers decide what
# happens when a handler fails.
# ---------------------------------------------------------------------------

def partition_of(aggregate_id: str | _uuid.UUID, partitions: int) -> int:
    """The partition (0 to ``partitions - 1``) the events of ``aggregate_id`` belong to, in a
    processor whose work is split into ``partitions``: ``zlib.crc32`` of the id's UTF-8 bytes,
    modulo ``partitions`` (the same in every process and on every host)."""
    _check_partitions("partitions", partitions)
    if isinstance(aggregate_id, _uuid.UUID):
        aggregate_id = str(aggregate_id)
    if not isinstance(aggregate_id, str):
        raise TypeError(f"aggregate_id must be a str or UUID, not {type(aggregate_id).__name__} "
                        f"({aggregate_id!r})")
    return zlib.crc32(check_text("aggregate_id", aggregate_id).encode("utf-8")) % partitions


def _partition(event: Event, partitions: int) -> int:
    """``partition_of`` for a stored event (its aggregate id checked when it was stored)."""
    return zlib.crc32(event.aggregate_id.encode("utf-8")) % partitions


def _check_partitions(what: str, partitions: object) -> int:
    """A partition count checked: TypeError unless an int, ValueError below 1."""
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise TypeError(f"{what} must be an int, not {type(partitions).__name__} "
                        f"({partitions!r})")
    if partitions < 1:
        raise ValueError(f"{what} must be at least 1, not {partitions}")
    return partitions


def _failing_event_id(error: BaseException) -> int | None:
    """The id of the event a processor is stuck at after ``error``: the one whose handler failed, or
    a damaged one its reader met; None for other errors."""
    if isinstance(error, EventProcessingError):
        return error.event.id
    if isinstance(error, CorruptEventError):
        return error.event_id
    return None


def _not_running(tracker: Tracker, name: str) -> str | None:
    """Why no instance runs processor ``name``, as ``tracker`` records it; None when one does, or
    may (a tracker that keeps no owners, a standby about to take over, an owner on another host)."""
    if not tracker.keeps_owners:
        return None
    try:
        record = tracker.record(name)
    except Exception:  # noqa: BLE001 - only a warning hangs on it; the wait reads on
        return None
    if record.standby_at is not None and time.time() - record.standby_at < STANDBY_FRESHNESS:
        return None
    if record.state != "running":
        return "no instance runs it (it never ran here)" if record.owner is None else (
            f"no instance runs it (the last one, {record.owner}, stopped)")
    pid, _, host = (record.owner or "").partition("@")
    # (posix only: on Windows, os.kill(pid, 0) would send CTRL_C_EVENT)
    if os.name == "posix" and host == _instance_name().partition("@")[2] and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return f"no instance runs it (its owner {record.owner} is gone)"
        except OSError:  # alive, someone else's (PermissionError), or not to be told
            pass
    return None


class _Wait:
    """One wait for a processor's position (``wait_for`` and ``wait_for_async`` alike): whether
    it has been reached, how long to pause before reading it again, and the warning, once a wait,
    that no instance runs the processor."""

    def __init__(self, processor: EventStreamProcessor, event_id: int,
                 timeout: float | None) -> None:
        self.processor = processor
        self.event_id = check_position("event_id", event_id)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.interval = 0.002
        self.check_owner_at: float | None = time.monotonic()  # now, then each second till a warning

    def reached(self) -> bool:
        """Whether the position, as the processor's tracker keeps it, has reached the event."""
        return self.processor.last_processed_event_id >= self.event_id

    def pause(self) -> float | None:
        """Seconds to pause before reading again (growing to 50 ms); None once time is up."""
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        seconds = self.interval if left is None else min(self.interval, left)
        self.interval = min(self.interval * 2, 0.05)
        return seconds

    def owner_check_due(self) -> bool:
        """Whether to look (again) whether an instance runs the processor."""
        return self.check_owner_at is not None and time.monotonic() >= self.check_owner_at

    def check_owner(self) -> None:
        """Warn, once a wait, when the tracker records no instance that runs the processor."""
        self.check_owner_at = time.monotonic() + 1.0
        name = self.processor.processor_name
        tracker = self.processor.tracker
        reasons = [_not_running(tracker, each) for each in self.processor._tracked_names()]
        why = None if None in reasons else reasons[0]
        if why is not None:
            self.check_owner_at = None
            config.logger.warning("[%s] wait_for(%d): %s, so the wait will run out unless an "
                                  "instance starts", name, self.event_id, why)


class EventStreamProcessor:
    """Base class of processors: handlers marked with ``@es.on(...)`` receive events in id order.

    ``EventStreamProcessor(tracker=None)`` keeps its position in ``tracker``
    (in memory when None). ``subscribe_to(store, stop)`` takes the store's
    lock of its name (UnableToLockProcessorError if another live instance
    holds it), takes ownership of the name in the tracker (a new generation),
    resumes after the last processed event and handles batches until
    ``stop`` is set. Every position update commits only while this instance
    still owns the name (else ProcessorFencedError, and it stops).

    ``start_from`` (``"beginning"`` or ``"end"``) is where a run with no
    recorded position starts. After ``reset()`` the position reached before
    is the replay horizon: while events up to it are processed again,
    ``self.replaying`` is True.

    A processor stops at an event whose handler fails, or at a damaged event
    its reader cannot decode (CorruptEventError), with every event before it
    processed; ``es.skip_event`` moves it past that one event deliberately.

    ``partitions = N`` (default 1) splits the work by aggregate: an event
    belongs to partition ``es.partition_of(event.aggregate_id, N)``; each
    partition has a position of its own and is owned by one instance at a time
    (the store's lock of ``name#p``, fenced by its own generation). The
    instances that run the processor (in threads, processes or on other hosts)
    share the partitions: each takes at most ``ceil(N / k)`` of them once ``k``
    are live, and gives up the ones over that between batches. An instance
    handles its partitions on a thread each, one batch at a time (its handlers
    never run concurrently), on copies of the processor that share its
    attributes' values; in a handler ``self.processor_name`` is the
    partition's, ``name#p``.
    """

    processor_name: ClassVar[str] = "event_stream_processor"
    processes_event_types: ClassVar[tuple[str, ...] | None] = None
    start_from: ClassVar[str] = "beginning"
    #: How many partitions the work is split into, by aggregate (see the class docstring).
    partitions: ClassVar[int] = 1
    _partition: int | None = None  # on a copy running one partition: which
    _turn: threading.Lock | None = None  # on a copy: its instance's, taken for each batch
    _pages: _SharedPages | None = None  # the pages the partitions of one instance read
    _kind: ClassVar[str] = "processor"
    _dispatch: ClassVar[dict[str, tuple[Callable[..., Any], ...]]] = {}
    _catch_all: ClassVar[tuple[Callable[..., Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "processor_name" not in cls.__dict__:
            cls.processor_name = _snake_case(cls.__name__)
        if not isinstance(cls.processor_name, str) or set(cls.processor_name) & {"#", "@"}:
            raise ValueError(f"{cls.__qualname__}.processor_name must be a str without '#' or "
                             f"'@' (they name the partitions and instances of a processor: "
                             f"name#3, name@1), not {cls.processor_name!r}")
        if cls.start_from not in ("beginning", "end"):
            raise ValueError(f"{cls.__qualname__}.start_from must be 'beginning' or 'end', not "
                             f"{cls.start_from!r}")
        _check_partitions(f"{cls.__qualname__}.partitions", cls.partitions)
        dispatch: dict[str, list[Callable[..., Any]]] = {}
        catch_all: list[Callable[..., Any]] = []
        for names, fn in _collect_handlers(cls):
            if not names:
                if catch_all:
                    raise MultipleCatchAllHandlersDefined(
                        f"{cls.__qualname__} declares more than one @es.on() catch-all handler")
                catch_all.append(fn)
            for name in names:
                dispatch.setdefault(name, []).append(fn)
        cls._catch_all = tuple(catch_all)
        cls._dispatch = {name: tuple(fns) + cls._catch_all for name, fns in dispatch.items()}
        if "processes_event_types" not in cls.__dict__:
            cls.processes_event_types = None if catch_all or not dispatch else tuple(dispatch)

    def __init__(self, tracker: Tracker | None = None) -> None:
        self.tracker: Tracker = tracker if tracker is not None else MemoryTracker()
        self._current_event: Event | None = None
        self._generation: int | None = None  # this instance's ownership of its name, while it runs
        self._lock_held: LockHeld | None = None  # while it runs: whether it holds the store's lock
        self._horizon = 0  # the replay horizon, read when it starts and after reset()
        self._replaying = False
        self._stopper: Stopper | None = None  # while it runs: a long batch may stop between events
        # While it runs: each aggregate with parked events -> its first parked event.
        self._parked_aggregates: dict[str, int] = {}
        self._unparking = False  # while a parked event is retried: its commit unparks it
        self._retry_checked_at = 0.0  # when an idle instance last looked for retry requests

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.processor_name!r}>"

    @property
    def replaying(self) -> bool:
        """True while a handler runs for an event this processor had processed before its last
        ``reset()`` (guard outside effects with ``if not self.replaying``)."""
        return self._replaying

    def _handles(self, event: Event) -> bool:
        return bool(self._dispatch.get(event.type, self._catch_all)) and (
            self._partition is None or _partition(event, self.partitions) == self._partition)

    def process(self, event: Event) -> None:
        """Run this processor's handlers for one event; a handler's error is raised as
        EventProcessingError."""
        handlers = self._dispatch.get(event.type, self._catch_all)
        if not handlers or (self._partition is not None
                            and _partition(event, self.partitions) != self._partition):
            return
        if self._parked_aggregates and not self._unparking:
            first = self._parked_aggregates.get(event.aggregate_id)
            if first is not None:  # its aggregate waits behind a parked event: so does it
                if self.tracker.park(self.processor_name, event, None, 0, self._generation,
                                     behind=first):
                    return
                del self._parked_aggregates[event.aggregate_id]  # none left (dropped): handle it
        self._current_event = event
        self._replaying = (event.id or 0) <= self._horizon
        try:
            for handler in handlers:
                handler(self, event)
        except Exception as exc:
            raise EventProcessingError(event, self, exc) from exc
        finally:
            self._current_event = None
            self._replaying = False

    def _check_lock(self) -> None:
        """Raise ProcessorFencedError when this instance no longer holds the store's lock of its
        name (its lock session ended, its lock file was removed), so that it writes nothing more
        as its owner: _LockLost while no other instance has taken the name meanwhile (it may
        take it again), else the generation's fencing error."""
        if self._lock_held is not None and not self._lock_held():
            self.tracker.check_owner(self.processor_name, self._generation)
            raise _LockLost(
                f"processor {self.processor_name!r}: this instance lost the store's lock of its "
                "name (its lock session ended, or its lock file was removed); its last writes "
                "were rolled back")

    def _commit(self, event_id: int) -> None:
        """Record the position, fenced by this instance's lock and generation (inside the
        caller's transaction); while a parked event is retried, unpark it instead (the position is
        past it already)."""
        self._check_lock()
        if self._unparking:
            self.tracker.unpark(self.processor_name, event_id, self._generation)
            return
        self.tracker.commit_position(self.processor_name, event_id, self._generation)

    def process_batch(self, events: list[Event]) -> None:
        """Process a batch and record the position. The base class records it after the batch, or up
        to the last event processed when a handler fails (at-least-once for effects outside the
        tracker)."""
        done: Event | None = None
        try:
            for event in events:
                self.process(event)
                done = event
        finally:
            if done is not None:
                self._commit(done.id)  # type: ignore[arg-type]

    def _read(self, store: EventStore, from_id: int, types: tuple[str, ...] | None,
              limit: int) -> list[Event]:
        """A page of events to catch up on (shared by the partitions of one instance)."""
        if self._pages is not None:
            return self._pages.read(store, from_id, types, limit)
        return store.get_next_from(from_id, types, limit=limit)

    def _handle(self, events: list[Event]) -> bool:
        """``process_batch``, on its instance's turn (the partitions of one instance take turns);
        False, with nothing done, when told to stop while it waits for its turn."""
        turn = self._turn
        if turn is None:
            self.process_batch(events)
            return True
        while not turn.acquire(timeout=0.05):
            if self._stopper is not None and self._stopper.is_set():
                return False
        try:
            self.process_batch(events)
        finally:
            turn.release()
        return True

    def _advance(self, event_id: int) -> None:
        """Move the position to ``event_id`` over events this processor does not handle."""
        self._commit(event_id)

    def setup(self) -> None:
        """Prepare for processing (create tables, tracker row); keeps an existing position. An
        Error when ``partitions`` is not what the processor has positions for."""
        self.tracker.setup(self.processor_name)
        if self._partition is None:
            self.tracker.set_partitions(self.processor_name, self.partitions)

    def reset(self) -> None:
        """Forget the position, so the next run processes every event again (a replay, up to the
        position it had reached; with ``start_from = "end"`` the next run starts after the latest
        event instead)."""
        self.tracker.reset(self.processor_name)
        self._horizon = self.tracker.record(self.processor_name).horizon

    @property
    def last_processed_event_id(self) -> int:
        """The id of the last event this processor has processed (0 if none); split into
        partitions: the lowest of their positions."""
        return min(map(self.tracker.last_processed_event_id, self._tracked_names()))

    def _tracked_names(self) -> list[str]:
        """The tracker names of this processor's positions: its partitions', or its own."""
        if self._partition is not None:
            return [self.processor_name]
        return _partition_names(self.processor_name, self.partitions)

    def wait_for(self, event_id: int, timeout: float | None = None) -> bool:
        """Wait until this processor's position, as its tracker keeps it (whichever process runs
        it), has reached ``event_id``: True then, False once ``timeout`` seconds (None: no limit)
        have passed.

        False means the processor had not processed the event yet when the time was up: it is
        behind, or failing at an earlier event, or no instance runs it at all. In that last case
        (the tracker records no live owner, and no standby about to take over) a wait that has to
        wait logs a warning naming the processor, once per wait, through ``es.config.logger``.
        """
        wait = _Wait(self, event_id, timeout)
        while not wait.reached():
            seconds = wait.pause()
            if seconds is None:
                return False
            if wait.owner_check_due():
                wait.check_owner()
            time.sleep(seconds)
        return True

    async def wait_for_async(self, event_id: int, timeout: float | None = None) -> bool:
        """``wait_for`` as a coroutine: the position (and who runs the processor) is read on a
        worker thread (the loop's default executor) and the pauses between reads are the loop's,
        so the loop is never blocked; cancelling the awaiting task ends the wait."""
        import asyncio

        wait = _Wait(self, event_id, timeout)
        while not await asyncio.to_thread(wait.reached):
            seconds = wait.pause()
            if seconds is None:
                return False
            if wait.owner_check_due():
                await asyncio.to_thread(wait.check_owner)
            await asyncio.sleep(seconds)
        return True

    def subscribe_to(self, store: EventStore, stop: StopSignal = None) -> None:
        """Lock this processor name, set up, take ownership, then process batches from the last
        position until ``stop``. A handler's error is raised (after the events before it have
        committed)."""
        self._run(store, Stopper(stop), None)

    def _location(self, store: EventStore) -> str | None:
        """Where this processor's position lives when that is not in ``store`` (to register it
        there)."""
        tracker = self.tracker
        if not isinstance(tracker, DatabaseTracker) or tracker.database is store.database:
            return None
        location = tracker.database.location
        if store.database is not None and location == store.database.location:
            return None  # the store's own tracker table, opened through another Database object
        return location

    def _run(self, store: EventStore, stopper: Stopper, handler: ErrorHandler | None, *,
             standby: bool = True) -> None:
        """Take the name (the store's lock, setup, a new generation), then follow the stream until
        ``stopper``. The one retry loop: after an error, ``handler`` (None: raise it) reports it and
        says how long to wait before trying again, holding the name while it has it (a failing
        processor is ``failing``, not stopped), or whether to raise it. An instance that finds the
        name taken waits as a standby (unless ``standby`` is False: it raises); one that has lost
        it (ProcessorFencedError) raises. Split into partitions, it shares them with the other
        instances (_Partitions)."""
        if self.partitions > 1 and self._partition is None:
            _Partitions(self, store, stopper, handler).run()
            return
        log = config.logger
        name = self.processor_name
        held = contextlib.ExitStack()  # the store's lock of the name, and this instance's ownership
        stuck_at: int | None = None  # the event the last failure stopped at
        standby_logged = False
        with held:
            while True:
                try:
                    if self._generation is None:
                        # one instance per name and store
                        self._lock_held = held.enter_context(store.lock(name))
                        held.callback(self._release)
                        self._take(store, stopper)
                        standby_logged = False
                    else:  # another instance may have taken over meanwhile: nothing to commit
                        self.tracker.check_owner(name, self._generation)
                    self._follow(store, stopper, stuck_at)
                    return
                except _LockLost as exc:
                    if handler is None:
                        raise
                    log.warning("[%s] %s; taking the name again", name, exc)
                    held.close()  # gives up its generation: it takes the name anew, or waits
                except ProcessorFencedError as exc:
                    if handler is not None:
                        log.error("[%s] %s; stopping", name, exc)
                    raise
                except Exception as exc:
                    if handler is None:
                        raise
                    if self._generation is None:
                        held.close()  # it did not take the name: let go of the lock while it waits
                    if isinstance(exc, UnableToLockProcessorError):
                        if not standby:
                            raise
                        interval = handler.retry_interval(exc)
                        if interval is None:
                            handler.handle(exc, name, store=store)
                            raise
                        self._standby(exc, interval, first=not standby_logged)
                        standby_logged = True
                    else:
                        stuck_at = _failing_event_id(exc)
                        if self._generation is not None:
                            self._report_failure(exc)
                        standby_logged = False
                        interval = handler.handle(exc, name, store=store)
                        if interval is None:
                            raise
                        if self._park_if_due(handler, exc):
                            stuck_at = None
                            continue  # past it at once
                    (handler.sleep or stopper.sleep)(interval)
                    if stopper.is_set():
                        return

    def _take(self, store: EventStore, stopper: Stopper) -> None:
        """Set up and take ownership of the name (a new generation), holding the store's lock."""
        self._stopper = stopper
        self.setup()
        if self._partition is None:
            self._register(store)
        self._generation = self.tracker.acquire(self.processor_name, _instance_name(), self._kind)

    def _partition_copy(self, partition: int, turn: threading.Lock,
                        pages: _SharedPages) -> EventStreamProcessor:
        """A copy of this processor (sharing its attributes' values) that runs one partition: its
        own name (``name#partition``), run state and fencing, taking ``turn`` for each batch and
        reading through ``pages``."""
        clone = copy.copy(self)
        vars(clone).update(processor_name=f"{self.processor_name}#{partition}",
                           _partition=partition, _turn=turn, _pages=pages, _current_event=None,
                           _generation=None, _lock_held=None, _horizon=0, _replaying=False,
                           _stopper=None,
                           _parked_aggregates={}, _unparking=False, _retry_checked_at=0.0)
        return clone

    def _register(self, store: EventStore) -> None:
        """Register the processor in ``store`` when its position lives elsewhere, so that
        processor_statuses(store) lists it."""
        location = self._location(store)
        if location is not None:
            with contextlib.suppress(Error):
                store.tracker().register(self.processor_name, self._kind, location)

    def _release(self) -> None:
        """Give the name up (the store's lock is released next): it is stopped."""
        generation, self._generation = self._generation, None
        self._lock_held = None
        self._stopper = None  # (a stop callable need not pickle: the processor must, once stopped)
        if generation is None:
            return  # it never took it
        with contextlib.suppress(Exception):
            self.tracker.report(self.processor_name, generation, "stopped")
        config.logger.info("[%s] stopped", self.processor_name)

    def _standby(self, exc: UnableToLockProcessorError, interval: float, *, first: bool) -> None:
        """Note in the tracker that this instance waits for another to stop (saying so the ``first``
        time)."""
        name = self.processor_name
        holder = None
        with contextlib.suppress(Exception):
            holder = self.tracker.record(name).owner
            self.tracker.standby(name, _instance_name())
        if first:
            held_by = f", held by pid {holder.replace('@', ' on host ')}" if holder else ""
            config.logger.warning("[%s] standby: %s%s; waiting for it to stop "
                                  "(retrying every %s s)", name, exc, held_by, interval)

    def _park_if_due(self, handler: ErrorHandler, exc: BaseException) -> bool:
        """Park the event ``exc`` failed at once it has failed ``handler.park_after`` times in a
        row: kept with its error, and the position moved to it, in one transaction; True when it
        did."""
        if not isinstance(exc, EventProcessingError) or self._generation is None:
            return False
        attempts = handler.count_failure(self.processor_name, exc)
        park_after = getattr(handler, "park_after", None)
        if park_after is None or attempts < park_after:
            return False
        event = exc.event
        cause = exc.__cause__ or exc
        self.tracker.park(self.processor_name, event, f"{type(cause).__name__}: {cause}",
                          attempts, self._generation)
        self._parked_aggregates.setdefault(event.aggregate_id, event.id)  # type: ignore[arg-type]
        handler.count_failure(self.processor_name, None)
        config.logger.warning("[%s] parked event %d (aggregate %r) after %d failures; later "
                              "events of its aggregate park behind it (es.parked_events, "
                              "es.retry_parked, es.drop_parked)", self.processor_name, event.id,
                              event.aggregate_id, attempts)
        return True

    def _load_parked(self) -> None:
        """Read which aggregates have parked events (their later events park behind them)."""
        self._parked_aggregates = {}
        for parked in self.tracker.parked_events(self.processor_name):
            self._parked_aggregates.setdefault(parked.aggregate_id, parked.event_id)

    def _retry_due(self) -> bool:
        """Whether a retry of parked events was asked for (looked up at most once a second)."""
        now = time.monotonic()
        if self._retry_checked_at < 0 or now - self._retry_checked_at < 1.0:
            return self._retry_checked_at < 0  # (< 0: found, until _retry_parked runs)
        self._retry_checked_at = now
        if self.tracker.retry_requested(self.processor_name):
            self._retry_checked_at = -1.0
        return self._retry_checked_at < 0

    def _retry_parked(self, store: EventStore) -> None:
        """Before a batch: handle again the parked events a retry was asked for, each
        aggregate's in id order; one that fails again stays parked (the rest of its aggregate
        behind it)."""
        name = self.processor_name
        requested = set(self.tracker.retry_requested(name))
        self._retry_checked_at = time.monotonic()
        if requested:
            chains: dict[str, list[int]] = {}
            for parked in self.tracker.parked_events(name):
                chains.setdefault(parked.aggregate_id, []).append(parked.event_id)
            for aggregate_id, ids in chains.items():
                if ids[0] not in requested:
                    continue  # (the events behind the first of an aggregate are retried with it)
                for event_id in ids:  # in order: one failing again keeps the rest behind it
                    if self._stopper is not None and self._stopper.is_set():
                        break
                    if not self._retry_one(store, event_id):
                        break
                    config.logger.info("[%s] parked event %d (aggregate %r) handled on retry", name,
                                       event_id, aggregate_id)
        self._load_parked()

    def _retry_one(self, store: EventStore, event_id: int) -> bool:
        """Handle parked ``event_id`` again, unparking it with its effects; False when it failed
        again."""
        found = store.get_next_from(event_id, limit=1)
        self._unparking = True
        try:
            if found and found[0].id == event_id:
                if not self._handle(found):
                    return False  # (told to stop: it stays parked, asked to retry)
            else:  # gone from the store (erased): nothing to handle
                self.tracker.unpark(self.processor_name, event_id, self._generation)
        except EventProcessingError as exc:
            cause = exc.__cause__ or exc
            error = f"{type(cause).__name__}: {cause}"
            self.tracker.unpark(self.processor_name, event_id, self._generation, error)
            config.logger.warning("[%s] parked event %d failed again on retry, so it stays "
                                  "parked: %s", self.processor_name, event_id, error)
            config.on_event_processor_error(cause, self.processor_name)
            return False
        finally:
            self._unparking = False
        return True

    def _report_failure(self, exc: BaseException) -> None:
        event_id = _failing_event_id(exc)
        cause = exc.__cause__ if isinstance(exc, EventProcessingError) and exc.__cause__ else exc
        with contextlib.suppress(Exception):
            self.tracker.report(self.processor_name, self._generation, "running",
                                f"{type(cause).__name__}: {cause}", event_id)

    def _follow(self, store: EventStore, stopper: Stopper, stuck_at: int | None = None) -> None:
        """Process from the recorded position (or the start position) until ``stopper`` is set
        (saying so if the position is past ``stuck_at``, the event the last failure stopped at).

        When it stops at an event (a handler failed on it, or a read met it damaged), the events
        before it are processed (read up to it, never past it) and the position is moved to the one
        before it, so that it is the next event to process (the one ``skip_event`` may skip); then
        it raises."""
        try:
            self._follow_from_position(store, stopper, stuck_at)
        except (EventProcessingError, CorruptEventError) as exc:
            event_id = _failing_event_id(exc)
            if event_id is not None:
                self._process_up_to(store, event_id - 1, stopper)
            raise

    def _process_up_to(self, store: EventStore, last_id: int, stopper: Stopper) -> None:
        """Process the events after the position up to ``last_id`` (the next one is the event it
        stopped at), then move the position to it. When a page reaches that event damaged (through a
        gap in the ids, or fewer events of the handled types), it is read again one event at a time,
        up to it."""
        types = self.processes_event_types
        position = self.last_processed_event_id
        one_by_one = False
        while position < last_id and not stopper.is_set():
            try:
                page = self._read(store, position + 1, types,
                                  1 if one_by_one else min(batch_size(), last_id - position))
            except CorruptEventError as exc:
                if exc.event_id != last_id + 1:
                    raise  # another damaged event, before it
                if one_by_one:
                    break  # the next event of these types is the damaged one
                one_by_one = True
                continue
            page = [event for event in page if (event.id or 0) <= last_id]
            if not page:
                break
            self._handle(page)
            position = page[-1].id or position
        if not stopper.is_set() and self.last_processed_event_id < last_id:
            self._advance(last_id)  # past the events it does not handle

    def _follow_from_position(self, store: EventStore, stopper: Stopper,
                              stuck_at: int | None) -> None:
        log = config.logger
        name = self.processor_name
        record = self.tracker.record(name)
        self._horizon = record.horizon
        position = record.position
        if stuck_at is not None and position >= stuck_at:
            log.warning("[%s] event %d was skipped (es.skip_event moved the position past it): "
                        "it is not processed", name, stuck_at)
        if record.fresh and self.start_from == "end":
            position = store.latest_event_id()
            self._advance(position)
        log.info("[%s] starting at event %d%s", name, position + 1,
                 f" (replaying up to event {self._horizon})" if self._horizon > position else "")
        self._retry_parked(store)
        types = self.processes_event_types
        if types is not None:
            # Catch up reading only the handled types; past them, the position moves to the latest
            # id read before (ids become visible in order, so nothing of these types is below it
            # unread).
            size = batch_size()
            while not stopper.is_set():
                latest = store.latest_event_id()
                events = self._read(store, position + 1, types, size)
                if events:
                    self._handle(events)
                    if stopper.is_set():  # it may have stopped inside the batch
                        return
                    position = events[-1].id or position
                if len(events) < size:
                    if latest > position:
                        self._advance(latest)
                        position = latest
                    break
        # Live: every new event, so the position also moves past the ones not handled. Asked to
        # retry parked events, it does so before its next batch (an idle one within a second).
        while not stopper.is_set():
            live_until = lambda: stopper.is_set() or self._retry_due()  # noqa: E731
            for batch in store.subscribe(position + 1, stop=live_until):
                if self._retry_due():
                    self._retry_parked(store)
                self._handle(batch)
                position = batch[-1].id or position
                log.info("[%s] processed up to event %d", name, batch[-1].id)
            if not stopper.is_set():
                self._retry_parked(store)


_NO_SAVEPOINT = contextlib.nullcontext()


class TableProcessor(EventStreamProcessor):
    """A processor with tables of its own in a SQL database: the base of Projector and Reactor.

    What a subclass sets (class attributes):

    - ``schema``: ``CREATE TABLE IF NOT EXISTS ...`` statements (``;``-separated), run by
      ``setup()``; ``reset()`` drops the tables they create.
    - ``tables``: the tables ``reset()`` drops, when ``schema`` does not say (default: the tables
      ``schema`` creates).
    - ``batch_size``: at most this many events per batch (default: the subscription's,
      ``es.config.subscription_batch_size``).

    What its handlers use: ``self.db``, the driver's own connection (sqlite3 or psycopg) inside
    the transaction its writes commit in, with the processor's new position;
    ``self.placeholder``, that driver's parameter marker (``?`` or ``%s``); ``self.database``,
    the es.Database behind them.
    """

    schema: ClassVar[str] = ""
    tables: ClassVar[tuple[str, ...] | None] = None  # default: the tables schema creates
    batch_size: int | None = None  # default: the subscription's batch

    _database: Database

    @property
    def db(self) -> Any:
        """The connection to this processor's database (the driver's own: sqlite3 or psycopg)."""
        return self._database.connection

    @property
    def database(self) -> Database:
        """The Database this processor's tables live in."""
        return self._database

    @property
    def placeholder(self) -> str:
        """The parameter marker of ``self.db``'s driver: ``?`` for SQLite, ``%s`` for Postgres."""
        return self._database.placeholder

    def _owned_tables(self) -> list[str]:
        return (list(self.tables) if self.tables is not None
                else self._database.table_names(self.schema))

    def _batch_transaction(self, *, lazy: bool = False) -> contextlib.AbstractContextManager[Any]:
        """The transaction a batch's writes and its new position commit in (``lazy``: begun at its
        first write where a transaction is the database's write lock, see Database.transaction)."""
        return self._database.transaction(lazy=lazy)

    def setup(self) -> None:
        """Create the schema's tables (if missing) and the tracker row."""
        with self._batch_transaction(), self._database.transaction() as conn:
            if self.schema:
                self._database.create_tables(conn, self.schema)
            super().setup()
            # recorded beside them, for the command line's reset
            self.tracker.declare_tables(self.processor_name, self._owned_tables())

    def reset(self) -> None:
        """Drop this processor's tables and position, then set up again."""
        with self._batch_transaction(), self._database.transaction() as conn:
            self._database.drop_tables(conn, self._owned_tables())
            super().reset()
        self.setup()

    def _advance(self, event_id: int) -> None:
        with self._batch_transaction():
            self._commit(event_id)

    def close(self) -> None:
        """Close this process's connection to the processor's database (it is opened again when
        needed)."""
        self._database.close()


class Projector(TableProcessor):
    """Builds a read model in a database of its own: a file path, an ``sqlite3.Connection``, a
    ``postgresql://`` URL (the Postgres backend is imported then) or a Database.

    The projection's tables (``schema``) and the processor's position live in
    that database, and each batch's writes and its new position commit in one
    transaction: a crash at any point, even ``kill -9``, neither loses nor
    repeats an event's effect. Handlers write with ``self.db``, using
    ``self.placeholder`` as the parameter marker. ``options`` go to the
    database (SQLite: ``synchronous``, default ``"NORMAL"``; Postgres: ``schema``).

    A handler's work is its writes to these tables: when one fails, the
    batch's transaction rolls back, the events before the failing one are
    processed again in a new transaction that commits with their position,
    and then the error is raised (so keep effects outside the database, and
    counters in Python, out of a projector: they would run again).
    """

    _kind: ClassVar[str] = "projector"

    def process_batch(self, events: list[Event]) -> None:
        """Process events in transactions of ``batch_size``: each commits its writes and position
        together.

        No savepoint per event (on Postgres each would cost two round trips): a failing event's
        batch rolls back, and the events before it are processed again and committed before the
        error is raised.
        """
        size = self.batch_size or len(events)
        for start in range(0, len(events), size):
            chunk = events[start:start + size]
            try:
                with self._batch_transaction():
                    for event in chunk:
                        self.process(event)
                    self._commit(chunk[-1].id)  # type: ignore[arg-type]
            except EventProcessingError as failure:
                failed = failure.event
                done = chunk[:next(i for i, event in enumerate(chunk) if event is failed)]
                if done:
                    with self._batch_transaction():
                        for event in done:
                            self.process(event)
                        self._commit(done[-1].id)  # type: ignore[arg-type]
                raise

    def __init__(self, db: str | os.PathLike[str] | sqlite3.Connection | Database, *,
                 batch_size: int | None = None, **options: Any) -> None:
        if isinstance(db, (str, os.PathLike)):
            scheme = parse_store_url(db).scheme
            if scheme == "sqlite":
                options.setdefault("synchronous", "NORMAL")
            elif scheme != "memory":
                options.setdefault("application_name", f"eventsourcery {self.processor_name}")
        elif isinstance(db, sqlite3.Connection):
            options.setdefault("synchronous", "NORMAL")
        self._database = open_database(db, **options)
        super().__init__(DatabaseTracker(self._database))
        if batch_size is not None:
            self.batch_size = batch_size


class Reactor(TableProcessor):
    """Reacts to events by doing things and emitting new events (``emit_event``).

    Each handled event is one unit: its handlers' writes to the reactor's
    tables (``schema``), the events they emit (kept until the handler
    returns) and the new position commit together, in one transaction of
    their own, as soon as the event is done (``commit_interval`` groups
    them). Where a transaction is the database's only write lock (SQLite),
    that transaction begins at the handler's first write statement, so a
    handler holds no lock while it waits on the outside world before
    writing (other threads of its process that write through the same
    SQLite store object do wait: they share its one writer connection).
    With ``db=None`` (the reactor's position in the event store's own
    database, or in an in-memory SQLite database on a memory store) a crash
    at any point, even ``kill -9``, neither loses nor repeats a table write
    or an emitted event. With a separate ``db`` the emitted events are sunk
    into the store just before that database commits: at-least-once.

    Effects outside the database (sending mail, calling an API) can repeat:
    a crash after the effect and before the event's commit runs the handler
    again on restart (at most once more per crash). Make them idempotent at
    their target, keyed by the processed event's ``uuid``.

    While replaying (``self.replaying``, after ``reset()``), ``emit_event``
    does not sink: the events emitted the first time are in the store.
    """

    emits_events: ClassVar[Iterable[type[Event]]] = ()
    """The Event classes ``emit_event`` accepts: any iterable (a list is fine), checked and stored
    as a tuple."""
    _kind: ClassVar[str] = "reactor"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("emits_events", cls.emits_events)
        if isinstance(declared, type) or not isinstance(declared, Iterable):
            raise TypeError(f"{cls.__qualname__}.emits_events must be an iterable of Event "
                            f"classes, not {declared!r}")
        classes = tuple(declared)
        for item in classes:
            if not isinstance(item, type) or not issubclass(item, Event) or item is Event:
                raise TypeError(
                    f"{cls.__qualname__}.emits_events: {item!r} is not an Event subclass")
        cls.emits_events = classes

    def __init__(self, store: EventStore,
                 db: str | os.PathLike[str] | sqlite3.Connection | Database | None = None, *,
                 batch_size: int | None = None) -> None:
        self.store = store
        tracker: Tracker
        if db is None:
            database = store.database
            self._database = database if database is not None else SQLiteDatabase(":memory:")
            tracker = store.tracker()
        else:
            self._database = open_database(db)
            tracker = DatabaseTracker(self._database)
        self._with_store = db is None and store.database is None  # and the memory store's
        super().__init__(tracker)
        # emitted by the running handler, sunk with its position
        self._emitted: list[Event] | None = None
        if batch_size is not None:
            self.batch_size = batch_size

    def _batch_transaction(self, *, lazy: bool = False) -> contextlib.AbstractContextManager[Any]:
        if not self._with_store:
            return self._database.transaction(lazy=lazy)
        # the memory store's transaction, and that of the reactor's tables
        stack = contextlib.ExitStack()
        stack.enter_context(self.store.transaction())
        try:
            stack.enter_context(self._database.transaction(lazy=lazy))
        except BaseException:
            stack.close()
            raise
        return stack

    #: Seconds of handler work whose events may commit together. 0 (the default): each handled
    #: event's unit commits as soon as its handler returns, so a crash repeats at most one event's
    #: outside effects. A reactor whose events come fast and whose effects are cheap to repeat may
    #: group them (one commit, one fsync, for many events): a crash then repeats the outside
    #: effects of the whole group, and on SQLite the write lock is held from the group's second
    #: handled event on (at most ``commit_interval`` plus one event).
    commit_interval: float = 0.0

    def process_batch(self, events: list[Event]) -> None:
        """Process a batch: each handled event's table writes, emitted events and position commit
        together as soon as it is done (see the class and ``commit_interval``); the position moves
        past the events it does not handle with the next commit. Stops between events once told to.
        A failing event's writes and emissions roll back alone, after the events before it commit.
        """
        # before any outside effect
        self._check_lock()
        self.tracker.check_owner(self.processor_name, self._generation)
        i = 0
        while i < len(events):
            if i and self._stopper is not None and self._stopper.is_set():
                return  # between events: what is done is committed
            emitted: list[Event] = []
            last: Event | None = None  # the last event this commit covers
            failure: EventProcessingError | None = None
            began = 0.0
            try:
                with self._batch_transaction(lazy=True):
                    while i < len(events):
                        event = events[i]
                        if self._handles(event):
                            if began and time.monotonic() - began >= self.commit_interval:
                                break
                            began = began or time.monotonic()
                            # a savepoint once the transaction holds writes of events before it
                            savepoint = last is not None and self._database.has_begun()
                            self._emitted = []
                            try:
                                with self._database.transaction() if savepoint else _NO_SAVEPOINT:
                                    self.process(event)
                            except EventProcessingError as exc:
                                if not savepoint:
                                    raise  # its writes roll back with the transaction (alone in it)
                                failure = exc
                                break
                            finally:
                                this, self._emitted = self._emitted or [], None
                            emitted.extend(this)
                        last = event
                        i += 1
                    if last is not None:
                        for emission in emitted:
                            self.store.sink(emission)
                        self._commit(last.id)  # type: ignore[arg-type]
            except EventProcessingError:
                if last is not None:  # the events before it commit (they wrote nothing yet)
                    with self._batch_transaction():
                        for emission in emitted:
                            self.store.sink(emission)
                        self._commit(last.id)  # type: ignore[arg-type]
                raise
            if failure is not None:
                raise failure

    def emit_event(self, event: Event) -> Event:
        """Sink ``event`` caused by the event being processed; returns it as stored (or, where
        emissions commit with the position, as it will be stored, without ``id``; while replaying:
        not at all).

        ``causation_id`` becomes that event's uuid and ``correlation_id`` its
        correlation id (or its uuid when it has none); ``metadata`` is the
        cause's, updated with the emitted event's own (its keys win).
        """
        if not isinstance(event, tuple(self.emits_events)) or type(event) is Event:
            raise UndeclaredEventEmissionError(
                f"{self.processor_name} emitted {type(event).__name__} ({event.type!r}), which is "
                f"not in emits_events {[c.__name__ for c in self.emits_events]}")
        cause = self._current_event
        if cause is not None:
            event = _with_fields(event, causation_id=cause.uuid,
                                 correlation_id=cause.correlation_id or cause.uuid,
                                 metadata={**cause.metadata, **event.metadata})
        if self.replaying:
            return event
        if self._emitted is not None:
            self._emitted.append(event)
            return event
        return self.store.sink(event)[0]


@dataclasses.dataclass(frozen=True)
class ProcessorStatus:
    """One processor that has run against a store: its position, how many events it is behind,
    whether a live process holds its lock, and its ``state``: ``running``, ``failing``
    (``last_error`` and ``failing_event_id`` say why), ``standby`` (no instance holds it, and one is
    waiting to take it) or ``stopped``. ``owner`` and ``standby`` are ``pid@host`` of the instance
    that took it last and of one waiting for it; ``replay_horizon`` the position it had before its
    last reset."""

    name: str
    position: int
    lag: int
    running: bool
    state: str = "stopped"
    last_error: str | None = None
    failing_event_id: int | None = None
    owner: str | None = None
    standby: str | None = None
    replay_horizon: int = 0
    kind: str | None = None
    parked: int = 0  # how many events it has parked (see es.parked_events)
    partitions: tuple[PartitionStatus, ...] = ()  # one per partition, when split into partitions


@dataclasses.dataclass(frozen=True)
class PartitionStatus:
    """One partition of a processor split into partitions: its ``position``, how many events it
    is behind (``lag``), the ``pid@host`` of the instance that owns it now (``owner``, None when
    none does) and its ``state``: ``running``, ``failing`` or ``stopped``."""

    partition: int
    position: int
    lag: int
    owner: str | None
    state: str


#: How recently (seconds) a standby instance must have tried to take a name for ``state`` to say
#: standby.
STANDBY_FRESHNESS = 10.0


@contextlib.contextmanager
def _kept_at(tracker: Tracker | None, record: TrackerRecord, *,
             read_only: bool = False) -> Iterator[Tracker]:
    """The tracker that keeps ``record``'s positions and parked events: ``tracker``, or (for a
    processor registered there whose position lives in its own database) one on that database,
    opened read-only with ``read_only``, and closed afterwards."""
    if not record.location:
        if tracker is None:
            raise ValueError(f"processor {record.name!r}: no tracker keeps it")
        yield tracker
        return
    database = open_database(record.location, read_only=read_only)
    try:
        yield DatabaseTracker(database)
    finally:
        with contextlib.suppress(Exception):
            database.close()


def _located_record(record: TrackerRecord, *, read_only: bool = False) -> TrackerRecord:
    """The record kept where a registered processor's position lives (the registration when
    unreachable); ``read_only``: the database there is opened read-only."""
    if not record.location:
        return record
    try:
        with _kept_at(None, record, read_only=read_only) as kept:
            found = kept.record(record.name)
    except Exception:  # a database we cannot reach now: what the registration says
        return record
    return dataclasses.replace(found, kind=found.kind or record.kind, location=record.location)


def _is_partition_of(record: TrackerRecord, split: Mapping[str, int]) -> bool:
    """Whether ``record`` keeps a partition of one of the processors ``split`` (name: count)."""
    base, mark, number = record.name.rpartition("#")
    return bool(mark) and number.isdigit() and int(number) < split.get(base, 0)


def processor_statuses(store: EventStore, tracker: Tracker | None = None) -> list[ProcessorStatus]:
    """The status of every processor that has run against ``store``: those whose position
    ``tracker`` (default: the store's) keeps, and those registered in it whose position lives in
    their own database.

    ``lag`` counts the events after the position (a processor's position moves past the events it
    does not handle once it has read past them); ``running`` says whether a live process holds the
    processor's lock on this store. A processor split into partitions has one status, with one
    PartitionStatus per partition: its ``position`` is their lowest, its ``lag`` their highest.
    """
    tracker = tracker or store.tracker()
    latest = store.latest_event_id()
    records = tracker.records()
    split = {r.name: r.partitions for r in records if r.partitions}
    return [_status(store, tracker, record, latest)
            for record in records if not _is_partition_of(record, split)]


def _status(store: EventStore, tracker: Tracker, registration: TrackerRecord,
            latest: int) -> ProcessorStatus:
    """One processor's status (what its registration says when its database is out of reach)."""
    record, parts, parked, split = registration, [registration], 0, False
    try:
        with _kept_at(tracker, registration, read_only=True) as kept:
            record = kept.record(registration.name) if registration.location else registration
            names = _partition_names(record.name, record.partitions or 1)
            found = [kept.record(n) for n in names] if len(names) > 1 else [record]
            parked = sum(len(kept.parked_events(n)) for n in names)
            parts, split = found, len(names) > 1
    except Exception:  # noqa: BLE001 - unreachable now: its status says what the registration says
        pass
    record = dataclasses.replace(record, kind=record.kind or registration.kind,
                                 location=registration.location)
    running = [store.is_running(part.name) for part in parts]
    states = [_state(part, is_running) for part, is_running in zip(parts, running, strict=True)]
    partitions = () if not split else tuple(
        PartitionStatus(number, part.position, max(latest - part.position, 0),
                        part.owner if is_running else None, state)
        for number, (part, is_running, state) in enumerate(zip(parts, running, states,
                                                               strict=True)))
    failing = next((part for part in parts if part.last_error is not None), None)
    recent_standby = (record.standby_at is not None
                      and time.time() - record.standby_at < STANDBY_FRESHNESS)
    if failing is not None:
        state = "failing"
    elif any(running):
        state = "running"
    elif recent_standby:
        state = "standby"
    else:
        state = "stopped"
    position = min(part.position for part in parts)
    owners = sorted({p.owner for p in partitions if p.owner})
    return ProcessorStatus(
        record.name, position, max(latest - position, 0), any(running), state,
        failing.last_error if failing else None, failing.failing_event_id if failing else None,
        (", ".join(owners) or None) if split else record.owner,
        record.standby if recent_standby else None,
        max(part.horizon for part in parts), record.kind, parked, partitions)


def _state(record: TrackerRecord, running: bool) -> str:
    """The state of one tracker record: ``failing``, ``running`` or ``stopped``."""
    if record.last_error is not None:
        return "failing"
    return "running" if running else "stopped"


def _skip_target(store: EventStore, processor_name: str,
                 event_id: int) -> tuple[TrackerRecord, list[TrackerRecord]]:
    """The record of the processor a skip of ``event_id`` would move (read where its position
    lives), and the records it moves: its own, or those of its partitions at ``event_id - 1``;
    ValueError when the skip would be refused (see ``skip_event``)."""
    event_id = _skip_id(event_id)
    records = {r.name: r for r in store.tracker().records()}
    base, mark, number = processor_name.rpartition("#")
    if processor_name not in records and mark and number.isdigit() and base in records:
        # one partition of a processor whose positions live in its own database
        records[processor_name] = dataclasses.replace(records[base], name=processor_name)
    if processor_name not in records:
        raise ValueError(f"cannot skip event {event_id}: unknown processor {processor_name!r} "
                         f"(processors in this store: {', '.join(sorted(records)) or 'none'})")
    latest = store.latest_event_id()
    if event_id > latest:
        raise ValueError(f"cannot skip event {event_id} of processor {processor_name!r}: it is not "
                         f"stored (the latest event is {latest}); nothing changed")
    record = _located_record(records[processor_name])
    if not record.partitions:
        _check_skip(record, event_id)
        return record, [record]
    with _kept_at(store.tracker(), records[processor_name], read_only=True) as tracker:
        parts = [dataclasses.replace(tracker.record(name), location=record.location)
                 for name in _partition_names(processor_name, record.partitions)]
    due = [part for part in parts if part.position == event_id - 1]
    if not due:
        positions = ", ".join(f"{part.name} at {part.position}" for part in parts)
        raise ValueError(f"cannot skip event {event_id} of processor {processor_name!r}: none "
                         f"of its partitions is at {event_id - 1} ({positions}); only the next "
                         "event of a partition can be skipped; nothing changed")
    failing = [part for part in due if part.failing_event_id == event_id]
    return (failing or due)[0], due


def skip_event(store: EventStore, processor_name: str, event_id: int) -> None:
    """Move the processor ``processor_name`` of ``store`` past the event ``event_id`` without
    processing it: for an event whose handler keeps failing, or a damaged one its reader cannot
    decode.

    Only the next event the processor would process can be skipped: the
    position must be exactly ``event_id - 1`` (as it is when the processor is
    ``failing`` with ``failing_event_id == event_id``), and it becomes
    ``event_id`` in one conditional write. Anything else is refused with a
    ValueError saying where the processor is, and nothing changes: an unknown
    name, an event not stored yet, a position before or past it (the
    processor has moved on, or has other events to process first). So a skip
    never makes an event run twice and never skips another one.

    It works whether the processor is stopped or running, from any process
    (the CLI: ``python -m eventsourcery STORE skip NAME EVENT_ID``): the
    processor's own position updates are fenced by its generation, not by
    the position, so a running instance that keeps failing on the event picks
    the new position up at its next retry and goes on with the next event
    (logging that the event was skipped). Its failure is cleared. A handler
    that happens to succeed on a retry at the very moment of the skip may
    have processed the event after all; nothing else can. A projector whose
    position lives in its own database is found through its registration in
    the store. A processor split into partitions is moved past the event in
    each partition whose position is ``event_id - 1`` (the one its aggregate
    belongs to does not handle it; the others would only pass it).
    """
    record, moved = _skip_target(store, processor_name, event_id)
    with _kept_at(store.tracker(), record) as tracker:
        for part in moved:
            with _NO_SAVEPOINT if record.location else store.transaction():
                tracker.skip_event(part.name, event_id)
    config.logger.warning("[%s] skipped event %d: position %d -> %d; that event will not be "
                          "processed", processor_name, event_id, event_id - 1, event_id)


@contextlib.contextmanager
def _parking_tracker(store: EventStore, processor_name: str, *,
                     read_only: bool = False) -> Iterator[Tracker]:
    """The tracker that keeps ``processor_name``'s parked events: the store's, or (for a processor
    registered in the store with its position in its own database) one on that database."""
    check_text("processor name", processor_name)
    records = {r.name: r for r in store.tracker().records()}
    if processor_name not in records:
        raise ValueError(f"unknown processor {processor_name!r} (processors in this store: "
                         f"{', '.join(sorted(records)) or 'none'})")
    with _kept_at(store.tracker(), records[processor_name], read_only=read_only) as tracker:
        yield tracker


def _parked_everywhere(tracker: Tracker, processor_name: str) -> list[ParkedEvent]:
    """The parked events of ``processor_name`` in every one of its partitions, by id."""
    return sorted((parked for name in tracker.partition_names(processor_name)
                   for parked in tracker.parked_events(name)), key=lambda p: p.event_id)


def _parked_in(tracker: Tracker, processor_name: str, event_id: int) -> str:
    """The tracker name (the processor's, or its partition's) that keeps parked ``event_id``; the
    processor's own when none does (its tracker then says it is not parked)."""
    names = tracker.partition_names(processor_name)
    return next((name for name in names
                 if any(p.event_id == event_id for p in tracker.parked_events(name))), names[0])


def _parked_id(event_id: object) -> int:
    """``event_id`` checked as the id of a parked event (TypeError unless an int, ValueError
    below 1)."""
    if check_position("event_id", event_id) != event_id or event_id < 1:
        raise ValueError(f"no parked event {event_id!r}: event ids start at 1")
    return event_id


def parked_events(store: EventStore, processor_name: str) -> list[ParkedEvent]:
    """The events processor ``processor_name`` of ``store`` has parked, by id (see ``ParkedEvent``).

    A retry handler with ``park_after=N`` parks an event once its handler has failed N times in
    a row: it is kept in the processor's tracker with its error, the position moves past it in
    the same transaction, and the processor goes on. Later events of the same aggregate park
    behind it, unhandled, so each aggregate's events are still handled in order; other
    aggregates' events are not held up. A parked event counts as passed for ``wait_for`` and
    ``lag``. ValueError for a name that has not run against the store; a projector whose
    position lives in its own database is found through its registration in the store.
    """
    with _parking_tracker(store, processor_name, read_only=True) as tracker:
        return _parked_everywhere(tracker, processor_name)


def retry_parked(store: EventStore, processor_name: str, event_id: int | None = None) -> list[int]:
    """Ask processor ``processor_name`` (the instance running now, or the next to run) to handle
    its parked events again, before its next batch (an idle one within about a second): all of
    them, or parked ``event_id`` with the events parked behind it. Each aggregate's are handled in
    id order; one that fails again stays parked (its ``attempts`` counted, its new error kept),
    with the rest of its aggregate behind it. Returns the ids asked for. ValueError (nothing
    changed) for an event that is not parked, or that waits behind another (retry that one)."""
    if event_id is not None:
        event_id = _parked_id(event_id)
    with _parking_tracker(store, processor_name) as tracker:
        if event_id is not None:
            ids = tracker.request_retry(_parked_in(tracker, processor_name, event_id), event_id)
        else:
            ids = sorted(i for name in tracker.partition_names(processor_name)
                         for i in tracker.request_retry(name))
    config.logger.warning("[%s] asked to retry parked events %s", processor_name,
                          ", ".join(map(str, ids)) or "(none parked)")
    return ids


def drop_parked(store: EventStore, processor_name: str, event_id: int) -> None:
    """Give up on parked event ``event_id`` of processor ``processor_name``: it is removed from the
    parked events for good (never handled), and the events parked behind it are retried (as
    ``retry_parked`` does). ValueError (nothing changed) when it is not parked."""
    event_id = _parked_id(event_id)
    with _parking_tracker(store, processor_name) as tracker:
        tracker.drop_parked(_parked_in(tracker, processor_name, event_id), event_id)
    config.logger.warning("[%s] dropped parked event %d: it will not be handled", processor_name,
                          event_id)


def _skip_command(store: str, processor_name: str, event_id: int) -> str:
    """The command line that moves ``processor_name`` past ``event_id`` (see ``skip_event``)."""
    return f"python -m eventsourcery {store} skip {shlex.quote(processor_name)} {event_id}"


class ErrorHandler:
    """Decides what a processor does after an error: retry after an interval, or stop.

    Every error is reported (unwrapped from EventProcessingError) to the
    logger and to ``config.on_event_processor_error``, except
    UnableToLockProcessorError: a second instance waiting for the first to
    stop is only logged as a warning. ``sleep`` is injectable, so tests need
    not wait.
    """

    #: Park an event once it has failed this many times in a row (None: never; see
    #: ``es.parked_events``).
    park_after: int | None = None

    def __init__(self, *, sleep: Callable[[float], None] | None = None) -> None:
        self.sleep = sleep

    def count_failure(self, processor_name: str, error: EventProcessingError | None) -> int:
        """Count ``error`` for ``processor_name``: how many times in a row its event has failed now
        (None forgets the count)."""
        counts: dict[str, tuple[str | None, int]] = self.__dict__.setdefault("_failure_counts", {})
        if error is None:
            counts.pop(processor_name, None)
            return 0
        last, count = counts.get(processor_name, (None, 0))
        count = count + 1 if last == error.event.uuid else 1
        counts[processor_name] = (error.event.uuid, count)
        return count

    def retry_interval(self, error: BaseException) -> float | None:
        """Seconds to wait before retrying after ``error``; None to stop."""
        raise NotImplementedError

    def handle(self, error: BaseException, processor_name: str, *,
               store: EventStore | None = None) -> float | None:
        """Report ``error`` and return the retry interval (None: stop). When the processor is stuck
        at an event, the log line says how to skip it, naming ``store`` by its location if it has
        one (its own description of where it lives)."""
        cause = (error.__cause__ if isinstance(error, EventProcessingError) and error.__cause__
                 else error)
        if isinstance(error, UnableToLockProcessorError):  # a standby instance: nothing has failed
            config.logger.warning("[%s] %s; waiting for it to stop", processor_name, error)
        else:
            event_id = _failing_event_id(error)
            database = store.database if store is not None else None
            location = database.location if database is not None else None
            where = shlex.quote(location) if location else "STORE"
            hint = "" if event_id is None else (
                f"; to move it past event {event_id} without processing it: "
                f"{_skip_command(where, processor_name, event_id)} (or es.skip_event)")
            config.logger.error("[%s] processor failed: %s%s", processor_name, error, hint,
                                exc_info=cause)
            config.on_event_processor_error(cause, processor_name)
        interval = self.retry_interval(error)
        if interval is not None:
            config.logger.info("[%s] retrying in %s s", processor_name, interval)
        return interval


class NoRetry(ErrorHandler):
    """Stop the processor at its first error (under ESPRunner its process exits with status 3,
    and the runner does not start it again)."""

    def retry_interval(self, error: BaseException) -> float | None:
        return None


def _check_park_after(park_after: object) -> int | None:
    if park_after is not None and (not isinstance(park_after, int) or isinstance(park_after, bool)
                                   or park_after < 1):
        raise ValueError(f"park_after must be None or an int >= 1 (the failures of one event "
                         f"after which it is parked), not {park_after!r}")
    return park_after


class ConstantRetry(ErrorHandler):
    """Retry forever, ``interval`` seconds after every error (the default); with ``park_after``, an
    event that has failed that many times in a row is parked instead (see ``es.parked_events``)."""

    def __init__(self, interval: float = 1.0, park_after: int | None = None, *,
                 sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(sleep=sleep)
        self.interval = interval
        self.park_after = _check_park_after(park_after)

    def retry_interval(self, error: BaseException) -> float | None:
        return self.interval


class ExponentialBackoffRetry(ErrorHandler):
    """Retry after ``initial`` seconds, doubling up to ``maximum`` while the same event keeps
    failing.

    An error on another event, or an error that is not an
    EventProcessingError, starts again at ``initial``. With ``park_after``, an
    event that has failed that many times in a row is parked instead (see
    ``es.parked_events``).
    """

    def __init__(self, initial: float = 1.0, maximum: float = 64.0,
                 park_after: int | None = None, *,
                 sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(sleep=sleep)
        self.park_after = _check_park_after(park_after)
        self.initial = initial
        self.maximum = maximum
        self._interval = initial
        self._last_uuid: str | None = None

    def retry_interval(self, error: BaseException) -> float | None:
        event_uuid = error.event.uuid if isinstance(error, EventProcessingError) else None
        if event_uuid is not None and event_uuid == self._last_uuid:
            self._interval = min(self._interval * 2, self.maximum)
        else:
            self._interval = self.initial
        self._last_uuid = event_uuid
        return self._interval


def _make_error_handler() -> ErrorHandler:
    factory = config.error_handler or ConstantRetry
    return factory if isinstance(factory, ErrorHandler) else factory()


def run_processor(processor: EventStreamProcessor, store: EventStore, *, stop: StopSignal = None,
                  error_handler: ErrorHandler | None = None) -> None:
    """Run ``processor`` against ``store`` until ``stop`` is set, letting the error handler retry or
    stop after errors; raises the error when the handler gives up.

    A failing processor keeps its lock while it retries (it is ``failing``, not stopped). An
    instance that finds its name taken waits as a standby, logging that once with the pid and host
    that hold it. An instance that has lost its name to another (ProcessorFencedError) logs one line
    and raises.
    """
    stopper = Stopper(stop)
    if not stopper.is_set():
        processor._run(stopper=stopper, store=store, handler=error_handler or _make_error_handler())


# ---------------------------------------------------------------------------
# Partitions: how the instances of a processor split into partitions share them.
# ---------------------------------------------------------------------------

class _Partitions:
    """One instance's share of a processor's partitions (``EventStreamProcessor.partitions``).

    Instances find each other through the store's locks: each holds one member
    lock, ``name@j`` for the lowest free ``j`` below the partition count (an
    instance that finds them all taken waits for one), so the live instances
    are the member locks held, and a dead instance's lock goes with its process
    (or its Postgres session). Every ``tick`` seconds an instance counts them
    and keeps ``ceil(partitions / live)`` partitions: it gives up those over
    that (each stops between batches and lets its lock go), and takes free
    ones under it, starting from a block of its own so that instances rarely
    reach for the same one. A partition is run by a copy of the processor on a
    thread of its own (``_PartitionRun``), which takes the store's lock of
    ``name#p`` and a new generation of that partition's tracker record as a
    whole processor takes its name: one owner at a time, fenced. A copy that
    lost the partition's lock (its lock session ended, its lock file removed)
    writes nothing more under it: it takes the partition anew at its next
    commit if no other instance has, and an idle one is stopped here, so that
    the partition is taken again by whichever instance is under its share.
    """

    tick = 0.5

    def __init__(self, processor: EventStreamProcessor, store: EventStore, stopper: Stopper,
                 handler: ErrorHandler | None) -> None:
        self.processor = processor
        self.store = store
        self.stopper = stopper
        self.handler = handler
        self.name = processor.processor_name
        self.count = processor.partitions
        self.turn = threading.Lock()  # one batch at a time in this instance
        self.pages = _SharedPages(2 * self.count)
        self.runs: dict[int, _PartitionRun] = {}
        self.owned: list[int] = []  # as last logged

    def run(self) -> None:
        """Set up, join the instances, and keep this instance's share until ``stopper``; a
        partition's error that its handler gave up on (or any, without a handler) is raised."""
        if not self._set_up():
            return
        with contextlib.ExitStack() as membership:
            slot = self._join(membership)
            if slot is None:
                return
            # Instances started together (a runner's) join within moments of each other: waiting
            # for them spares taking partitions only to give them up again.
            self.stopper.sleep(self.tick)
            try:
                while not self.stopper.is_set():
                    self._reap()
                    try:
                        self._balance(slot)
                    except StoreError as exc:  # (a store out of reach: its partitions carry on)
                        config.logger.warning("[%s] could not look at the other instances: %s",
                                              self.name, exc)
                    self.stopper.sleep(self.tick)
            finally:
                for run in self.runs.values():
                    run.stop.set()
                for run in self.runs.values():
                    run.thread.join()
            self._reap()

    def _set_up(self) -> bool:
        """The processor's tables and records (an Error when ``partitions`` changed under
        positions); where ``start_from = "end"``, the partitions that have no position start after
        the latest event now. Retried as the handler says while the store is out of reach."""
        processor = self.processor
        while True:
            try:
                processor.setup()
                processor._register(self.store)
                if processor.start_from == "end":
                    processor.tracker.start_fresh(processor._tracked_names(),
                                                  self.store.latest_event_id())
                return True
            except StoreError as exc:
                interval = None if self.handler is None else self.handler.handle(
                    exc, self.name, store=self.store)
                if interval is None:
                    raise
                (self.handler.sleep if self.handler and self.handler.sleep
                 else self.stopper.sleep)(interval)
                if self.stopper.is_set():
                    return False

    def _join(self, membership: contextlib.ExitStack) -> int | None:
        """Take a member lock (the lowest free): this instance's slot; None when stopped first."""
        waiting = False
        while not self.stopper.is_set():
            try:
                for slot in range(self.count):
                    if self.store.is_running(f"{self.name}@{slot}"):
                        continue  # (asked first: a store may take a while to refuse a lock)
                    with contextlib.suppress(UnableToLockProcessorError):
                        membership.enter_context(self.store.lock(f"{self.name}@{slot}"))
                        config.logger.info("[%s] joined as instance %d", self.name, slot)
                        return slot
                if not waiting:
                    config.logger.warning("[%s] standby: each of its %d partitions has an "
                                          "instance; waiting for one to stop", self.name,
                                          self.count)
                    waiting = True
            except StoreError as exc:  # out of reach: try again in a while
                config.logger.warning("[%s] could not join the other instances: %s", self.name,
                                      exc)
            self.stopper.sleep(self.tick * 4)
        return None

    def _balance(self, slot: int) -> None:
        """Give up the partitions over this instance's share, and take free ones under it."""
        live = 1 + sum(self.store.is_running(f"{self.name}@{other}")
                       for other in range(self.count) if other != slot)
        share = -(-self.count // live)
        start = slot * share
        preferred = sorted(range(self.count), key=lambda p: (p - start) % self.count)
        for run in self.runs.values():
            if run.lost():
                run.stop.set()  # it writes nothing more, and lets the partition go
        running = [p for p in preferred if p in self.runs and not self.runs[p].stop.is_set()]
        for partition in running[share:]:
            self.runs[partition].stop.set()  # it stops between batches, and lets go
        for partition in preferred:
            if len(self.runs) >= share:
                break
            if partition not in self.runs and not self.store.is_running(
                    f"{self.name}#{partition}"):
                self.runs[partition] = _PartitionRun(self, partition)
        owned = sorted(self.runs)
        if owned != self.owned:
            self.owned = owned
            config.logger.info("[%s] %d live instance(s); this one runs partitions %s", self.name,
                               live, owned)

    def _reap(self) -> None:
        """Forget the partition runs that ended; raise the error one stopped at."""
        for partition, run in list(self.runs.items()):
            if run.thread.is_alive():
                continue
            del self.runs[partition]
            if run.error is not None:
                for other in self.runs.values():
                    other.stop.set()
                for other in self.runs.values():
                    other.thread.join()
                self.runs.clear()
                raise run.error


class _SharedPages:
    """The full pages of events one partition of an instance read while catching up, kept for
    its other partitions, which read the same pages (each handles its own events of them). Only a
    full page is kept: it holds the same events whenever it is read (ids become visible in order),
    where a shorter one may since have grown."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pages: dict[tuple[int, tuple[str, ...] | None, int], list[Event]] = {}
        self._lock = threading.Lock()

    def read(self, store: EventStore, from_id: int, types: tuple[str, ...] | None,
             limit: int) -> list[Event]:
        """``store.get_next_from(from_id, types, limit=limit)``, read once for the partitions."""
        key = (from_id, types, limit)
        with self._lock:
            page = self._pages.get(key)
        if page is None:
            page = store.get_next_from(from_id, types, limit=limit)
            if len(page) == limit:
                with self._lock:
                    self._pages[key] = page
                    while len(self._pages) > self._size:
                        del self._pages[next(iter(self._pages))]  # the oldest
        return page


class _PartitionRun:
    """One partition run by a copy of the processor on a thread of its own, until ``stop`` (or
    until it finds the partition taken, or loses it)."""

    def __init__(self, partitions: _Partitions, partition: int) -> None:
        self.processor = partitions.processor._partition_copy(partition, partitions.turn,
                                                              partitions.pages)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._partitions = partitions
        self.thread = threading.Thread(target=self._main, daemon=True,
                                       name=f"eventsourcery {self.processor.processor_name}")
        self.thread.start()

    def lost(self) -> bool:
        """Whether it took the partition's lock and has lost it since."""
        held = self.processor._lock_held
        return held is not None and not held()

    def _main(self) -> None:
        partitions = self._partitions
        try:
            self.processor._run(partitions.store, Stopper(self.stop), partitions.handler,
                                standby=False)
        except UnableToLockProcessorError:
            pass  # another instance took it first
        except ProcessorFencedError as exc:
            config.logger.warning("[%s] %s; this instance gives the partition up",
                                  self.processor.processor_name, exc)
        except BaseException as exc:  # raised by the instance (_Partitions._reap)
            self.error = exc


# ---------------------------------------------------------------------------
# The runner: one child process per processor, supervised by the parent.
# ---------------------------------------------------------------------------

def _set_process_title(title: str) -> None:
    with contextlib.suppress(OSError):
        with open("/proc/self/comm", "w") as comm:
            comm.write(title[:15])


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: A child's exit status when its processor's error handler gave up (NoRetry): the processor
#: stopped on purpose, at an error, and the runner does not start it again. Any other non-zero
#: status is a death.
_EXIT_GAVE_UP = 3


def _child_main(processor: EventStreamProcessor, store: EventStore,
                after_fork: Callable[[EventStreamProcessor], None] | None,
                parent_pid: int = 0) -> None:
    name = processor.processor_name
    # A signal handler must not call threading.Event.set(): the signal may arrive while
    # this thread holds that Event's lock, and the handler would deadlock. Set a flag.
    stop_requested: list[bool] = []

    def request_stop(signum: int, frame: Any) -> None:
        stop_requested.append(True)

    def stop() -> bool:
        # A runner killed by SIGKILL sends no TERM: its children see they were re-parented, and
        # stop.
        return bool(stop_requested) or (parent_pid != 0 and os.getppid() != parent_pid)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent until now
    _set_process_title(f"es:{name}")
    running = False
    try:
        if after_fork is not None:
            after_fork(processor)
        running = True
        run_processor(processor, store, stop=stop)
    except ProcessorFencedError:  # run_processor has logged it, in one line
        sys.stderr.flush()
        os._exit(1)
    except BaseException as exc:
        config.logger.critical("[%s] processor stopped by %r", name, exc, exc_info=exc)
        with contextlib.suppress(Exception):
            config.on_event_processor_critical_error(exc, name)
        sys.stderr.flush()
        # run_processor raises an Exception only once the error handler has given up.
        os._exit(_EXIT_GAVE_UP if running and isinstance(exc, Exception) else 1)
    config.logger.info("[%s] process exiting", name)
    # Python restores the default action of handled signals while it shuts down, so the
    # runner's TERM arriving after a Ctrl-C to the whole group would kill us mid-exit.
    # We are stopping anyway: ignore further stop signals.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()


def _describe_exit(status: int) -> str:
    """A child's exit status as an operator reads it: ``exit status 1``, ``killed by SIGKILL (9)``.
    """
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name} ({-status})"
        return f"killed by signal {-status}"
    return f"exit status {status}"


class _RestartBackoff:
    """How long the runner waits before it starts a child again after it died (one per child).

    After a first death it waits ``initial`` seconds; each further death of a child that ran for
    less than ``reset_after`` seconds doubles the wait, up to ``maximum``. A child that ran for at
    least ``reset_after`` seconds before dying starts a new series at ``initial``. ``deaths``
    counts the deaths of the current series.
    """

    def __init__(self, initial: float, maximum: float, reset_after: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self.delay: float | None = None  # the last wait, None before a first death
        self.deaths = 0

    def next_delay(self, ran_for: float) -> float:
        """The wait before starting again a child that died after running ``ran_for`` seconds."""
        if self.delay is None or ran_for >= self.reset_after:
            self.delay, self.deaths = self.initial, 1
        else:
            self.delay, self.deaths = min(self.delay * 2, self.maximum), self.deaths + 1
        return self.delay


#: ``after_subprocess_termination(processor, runner, exit_code)``: called for every child that ends.
_Termination = Callable[["EventStreamProcessor", "ESPRunner", int], None]


class ESPRunner:
    """Runs each processor in its own process until SIGTERM/SIGINT or ``shutdown()``.

    Children open their own connections (processors and stores are sent to
    them unconnected; works with the fork and spawn start methods). On
    shutdown each child gets SIGTERM, finishes its current batch and exits;
    children still alive after ``max_seconds_for_processes_to_terminate``
    get SIGKILL. A child stops by itself (within about a second, between events) once the runner
    process is gone, even after SIGKILL. A MemoryEventStore is refused (TypeError).

    With ``restart=True`` (the default) a child that dies (an uncaught error, ``kill -9``, the OOM
    killer, an ``after_fork`` that raises, a child that lost its processor name to another instance)
    is started again after ``restart_delay`` seconds; while it keeps dying within
    ``restart_reset_after`` seconds of its start, the wait doubles up to ``max_restart_delay``, and
    a child that ran longer starts the series again at ``restart_delay``. Every death is logged with
    its exit status or signal and the wait. A child that stopped on purpose is not started again:
    it exited with status 0 (it was sent SIGTERM or SIGINT by someone other than the runner), or its
    error handler gave up (``NoRetry``: status 3). ``restart=False`` only reports deaths.
    A restart never happens once shutdown was requested, also during a wait.

    ``instances`` (an int for every processor, or a mapping of processor name to int; default 1)
    starts that many children per processor, each restarted on its own. The instances of a
    processor with ``partitions = N`` share its partitions (see EventStreamProcessor); of one
    without, one runs it and the others wait as standbys, taking over when it dies.

    ``start()`` returns
    True only if every child ended cleanly (exit status 0); ``exit_statuses`` lists every end, by
    processor name. ``after_subprocess_termination(processor, runner, exit_status)`` is
    called for every child that ends (before it is started again).
    With the ``fork`` start method (the default on Linux) a child copies
    SQLite's in-process lock state: do not write to an SQLite store from other
    threads of this process while the runner starts children, or use
    ``start_method="spawn"`` (the todo example does).
    """

    def __init__(self, processors: Iterable[EventStreamProcessor], store: EventStore, *,
                 max_seconds_for_processes_to_terminate: float = 30,
                 after_fork: Callable[[EventStreamProcessor], None] | None = None,
                 after_subprocess_termination: _Termination | None = None,
                 restart: bool = True, restart_delay: float = 1.0, max_restart_delay: float = 30.0,
                 restart_reset_after: float = 60.0, start_method: str | None = None,
                 instances: int | Mapping[str, int] = 1) -> None:
        if not store.shared_between_processes:
            raise TypeError(f"ESPRunner cannot run processors against {store!r}: its events are "
                            "in this process's memory, and each processor runs in a child process, "
                            "which would never see them; use an SQLite file or a Postgres store "
                            "(or run_processor in a thread)")
        if not 0 < restart_delay <= max_restart_delay:
            raise ValueError(f"ESPRunner: restart_delay must be more than 0 and at most "
                             f"max_restart_delay; got restart_delay={restart_delay!r}, "
                             f"max_restart_delay={max_restart_delay!r}")
        if not restart_reset_after > 0:
            raise ValueError(f"ESPRunner: restart_reset_after must be more than 0 seconds; "
                             f"got {restart_reset_after!r}")
        self.processors = list(processors)
        names = [p.processor_name for p in self.processors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"processor names must be unique; repeated: {duplicates}")
        self.store = store
        self.max_seconds_for_processes_to_terminate = max_seconds_for_processes_to_terminate
        self.after_fork = after_fork
        self.after_subprocess_termination = after_subprocess_termination
        self.restart = restart
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.restart_reset_after = restart_reset_after
        self._context: Any = multiprocessing.get_context(start_method)
        self._shutdown = threading.Event()  # set by shutdown(), from any thread
        self._signalled = False  # set by the signal handler (which must not touch locks)
        self.instances = self._check_instances(instances, names)
        # By child key: the processor name, and ``name/2``, ``name/3``... for its further
        # instances; each child has its own backoff.
        self._children: dict[str, _Child] = {}
        for processor in self.processors:
            self._add_children(processor)
        self.exit_statuses: dict[str, list[int]] = {n: [] for n in names}

    @staticmethod
    def _check_instances(instances: object, names: list[str]) -> dict[str, int]:
        """``instances`` as a count per processor name (ValueError or TypeError naming what is
        wrong)."""
        counts = dict(instances) if isinstance(instances, Mapping) else dict.fromkeys(names,
                                                                                     instances)
        unknown = sorted(set(counts) - set(names))
        if unknown:
            raise ValueError(f"ESPRunner: instances names processors it does not run: {unknown} "
                             f"(its processors: {names})")
        return {name: _check_partitions(f"ESPRunner: instances of {name!r}", count)
                for name, count in counts.items()}

    def _add_children(self, processor: EventStreamProcessor) -> list[_Child]:
        """The children of ``processor`` (one per instance), made when missing."""
        name = processor.processor_name
        children = []
        for number in range(self.instances.get(name, 1)):
            key = name if number == 0 else f"{name}/{number + 1}"
            child = self._children.get(key)
            if child is None:
                backoff = _RestartBackoff(self.restart_delay, self.max_restart_delay,
                                          self.restart_reset_after)
                child = self._children[key] = _Child(key, processor, backoff)
            child.processor = processor
            children.append(child)
        return children

    def shutdown(self) -> None:
        """Ask the runner to stop its children and return from start()."""
        self._shutdown.set()

    def shutdown_requested(self) -> bool:
        """Whether shutdown() was called or a stop signal received."""
        return self._signalled or self._shutdown.is_set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def start_processor(self, processor: EventStreamProcessor) -> None:
        """Start the child processes of ``processor``: one per instance (``instances``)."""
        self.exit_statuses.setdefault(processor.processor_name, [])
        for child in self._add_children(processor):
            self._start_child(child)

    def _start_child(self, child: _Child) -> None:
        name = child.key
        proc = self._context.Process(
            target=_child_main, args=(child.processor, self.store, self.after_fork, os.getpid()),
            name=f"eventsourcery:{name}", daemon=False)
        # The child starts with TERM and INT blocked (the mask survives fork and exec) and
        # unblocks them once its handlers are in place, so an early TERM is a clean stop.
        if self._context.get_start_method() != "fork":
            # Starting multiprocessing's resource tracker unblocks TERM and INT: do it first.
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.process, child.started_at = proc, time.monotonic()
        config.logger.info("ESPRunner: started %s (pid %s)", name, proc.pid)

    def start(self) -> bool:
        """Run until shutdown; return True when every child ended cleanly."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self.store.close()  # never hand an open connection to a child
            for processor in self.processors:
                self.start_processor(processor)
            while not self.shutdown_requested() and any(
                    c.process is not None or c.restart_at is not None
                    for c in self._children.values()):
                self._reap()
                self._restart_due()
                time.sleep(0.05)
        finally:
            try:
                self._terminate_children()  # also when starting a child failed: leave none running
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        config.logger.info("ESPRunner: processes shut down")
        return all(code == 0 for codes in self.exit_statuses.values() for code in codes)

    def _reap(self, stopping: bool = False) -> None:
        """Record the children that ended, and schedule a restart for those that died (unless
        ``stopping``: the runner is terminating its children)."""
        for child in self._children.values():
            proc = child.process
            if proc is None or proc.exitcode is None:
                continue
            proc.join()
            child.process = None
            name, status = child.processor.processor_name, proc.exitcode
            ran_for = time.monotonic() - child.started_at
            self.exit_statuses.setdefault(name, []).append(status)
            if self.after_subprocess_termination is not None:
                try:
                    self.after_subprocess_termination(child.processor, self, status)
                except Exception:
                    config.logger.exception("ESPRunner: after_subprocess_termination failed for %s",
                                            name)
            ended = (f"ESPRunner: process {name} (pid {proc.pid}) ended after {ran_for:.1f} s, "
                     f"{_describe_exit(status)}")
            if stopping or self.shutdown_requested():
                (config.logger.info if status == 0 else config.logger.error)("%s", ended)
            elif status == 0:
                config.logger.warning("%s: it was asked to stop (a SIGTERM or SIGINT not sent by "
                                      "the runner): not restarting it", ended)
            elif status == _EXIT_GAVE_UP:
                config.logger.error("%s: its error handler gave up: not restarting it", ended)
            elif not self.restart:
                config.logger.error("%s: not restarting it (restart=False)", ended)
            else:
                delay = child.backoff.next_delay(ran_for)
                child.restart_at = time.monotonic() + delay
                config.logger.error("%s: restarting it in %s s (death %s in a row)", ended,
                                    f"{delay:g}", child.backoff.deaths)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self._children.values():
            if (child.restart_at is not None and child.restart_at <= now
                and not self.shutdown_requested()):
                child.restart_at = None
                try:
                    self._start_child(child)
                except Exception as exc:  # fork can fail for want of memory: try again later
                    delay = child.backoff.next_delay(0.0)
                    child.restart_at = time.monotonic() + delay
                    config.logger.error("ESPRunner: could not restart %s (%r): trying again in "
                                        "%s s", child.processor.processor_name, exc, f"{delay:g}")

    def _terminate_children(self) -> None:
        for child in self._children.values():
            child.restart_at = None
        alive = [(c.processor.processor_name, c.process) for c in self._children.values()
                 if c.process is not None and c.process.exitcode is None]
        if alive:
            config.logger.info("ESPRunner: sending TERM to %s", [name for name, _ in alive])
        for _, proc in alive:
            with contextlib.suppress(OSError):
                proc.terminate()
        deadline = time.monotonic() + self.max_seconds_for_processes_to_terminate
        while any(proc.exitcode is None for _, proc in alive) and time.monotonic() < deadline:
            time.sleep(0.02)
        for name, proc in alive:
            if proc.exitcode is None:
                config.logger.warning("ESPRunner: sending KILL to %s", name)
                with contextlib.suppress(OSError):
                    proc.kill()
        for _, proc in alive:
            proc.join()
        self._reap(stopping=True)

    # Started from an asyncio application (an ASGI app's lifespan): start_in_background(), stop().
    _background: threading.Thread | None = None
    _outcome: concurrent.futures.Future[bool] | None = None

    def start_in_background(self) -> None:
        """Run ``start()`` on a thread of the runner's own and return at once: that thread starts
        the children and supervises them (restarts included) until ``stop()`` or
        ``stop_async()``. For an ASGI app's lifespan.

        Needs ``start_method="spawn"`` (or ``"forkserver"``), else ValueError: the children then
        start from a new interpreter and copy nothing of this process, whose other threads (the
        event loop's, an AsyncEventStore's, the server's) may hold a lock at any moment, which a
        forked child would wait on forever. Processors and stores must then be picklable
        (classes defined at the top level of an importable module). Give the runner a store
        object of its own: ``start()`` closes the store's idle connections first.
        """
        method = self._context.get_start_method()
        if method == "fork":
            raise ValueError("start_in_background() forks no child from a process whose other "
                             "threads may hold locks: make the runner with "
                             "ESPRunner(..., start_method='spawn') (or 'forkserver')")
        if self._background is not None:
            raise RuntimeError("this ESPRunner was already started in the background")
        outcome: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def supervise() -> None:
            try:
                outcome.set_result(self.start())
            except BaseException as exc:
                config.logger.exception("ESPRunner: the runner failed")
                outcome.set_exception(exc)

        # A daemon thread: should the application exit without stop(), the children stop by
        # themselves (they watch their parent).
        self._outcome = outcome
        self._background = threading.Thread(target=supervise, name="eventsourcery-runner",
                                            daemon=True)
        self._background.start()

    def stop(self) -> bool:
        """Stop a runner started with ``start_in_background()``: ask its children to stop, wait
        until they ended, and return what ``start()`` returns (True when every child ended
        cleanly); an error that stopped the runner is raised here."""
        thread, outcome = self._background, self._outcome
        if thread is None or outcome is None:
            raise RuntimeError("stop() ends a runner started with start_in_background(); "
                               "this one was not")
        self.shutdown()
        thread.join()
        return outcome.result()

    async def stop_async(self) -> bool:
        """``stop()`` as a coroutine (the wait for the children is a thread's, not the loop's)."""
        import asyncio

        return await asyncio.to_thread(self.stop)


@dataclasses.dataclass
class _Child:
    """One child process of the runner: its processor, its current process and its restarts.

    The runner keeps its children by ``key``, today the processor's name; a processor run by several
    children would have one _Child each, under keys of their own, each with its own backoff.
    """

    key: str
    processor: EventStreamProcessor
    backoff: _RestartBackoff
    process: Any = None  # the running multiprocessing.Process, or None
    started_at: float = 0.0
    restart_at: float | None = None  # when a dead child is due to start again


# ---------------------------------------------------------------------------
# Testing helpers: given/when/then for aggregates, and events fed to a
# processor. They raise AssertionError with a readable diff, so they work
# under plain pytest and under unittest alike.
# ---------------------------------------------------------------------------

_P = TypeVar("_P", bound="EventStreamProcessor")


def _describe_event(event: Event | type[Event], *, aggregate: bool = False) -> str:
    """One line per event for diffs: its class (or type name) and body, and with ``aggregate`` the
    aggregate id it goes to; never ids, uuids, versions or times."""
    if isinstance(event, type):
        return f"{event.__name__}(...)"
    name = type(event).__name__ if type(event) is not Event else f"Event[{event.type}]"
    line = f"{name}({', '.join(f'{k}={v!r}' for k, v in event.body.items())})"
    return f"{line} on {event.aggregate_id!r}" if aggregate else line


def _names_aggregate(expected: Event | type[Event] | None) -> bool:
    """True for an expected event instance that names its aggregate (assert_events compares it)."""
    return isinstance(expected, Event) and bool(expected.aggregate_id)


def _event_matches(actual: Event, expected: Event | type[Event]) -> bool:
    if isinstance(expected, type):
        return isinstance(actual, expected) and actual.type == expected.type
    if _names_aggregate(expected) and actual.aggregate_id != expected.aggregate_id:
        return False
    return bool(actual.type == expected.type and actual.body == expected.body)


def assert_events(actual: Iterable[Event], expected: Iterable[Event | type[Event]], *,
                  what: str = "events") -> None:
    """Assert that ``actual`` are ``expected``, in order, by type and body, and by aggregate id
    (where the event goes) when the expected event names one; ids, uuids, versions and timestamps
    are ignored.

    An expected Event class matches any event of that class, on any aggregate; an expected event
    without an ``aggregate_id`` matches that type and body on any aggregate.

    Raises AssertionError showing a diff of the two lists, one event a line (with the aggregate id
    where the expected event names one).
    """
    got, want = list(actual), list(expected)
    if len(got) == len(want) and all(_event_matches(a, e) for a, e in zip(got, want, strict=True)):
        return
    import difflib
    named = [_names_aggregate(want[i] if i < len(want) else None)
             for i in range(max(len(got), len(want)))]
    got_lines = [_describe_event(e, aggregate=named[i]) for i, e in enumerate(got)]
    want_lines = [_describe_event(e, aggregate=named[i]) for i, e in enumerate(want)]
    # a class matching: show it as matched
    for i, (a, e) in enumerate(zip(got, want, strict=False)):
        if isinstance(e, type) and _event_matches(a, e):
            want_lines[i] = got_lines[i]
    diff = difflib.unified_diff(want_lines, got_lines, "expected", "actual",
                                n=max(len(got), len(want)), lineterm="")
    raise AssertionError(f"{what} differ (- expected, + actual):\n" + "\n".join(list(diff)[2:]))


def _given_with_fields(events: Sequence[Event], aggregate_id: str | None) -> list[Event]:
    """Copies of ``events`` with the aggregate id filled in where missing (and ids and versions, per
    aggregate)."""
    versions: dict[str, int] = {}
    result = []
    for position, event in enumerate(events, 1):
        if not isinstance(event, Event):
            raise TypeError(f"given events must be Event instances, not {event!r}")
        target = event.aggregate_id or aggregate_id or ""
        versions[target] = versions.get(target, 0) + 1
        result.append(_with_fields(event, aggregate_id=target, id=event.id or position,
                                   version=event.version or versions[target]))
    return result


class AggregateScenario(typing.Generic[_A]):
    """An aggregate built from given events; ``when(command)`` runs a command,
    ``then``/``then_raises`` check it.

    ``aggregate`` is the instance (inspect its state); ``error`` is what the
    command raised (None if it did not); ``result`` is what it returned.
    """

    def __init__(self, aggregate_class: type[_A], events: Sequence[Event], id: str) -> None:
        self.given = _given_with_fields(events, id)
        self.aggregate: _A = aggregate_class(id, self.given)
        self.error: Exception | None = None
        self.result: Any = None
        self._ran = False

    def when(self, command: Callable[[_A], Any]) -> AggregateScenario[_A]:
        """Run ``command(aggregate)``, e.g. ``lambda order: order.ship("Paris")``; an error is kept
        for then_raises."""
        self._ran = True
        try:
            self.result = command(self.aggregate)
        except Exception as exc:
            self.error = exc
        return self

    @property
    def new_events(self) -> list[Event]:
        """The events the command applied (the aggregate's unsaved changes)."""
        return list(self.aggregate.changes)

    def then(self, *expected: Event | type[Event]) -> list[Event]:
        """Assert that the command succeeded and applied exactly these events (by type and body,
        and by aggregate id where an expected event names one: see ``assert_events``); returns
        them.

        ``then()`` with no events asserts that the command applied none.
        """
        if self.error is not None:
            raise AssertionError(f"expected {len(expected)} new event(s), but the command raised "
                                 f"{type(self.error).__name__}: {self.error}") from self.error
        assert_events(self.new_events, expected, what="new events")
        return self.new_events

    def then_raises(self,
                    exc_type: type[BaseException] | tuple[type[BaseException], ...] = Exception, *,
                    match: str | None = None) -> Exception:
        """Assert that the command raised ``exc_type`` (its message searched with the regex
        ``match``); return it."""
        error = self.error
        if error is None:
            ran = "the command" if self._ran else "no command (call .when(...) first)"
            names = (exc_type.__name__ if isinstance(exc_type, type)
                     else " or ".join(t.__name__ for t in exc_type))
            raise AssertionError(f"expected {names}, but {ran} raised nothing; new events: "
                                 f"{[_describe_event(e) for e in self.new_events]}")
        if not isinstance(error, exc_type):
            raise AssertionError(f"expected {exc_type!r}, but the command raised "
                                 f"{type(error).__name__}: {error}") from error
        if match is not None and not re.search(match, str(error)):
            raise AssertionError(f"{type(error).__name__} raised, but its message {str(error)!r} "
                                 f"does not match {match!r}") from error
        return error


def given(aggregate_class: type[_A], *events: Event,
          id: str = "test-aggregate") -> AggregateScenario[_A]:
    """Start a test: an ``aggregate_class`` with this ``id`` rebuilt from ``events`` (missing ids,
    aggregate ids and versions are filled in). ``es.given(Order, OrderPlaced(total=5)).when(lambda
    o: o.ship()).then(...)``.
    """
    return AggregateScenario(aggregate_class, events, id)


class ProcessorScenario(typing.Generic[_P]):
    """A processor after it was fed the given events: look at its tables and at what it emitted.

    ``store`` holds the given events (as ``given``, stored) and, for a
    reactor, what it emitted (``emitted``).
    """

    def __init__(self, processor: _P, store: EventStore, given: list[Event],
                 emitted: list[Event]) -> None:
        self.processor = processor
        self.store = store
        self.given = given
        self.emitted = emitted

    @property
    def db(self) -> Any:
        """The processor's database connection (``processor.db``)."""
        if not isinstance(self.processor, TableProcessor):
            raise TypeError(f"{self.processor!r} has no database: only projectors and reactors do")
        return self.processor.db

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of a query on the processor's database, as a list of tuples (use
        ``processor.placeholder``)."""
        return [tuple(row) for row in self.db.execute(sql, params).fetchall()]

    def then_emitted(self, *expected: Event | type[Event]) -> list[Event]:
        """Assert that the processor emitted exactly these events (by type and body, and onto the
        aggregate an expected event names: ``ThingDone(aggregate_id="t-1", ...)`` fails for an
        emission onto another one; see ``assert_events``); returns them as stored."""
        assert_events(self.emitted, expected, what="emitted events")
        return self.emitted


class GivenEvents:
    """Events to feed to processors with ``feed(processor)``; see :func:`given_events`."""

    def __init__(self, events: Sequence[Event], aggregate_id: str) -> None:
        for event in events:
            if not isinstance(event, Event):
                raise TypeError(f"given events must be Event instances, not {event!r}")
        self.events = tuple(events)
        self.aggregate_id = aggregate_id

    def feed(self, processor: _P) -> ProcessorScenario[_P]:
        """Store the events, set the processor up and let it process them in one batch.

        A reactor's events go into its own store (a MemoryEventStore is the
        usual choice), and what it emits while processing them is returned
        as ``emitted``; any other processor gets them through a new
        MemoryEventStore (a Projector given ``":memory:"`` needs nothing else).
        """
        store: EventStore = (processor.store if isinstance(processor, Reactor)
                             else MemoryEventStore())
        stored: list[Event] = []
        for event in self.events:
            target = event.aggregate_id or self.aggregate_id
            stored += store.sink(_with_fields(event, aggregate_id=target))
        processor.setup()
        last = max((e.id or 0 for e in stored), default=store.latest_event_id())
        if stored:
            processor.process_batch(stored)
        emitted: list[Event] = []
        while page := store.get_next_from(last + 1):
            emitted += page
            last = page[-1].id or last
        return ProcessorScenario(processor, store, stored, emitted)


def given_events(*events: Event, aggregate_id: str = "test-aggregate") -> GivenEvents:
    """Events for a processor test: ``es.given_events(TodoAdded(title="x")).feed(projector)``.

    Events without an aggregate id get ``aggregate_id``; ids, versions and
    timestamps are assigned by the store they are sunk into.
    """
    return GivenEvents(events, aggregate_id)


# ---------------------------------------------------------------------------
# Asyncio: stores, the repository and subscriptions awaited from an event
# loop. Each call runs the wrapped store's own method (or Repository's) on a
# worker thread, so a store's logic exists once and keeps its guarantees; the
# loop only waits. (asyncio is imported where it is used, so the command line
# and the runner's children never load it.)
# ---------------------------------------------------------------------------

#: How long a task whose call was cancelled waits for the worker thread to finish that call.
_CANCEL_GRACE = 1.0


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Take a finished future's exception, so that asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _await_call(future: concurrent.futures.Future[_T]) -> _T:
    """The outcome of a call running on another thread, with the cancellation rules of
    ``AsyncEventStore._call``."""
    import asyncio

    waiting = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        if not future.cancel():
            waiting.add_done_callback(_retrieve)
            await asyncio.wait({waiting}, timeout=_CANCEL_GRACE)
        raise


class _Job:
    """One call handed to a worker thread, and how its outcome goes back to the loop awaiting it."""

    __slots__ = ("call", "claim", "finished", "future", "loop", "waiter")

    def __init__(self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.call = call
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.claim = [True]  # popped (atomically) by whoever takes the job: thread or cancellation
        self.finished = False
        self.waiter: asyncio.Future[None] | None = None  # for a cancelled task to wait on


def _deliver(job: _Job, result: Any, error: BaseException | None) -> None:
    """On the loop: a finished job's outcome to its future (unless cancelled) and its waiter."""
    job.finished = True
    if not job.future.done():
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)
    if job.waiter is not None and not job.waiter.done():
        job.waiter.set_result(None)


class _Workers:
    """Up to ``size`` threads that run jobs for event loops (leaner than a ThreadPoolExecutor
    behind asyncio.wrap_future: the outcome goes straight to the loop's future, with one
    call_soon_threadsafe)."""

    def __init__(self, size: int, name: str) -> None:
        self.size, self.name = size, name
        self.pid = os.getpid()  # a forked child has none of these threads: it makes its own
        self.queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        # a token per thread free for a job
        self.idle: queue.SimpleQueue[None] = queue.SimpleQueue()

    def submit(self, job: _Job) -> None:
        self.queue.put(job)
        # a new thread only when none is waiting (so that each has a connection it keeps using)
        try:
            self.idle.get_nowait()
        except queue.Empty:
            self._add_thread()

    def _add_thread(self) -> None:
        if len(self.threads) < self.size:
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self.threads)}",
                                      daemon=True)
            self.threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self._claim(job):  # else it was cancelled before it started: it never runs
                result, error = None, None
                try:
                    result = job.call()
                except BaseException as exc:
                    error = exc
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it
                    job.loop.call_soon_threadsafe(_deliver, job, result, error)
                del result, error
            del job
            self.idle.put(None)

    @staticmethod
    def _claim(job: _Job) -> bool:
        """Take the job to run it; False when a cancellation took it first."""
        try:
            job.claim.pop()
            return True
        except IndexError:
            return False

    def shutdown(self) -> None:
        """End the threads once the jobs queued before are done, and wait for them."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()


async def _on_own_thread(fn: Callable[[], _T], name: str) -> _T:
    """``fn()`` run on a thread started for it; once the call is done the thread is gone too."""
    import asyncio

    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def work() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        return await _await_call(future)
    finally:
        while future.done() and thread.is_alive():  # it ends as soon as it handed the outcome over
            await asyncio.sleep(0.001)


class AsyncEventStore(typing.Generic[_S]):
    """Any event store (memory, SQLite, Postgres) for asyncio code: ``await astore.sink(...)``,
    ``async for batch in astore.subscribe(1): ...``.

    Each call runs the wrapped store's own method on one of at most
    ``max_threads`` worker threads of this object, so it takes the same
    arguments and gives the same results and errors as the store, keeps the
    store's guarantees (group commit, fencing, bounded connections) and never
    blocks the event loop. When the task awaiting a call is cancelled, a call
    that has not started yet never runs; a running one is finished by its
    thread, and the task waits for that (up to about a second) before the
    cancellation goes on: a cancelled ``sink`` stores its events entirely or
    not at all. ``aclose()`` (or leaving ``async with``) waits for the calls in
    flight, ends the worker threads and the subscriptions, and closes the
    store; like the store, it may be used again after that (threads and
    connections are made again when needed).
    """

    def __init__(self, store: _S, *, max_threads: int = 10) -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError(f"max_threads must be an int of at least 1, not {max_threads!r}")
        self.store: _S = store
        self.max_threads = max_threads
        self._guard = threading.Lock()
        self._workers: _Workers | None = None
        self._stops: set[threading.Event] = set()  # one per running subscription

    def __repr__(self) -> str:
        return f"AsyncEventStore({self.store!r})"

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` run on a worker thread (in the caller's context variables).

        When the awaiting task is cancelled, a call that has not started never
        runs; one that is running is finished by its thread, and the task waits
        for that (up to ``_CANCEL_GRACE`` seconds) before the cancellation goes
        on, so that a cancelled write has by then happened entirely or not at all.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        job = _Job(functools.partial(contextvars.copy_context().run, fn, *args, **kwargs), loop)
        with self._guard:
            if self._workers is None or self._workers.pid != os.getpid():
                self._workers = _Workers(self.max_threads, "eventsourcery-async")
            self._workers.submit(job)
        try:
            result: _T = await job.future
            return result
        except asyncio.CancelledError:
            if not job.finished:
                try:
                    job.claim.pop()  # not started yet: now it never will
                except IndexError:  # running: wait (a bounded while) for its thread to finish it
                    job.waiter = loop.create_future()
                    await asyncio.wait({job.waiter}, timeout=_CANCEL_GRACE)
            raise

    async def sink(self, event_or_events: Event | Sequence[Event],
                   expected_version: int | None = None) -> list[Event]:
        """``store.sink``: append atomically and return the stored copies."""
        return await self._call(self.store.sink, event_or_events, expected_version)

    async def get_next_from(self, id: int, event_types: EventTypes = None,
                            limit: int = 1000) -> list[Event]:
        """``store.get_next_from``: at most ``limit`` events with ``id >= id``, in id order."""
        return await self._call(self.store.get_next_from, id, event_types, limit)

    async def latest_event_id(self, event_types: EventTypes = None) -> int:
        """``store.latest_event_id``: the highest id (of those types); 0 when none."""
        return await self._call(self.store.latest_event_id, event_types)

    async def get_events_for_aggregate_id(self, aggregate_id: str | _uuid.UUID, *,
                                          from_version: int = 1,
                                          to_version: int | None = None) -> list[Event]:
        """``store.get_events_for_aggregate_id``: one aggregate's events in version order."""
        return await self._call(self.store.get_events_for_aggregate_id, aggregate_id,
                                from_version=from_version, to_version=to_version)

    async def aggregate_version(self, aggregate_id: str | _uuid.UUID) -> int:
        """``store.aggregate_version``: the aggregate's highest stored version; 0 for none."""
        return await self._call(self.store.aggregate_version, aggregate_id)

    async def subscribe(self, from_id: int,
                        event_types: EventTypes = None) -> AsyncIterator[list[Event]]:
        """``store.subscribe`` as an async iterator: non-empty batches from ``from_id`` on, stored
        events first, then new ones as any process commits them, until the loop is left.

        The store's own subscription runs on a thread of its own (never one
        of the worker threads, which it would hold). Breaking out of the loop,
        cancelling the task that iterates, or ``aclose()`` of this object ends
        it within about a second, with its thread and connection.
        """
        import asyncio

        stop = threading.Event()
        batches = self.store.subscribe(from_id, event_types, stop=stop)
        reader = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="eventsourcery-subscribe")
        with self._guard:
            self._stops.add(stop)
        try:
            while True:
                batch = await asyncio.wrap_future(reader.submit(next, batches, None))
                if batch is None:
                    return
                yield batch
        finally:
            stop.set()  # ends the read in flight, which the close below waits for
            with self._guard:
                self._stops.discard(stop)
            # a generator's close() releases what it holds (on Postgres, its LISTEN connection)
            closed = reader.submit(getattr(batches, "close", lambda: None))
            reader.shutdown(wait=False)
            with contextlib.suppress(Exception):
                await asyncio.wait({asyncio.wrap_future(closed)}, timeout=_CANCEL_GRACE)

    async def aclose(self) -> None:
        """Wait for the calls in flight, end the worker threads and subscriptions, then close
        the store."""
        with self._guard:
            workers, self._workers = self._workers, None
            if workers is not None and workers.pid != os.getpid():
                workers = None  # a parent's: not ours to end
            for stop in self._stops:
                stop.set()

        def close() -> None:
            if workers is not None:
                workers.shutdown()
            self.store.close()

        await _on_own_thread(close, "eventsourcery-close")

    async def __aenter__(self) -> AsyncEventStore[_S]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncRepository:
    """``Repository`` for asyncio code: ``todo = await arepo.load(Todo, id)``,
    ``await arepo.save(todo)``.

    Each ``load`` and ``save`` is a ``Repository``'s own (snapshots, several
    aggregates saved in one transaction), run whole on one worker thread of
    the AsyncEventStore, with its results and errors. A ``save`` whose task is
    cancelled is finished or not started, never half done (see AsyncEventStore).
    """

    def __init__(self, store: AsyncEventStore[Any]) -> None:
        self.store = store
        self.repository = Repository(store.store)  # the logic it runs

    async def load(self, aggregate_class: type[_A], aggregate_id: str | _uuid.UUID) -> _A:
        """``Repository.load``: the aggregate rebuilt from its events (and snapshot)."""
        return await self.store._call(self.repository.load, aggregate_class, aggregate_id)

    async def save(self, *aggregates: Aggregate) -> list[Event]:
        """``Repository.save``: sink each aggregate's changes (several in one transaction);
        return the stored events."""
        return await self.store._call(self.repository.save, *aggregates)


# ---------------------------------------------------------------------------
# The backend interface, 1: rows. What a store module (like eventsourcery_pg)
# builds on, listed in __backend__: rows as every store writes and reads them,
# the checks every store makes of its arguments, and the encoding of events
# into rows and back.
# ---------------------------------------------------------------------------

class EventRow(NamedTuple):
    """One stored event, in the column order every store writes and reads.

    ``encode_events`` makes them with ``id`` and ``version`` None (the store
    assigns both); ``decode_rows`` reads any sequences in this order, such as
    a database cursor's rows. ``created_at`` is an aware UTC datetime or ISO
    text; ``body`` is JSON text or an already decoded dict, and so is
    ``metadata``, which is None when the event has none.
    """

    id: int | None
    uuid: str
    aggregate_id: str
    type: str
    version: int | None
    created_at: _dt.datetime | str
    correlation_id: str | None
    causation_id: str | None
    metadata: str | Mapping[str, Any] | None
    body: str | Mapping[str, Any]


#: The columns of the events table, in EventRow order.
EVENT_COLUMNS = EventRow._fields


class Snapshot(NamedTuple):
    """An aggregate's state at one version, as a store keeps it (in column order): a cache of a
    replay.

    ``aggregate_type`` names the aggregate class (``module.qualname``), ``version`` the last event
    the state includes and ``last_event_uuid`` that event's uuid (a load checks it, so a snapshot of
    a history that is no longer there is never used); ``snapshot_version`` is the class's
    ``snapshot_version`` when it was taken; ``state`` is JSON text; ``created_at`` an aware datetime
    or ISO text.
    """

    aggregate_id: str
    aggregate_type: str
    version: int
    snapshot_version: int
    last_event_uuid: str
    state: str
    created_at: _dt.datetime | str


#: The columns of a snapshots table, in Snapshot order.
SNAPSHOT_COLUMNS = Snapshot._fields


def type_names(event_types: EventTypes) -> tuple[str, ...] | None:
    """Type names from names and Event classes (None stays None: every type)."""
    if event_types is None:
        return None
    if isinstance(event_types, (str, type)):
        event_types = (event_types,)
    names = []
    for t in event_types:
        if isinstance(t, str):
            names.append(check_text("an event type name", t))
        elif isinstance(t, type) and issubclass(t, Event) and t is not Event:
            names.append(t.type)
        else:
            raise TypeError(f"event_types must hold type names or Event subclasses, not {t!r}")
    return tuple(names)


#: How deeply an event body may nest lists and objects (deeper bodies are a TypeError at sink, or
#: fail to decode): the bound comes from Python's recursion limit, and a few hundred levels are
#: always safe.
MAX_BODY_DEPTH = 500

#: The largest id or version a store holds (a signed 64-bit integer): bounds past it are clamped to
#: it.
MAX_POSITION = 2**63 - 1


def check_position(name: str, value: object) -> int:
    """An id, version or bound argument checked and clamped to ``0..MAX_POSITION``: a TypeError
    naming the argument unless it is an ``int`` (a ``bool`` is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    return min(max(int(value), 0), MAX_POSITION)


def check_limit(limit: object) -> int:
    """A read's ``limit`` checked: a TypeError unless an ``int`` (a ``bool`` is not), a ValueError
    when negative."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__} ({limit!r})")
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return min(limit, MAX_POSITION)


def check_text(what: str, value: str) -> str:
    """``value`` unless it holds a NUL character or a lone surrogate, which no database stores as
    given: then InvalidEventError naming ``what``."""
    if "\x00" in value:
        raise InvalidEventError(f"{what} must not contain NUL characters: {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(f"{what} must not contain lone surrogates: {value!r}") from None
    return value


def check_aggregate_id(aggregate_id: object) -> str:
    """An aggregate id argument as the str it is stored as (a ``uuid.UUID`` becomes its string)."""
    if isinstance(aggregate_id, _uuid.UUID):
        return str(aggregate_id)
    if not isinstance(aggregate_id, str):
        raise TypeError("aggregate_id must be a str or uuid.UUID, not "
                        f"{type(aggregate_id).__name__}")
    return check_text("an aggregate id", aggregate_id)


def batch_size() -> int:
    """``config.subscription_batch_size``, checked: a ValueError below 1 (a subscriber would wait
    for ever)."""
    size = config.subscription_batch_size
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"subscription_batch_size must be an int, not {size!r}")
    if size < 1:
        raise ValueError(f"subscription_batch_size must be at least 1, got {size}")
    return size


def version_range(from_version: object, to_version: object) -> tuple[int, int]:
    """``(first, last)`` versions a partial aggregate read covers, checked (see check_position);
    ``first`` is at least 1, and ``to_version=None`` means MAX_POSITION. ``first > last`` matches
    nothing."""
    first = max(check_position("from_version", from_version), 1)
    last = MAX_POSITION if to_version is None else check_position("to_version", to_version)
    return first, last


def _encode_body(event: Event) -> str:
    """The event's body as JSON text; a clear TypeError names the field that cannot be encoded."""
    cls = event.__class__
    if cls is Event and not isinstance(event.__dict__["body"], dict):
        raise TypeError(f"the body of a generic {event.type!r} event must be a dict (a JSON "
                        f"object), not {type(event.__dict__['body']).__name__}")
    try:
        if cls is Event:
            body = event.__dict__["body"]
            text = _json_encode(body)
        else:
            text = _json_encode(_codec(cls).encode_fields(event))
    except (TypeError, ValueError, RecursionError) as exc:
        raise _field_error(event, exc) from exc
    if (text.count("[") + text.count("{") > MAX_BODY_DEPTH
        and _nesting(_parse_body(text)) > MAX_BODY_DEPTH):
        raise _field_error(event, RecursionError())
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _field_error(event, exc) from exc
    if cls is Event and event.type in _registry:
        _check_loadable(event, _registry[event.type])
    return text


def _encode_metadata(event: Event, metadata: Mapping[str, Any]) -> str:
    """An event's application metadata as JSON text: str keys, JSON scalar values (finite
    numbers)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata of a {event.type!r} event must be a mapping, not "
                        f"{type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys of a {event.type!r} event must be str, not "
                            f"{type(key).__name__} ({key!r})")
        check_text(f"metadata key {key!r}", key)
        if isinstance(value, str):
            check_text(f"metadata value {key!r}", value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"metadata {key!r} of a {event.type!r} event is {value!r}; JSON has no "
                            "NaN or infinity")
        elif value is not None and not isinstance(value, (int, float)):  # bool is an int
            raise TypeError(f"metadata {key!r} of a {event.type!r} event must be a JSON scalar "
                            f"(str, int, float, bool or None), not {type(value).__name__}")
    return _json_encode(metadata if type(metadata) is dict else dict(metadata))


def _check_loadable(event: Event, cls: type[Event]) -> None:
    """InvalidEventError naming the type and field unless ``cls`` can load the generic event's body:
    stored, it would fail every reader of its aggregate and every subscriber at its position."""
    codec = _codec(cls)
    field: str | None = None
    try:
        data = dict(event.__dict__["body"])
        if codec.upcast:
            data = cls.upcast(data)
        for name in codec.names:
            if name not in data and name not in codec.defaults:
                field = name
                raise ValueError("it is missing and has no default")
        data = codec.fill(data)
        for field, decode in codec.decoders:
            if data[field] is not None:
                decode(data[field])
    except Exception as exc:
        what = f"field {field!r}" if field else "its body"
        raise InvalidEventError(f"a generic {event.type!r} event cannot be stored: "
                                f"{cls.__qualname__} cannot load {what} ({exc}); nothing was "
                                "written") from exc


def _nesting(value: Any) -> int:
    """How deeply lists and dicts nest in a decoded JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _field_error(event: Event, exc: Exception) -> TypeError:
    fields: list[tuple[str, Any, Converter | None]]
    if event.__class__ is Event:
        fields = [(name, value, None) for name, value in event.__dict__["body"].items()]
    else:
        codec = _codec(event.__class__)
        encoders = dict(codec.encoders)
        fields = [(name, event.__dict__[name], encoders.get(name)) for name in codec.names]
    for name, value, encode in fields:
        try:
            text = _json_encode(encode(value) if encode is not None and value is not None
                                else value)
            text.encode("utf-8")
            if isinstance(exc, RecursionError) and _nesting(_parse_body(text)) >= MAX_BODY_DEPTH:
                raise RecursionError
        except RecursionError:
            return TypeError(f"cannot serialise field {name!r} of event type {event.type!r}: it "
                             "nests lists and objects deeper than es.MAX_BODY_DEPTH "
                             f"({MAX_BODY_DEPTH}) levels")
        except UnicodeEncodeError:
            return TypeError(f"cannot store field {name!r} of event type {event.type!r}: it holds "
                             "a lone surrogate")
        except (TypeError, ValueError) as field_exc:
            return TypeError(
                f"cannot serialise field {name!r} of event type {event.type!r}: {field_exc}")
    return TypeError(f"cannot serialise event of type {event.type!r}: {exc}")


def encode_events(event_or_events: Event | Sequence[Event],
                  expected_version: object = None) -> tuple[list[Event], str, list[EventRow]]:
    """Validate a sink's arguments and encode its events; raises before anything touches a database.

    Returns the events, their aggregate id and one EventRow per event, with
    ``id`` and ``version`` None, ``created_at`` an aware UTC datetime (now,
    when the event had none) and ``body`` JSON text. ``expected_version``
    must be None or an ``int`` (TypeError otherwise).
    """
    if (expected_version is not None
        and (isinstance(expected_version, bool) or not isinstance(expected_version, int))):
        raise TypeError("expected_version must be an int or None, not "
                        f"{type(expected_version).__name__} ({expected_version!r})")
    events = [event_or_events] if isinstance(event_or_events, Event) else list(event_or_events)
    if not events:
        raise AtomicWriteToMultipleAggregatesNotSupported("sink() needs at least one event")
    for e in events:
        if not isinstance(e, Event):
            raise TypeError(f"sink() takes Event instances, not {type(e).__name__}")
    aggregate_id = events[0].aggregate_id
    if not isinstance(aggregate_id, str) or not aggregate_id:
        raise InvalidEventError(f"event {events[0].type!r} has an empty or non-string "
                                f"aggregate_id: {aggregate_id!r}")
    check_text("an aggregate id", aggregate_id)
    if any(e.aggregate_id != aggregate_id for e in events):
        ids = sorted({str(e.aggregate_id) for e in events})
        raise AtomicWriteToMultipleAggregatesNotSupported(
            f"one sink() writes one aggregate, got {ids}")
    now = None
    rows = []
    for e in events:
        d = e.__dict__
        type_name = e.type
        if not isinstance(type_name, str) or not type_name:
            raise InvalidEventError(f"event type name must be a non-empty str, got {type_name!r}")
        check_text("an event type name", type_name)
        if not isinstance(d["uuid"], str) or not d["uuid"]:
            raise InvalidEventError(f"event uuid must be a non-empty str, got {d['uuid']!r}")
        check_text("an event uuid", d["uuid"])
        for key in ("correlation_id", "causation_id"):
            value = d[key]
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidEventError(f"{key} of a {type_name!r} event must be a str or "
                                            f"None, not {type(value).__name__} ({value!r})")
                check_text(key, value)
        created_at = d["created_at"]
        if created_at is None:
            created_at = now = now or _dt.datetime.now(_dt.timezone.utc)
        elif not isinstance(created_at, _dt.datetime):
            raise InvalidEventError(f"created_at must be a datetime, got {created_at!r}")
        elif created_at.tzinfo is None:
            raise InvalidEventError(f"created_at of a {type_name!r} event must be timezone-aware, "
                                    f"got {created_at!r}")
        elif created_at.utcoffset():
            created_at = created_at.astimezone(_dt.timezone.utc)
        metadata = d["metadata"]
        rows.append(EventRow(None, d["uuid"], aggregate_id, type_name, None,
                             created_at, d["correlation_id"], d["causation_id"],
                             _encode_metadata(e, metadata) if metadata else None, _encode_body(e)))
    return events, aggregate_id, rows


def stored_copies(events: list[Event], rows: list[EventRow], first_id: int,
                  first_version: int) -> list[Event]:
    """The events as stored: ids and versions counted from the first, ``created_at`` from their
    rows."""
    return [_with_fields(e, id=first_id + i, version=first_version + i, created_at=row.created_at)
            for i, (e, row) in enumerate(zip(events, rows, strict=True))]


_json_scan: Callable[[str, int], tuple[Any, int]] = (
    json.JSONDecoder().scan_once)  # type: ignore[attr-defined]
# (the C scanner, without decode()'s two whitespace regexes per call)


def _parse_body(text: str) -> Any:
    try:
        value, end = _json_scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"body is not JSON (at character {exc.value})") from None
    if end != len(text) and text[end:].strip():
        raise ValueError(f"body has extra data after character {end}")
    return value


def decode_rows(rows: Iterable[Sequence[Any]]) -> list[Event]:
    """Build the events stored rows describe (in EventRow order): each of its registered class, or a
    generic Event; a row that cannot be decoded raises CorruptEventError naming its id.

    This is the hot path of every read.
    """
    events: list[Event] = []
    append = events.append
    new = object.__new__
    set_dict = object.__setattr__
    fromiso = _dt.datetime.fromisoformat
    codecs: dict[str, _FieldCodec | None] = {}
    for (event_id, event_uuid, aggregate_id, type_name, version, created_at, correlation, causation,
         meta, body) in rows:
        try:
            if type_name in codecs:
                codec = codecs[type_name]
            else:
                cls = _registry.get(type_name)
                codec = codecs[type_name] = None if cls is None else _codec(cls)
            data = _parse_body(body) if type(body) is str else dict(body)
            if type(data) is not dict:
                raise ValueError(f"body is a JSON {type(data).__name__}, not an object")
            if type(created_at) is str:
                created_at = fromiso(created_at)
            if created_at.tzinfo is None:
                raise ValueError(f"created_at {created_at.isoformat()} has no time zone")
            if meta is None:
                meta = {}
            else:
                meta = _parse_body(meta) if type(meta) is str else dict(meta)
                if type(meta) is not dict:
                    raise ValueError(f"metadata is a JSON {type(meta).__name__}, not an object")
            if codec is None:
                event = new(Event)
                set_dict(event, "__dict__", {
                    "id": event_id, "uuid": event_uuid, "aggregate_id": aggregate_id,
                    "version": version, "created_at": created_at, "correlation_id": correlation,
                    "causation_id": causation, "metadata": meta, "type": type_name, "body": data,
                    "__dataclass_fields__": _GENERIC_FIELDS})
                append(event)
                continue
            if codec.upcast:
                data = codec.cls.upcast(data)
            if data.keys() != codec.name_set:
                data = codec.fill(data)
            for name, decode in codec.decoders:
                value = data[name]
                if value is not None:
                    data[name] = decode(value)
            data["id"] = event_id
            data["uuid"] = event_uuid
            data["aggregate_id"] = aggregate_id
            data["version"] = version
            data["created_at"] = created_at
            data["correlation_id"] = correlation
            data["causation_id"] = causation
            data["metadata"] = meta
            event = new(codec.cls)
            set_dict(event, "__dict__", data)
            append(event)
        except Exception as exc:
            error = CorruptEventError(
                f"stored event {event_id} ({type_name}) cannot be decoded: {exc!r}")
            error.event_id = event_id
            raise error from exc
    return events


# ---------------------------------------------------------------------------
# The backend interface, 2: waiting and writing together. The stop signal of
# subscribe(), and group commit: the writes of several threads in one commit.
# ---------------------------------------------------------------------------

class Stopper:
    """A ``stop`` argument (threading.Event, no-argument callable or None) that can be asked and
    slept on."""

    def __init__(self, stop: StopSignal) -> None:
        self._event = stop if isinstance(stop, threading.Event) else None
        self._callable: Callable[[], bool] | None = (None if isinstance(stop, threading.Event)
                                                     else stop)

    def is_set(self) -> bool:
        """Whether the stop signal is set."""
        if self._event is not None:
            return self._event.is_set()
        return bool(self._callable()) if self._callable is not None else False

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds``, returning early once the stop signal is set."""
        if self._event is not None:
            self._event.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not self.is_set():  # in slices, so a stop set by a signal handler is seen soon
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))


_T = TypeVar("_T")


class _Write(typing.Generic[_T]):
    """One thread's write (a GroupCommit request), handed to whichever thread commits it, and its
    outcome."""

    __slots__ = ("work", "result", "error", "done", "leads", "woken")

    def __init__(self, work: Any) -> None:
        self.work = work
        self.result: _T | None = None
        self.error: BaseException | None = None
        self.done = False  # the outcome is in
        # its thread is to wait for the writer's lock and commit what is queued then
        self.leads = False
        self.woken = threading.Event()  # set when either becomes true

    def outcome(self) -> _T:
        """The work's result, or its error raised."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # (None only when _T admits it)


class _WriterQueue:
    """The writes of threads that found the writer busy, and whether one of those threads leads.

    Whoever writes next commits every write queued at that moment. So that no
    write waits for nothing, one waiting thread, the leader, writes (or waits
    for the writer) instead of waiting for its outcome: a thread that finds no
    leader becomes it, and a leader that is done hands the duty on to the
    thread of the first write still queued, or leaves none when none is.
    """

    __slots__ = ("mutex", "waiting", "leader")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.waiting: list[_Write[Any]] = []
        self.leader = False

    def join(self, write: _Write[Any]) -> bool:
        """Queue ``write``; True when the caller becomes the leader (there was none)."""
        with self.mutex:
            self.waiting.append(write)
            if self.leader:
                return False
            self.leader = write.leads = True
            return True

    def take(self) -> list[_Write[Any]]:
        """Every write queued now, out of the queue."""
        if not self.waiting:  # (a write queued just after this has a leader to take it)
            return []
        with self.mutex:
            taken, self.waiting = self.waiting, []
        return taken

    def wait_turn(self, write: _Write[Any]) -> bool:
        """Queue ``write`` and wait: True when its thread is to lead (there was no leader, or the
        lead was handed to it), False once its outcome is in. A wait interrupted (KeyboardInterrupt)
        leaves the queue without stranding it."""
        if self.join(write):
            return True
        try:
            write.woken.wait()
        except BaseException:
            self.leave(write)
            raise
        return write.leads

    def lead_alone(self) -> bool:
        """Become the leader if there is none and nothing is queued (a write of one, at once)."""
        with self.mutex:
            if self.leader or self.waiting:
                return False
            self.leader = True
            return True

    def leave(self, write: _Write[Any]) -> None:
        """A queued write whose thread was interrupted while it waited: out of the queue (not
        written, unless it was taken already), handing the lead on if it had just been given it."""
        with self.mutex:
            if write in self.waiting:
                self.waiting.remove(write)
            handed = write.leads
        if handed:
            self.hand_on()

    def hand_on(self) -> None:
        """The leader is done: the thread of the first write still queued leads next, or nobody
        does."""
        with self.mutex:
            if not self.waiting:
                self.leader = False
                return
            successor = self.waiting[0]
            successor.leads = True
        successor.woken.set()


class GroupCommit:
    """Writes from threads of one process committed together: one commit (one fsync) for all that
    wait.

    ``write(request)`` returns the request's outcome. A thread that finds
    nobody writing writes its request at once (a group of one). Requests that
    arrive meanwhile queue; one of their threads leads: it takes every request
    queued at that moment, calls ``write_group(requests)`` once, hands each
    waiting thread its outcome, and passes the lead to the first request that
    arrived meanwhile. So a thread alone writes at once, and threads that
    arrive while a commit is under way share the next one, in arrival order.

    ``write_group`` returns one outcome per request, in order: a result, or
    an exception, which ``write`` raises in that request's thread. If it
    raises, every request of the group raises that error (an interruption,
    such as KeyboardInterrupt, is raised in the thread it interrupted, and
    the others of its group get ``abandoned(exc)``, by default a StoreError).

    ``writer_lock``, where the writes share one connection (SQLite's writer),
    returns the lock that keeps other threads off it: the leader holds it
    while it takes the queue, so the requests that arrive while it waits for
    the lock join its group; and a thread that finds it free, or holds it
    already (inside a transaction of its own), writes at once, with every
    request queued then.
    """

    def __init__(self, write_group: Callable[[list[Any]], list[Any]], *,
                 writer_lock: Callable[[], threading.RLock] | None = None,
                 abandoned: Callable[[BaseException], BaseException] | None = None) -> None:
        self.write_group = write_group
        self.writer_lock = writer_lock
        self.abandoned = abandoned
        self._reset()

    def __getstate__(self) -> dict[str, Any]:
        return {"write_group": self.write_group, "writer_lock": self.writer_lock,
                "abandoned": self.abandoned}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._writers = _WriterQueue()

    @property
    def waiting(self) -> int:
        """How many requests wait for a group to be written (the one being written not counted)."""
        return len(self._writers.waiting)

    def write(self, request: Any) -> Any:
        """Write ``request`` in the next group; its outcome once that group has been written."""
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent's threads and queue are not here
        writers = self._writers
        lock = self.writer_lock() if self.writer_lock is not None else None
        if lock is not None:
            if lock.acquire(False):  # the writer is free, or this thread's already
                try:
                    waiting = writers.take()
                    if not waiting:
                        return self._write_alone(request)
                    own: _Write[Any] = _Write(request)
                    self._write([own, *waiting])
                    return own.outcome()
                finally:
                    lock.release()
        elif writers.lead_alone():  # nobody else is writing: a group of one, at once
            try:
                return self._write_alone(request)
            finally:
                writers.hand_on()
        own = _Write(request)
        if not writers.wait_turn(own):
            return own.outcome()
        try:  # this thread leads: once it may write it writes what is queued (its own, unless a
            with lock if lock is not None else contextlib.nullcontext():  # thread took it first)
                group = writers.take()
                if group:
                    self._write(group)
        finally:
            writers.hand_on()
        return own.outcome()

    def _write_alone(self, request: Any) -> Any:
        """Write ``request`` as a group of one, in the calling thread; its outcome."""
        (outcome,) = self.write_group([request])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _write(self, group: list[_Write[Any]]) -> None:
        """Write ``group`` with one call of ``write_group``; give every write its outcome and wake
        the threads waiting for them."""
        interrupted: BaseException | None = None
        try:
            outcomes = self.write_group([w.work for w in group])
            if len(outcomes) != len(group):
                raise RuntimeError(
                    f"write_group gave {len(outcomes)} outcomes for {len(group)} requests")
        except Exception as exc:  # noqa: BLE001 - every request of the group raises it
            outcomes = [exc] * len(group)
        except BaseException as exc:  # this thread was interrupted: the others are told, it raises
            interrupted = exc
            outcomes = [self._abandoned(exc) for _ in group]
        for write, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                write.error = outcome
            else:
                write.result = outcome
            write.done = True
            write.woken.set()
        if interrupted is not None:
            raise interrupted

    def _abandoned(self, exc: BaseException) -> BaseException:
        if self.abandoned is not None:
            return self.abandoned(exc)
        error = StoreError("the thread writing this request with others was interrupted "
                           f"({exc!r}); whether it was stored is not known: look it up before "
                           "writing it again")
        error.__cause__ = exc
        return error


# ---------------------------------------------------------------------------
# The backend interface, 3: Database. Connections to one SQL database (one per
# process, or lent to threads from a bounded pool) with a reentrant transaction,
# which a SQL backend completes by saying how to connect and how its SQL differs.
# ---------------------------------------------------------------------------

class _Session:
    """One connection and the transaction open on it: the process's (shared by its threads), or one
    thread's."""

    __slots__ = ("conn", "depth", "holds", "lock", "owner", "pinned", "thread", "written")

    def __init__(self, thread: threading.Thread | None) -> None:
        self.conn: Any = None
        self.depth = 0  # transaction() blocks open on the connection (savepoints beyond the first)
        self.holds = 0  # with blocks (reads, transactions, borrow()) using the connection now
        # the thread took its connection with no block (``Database.connection``)
        self.pinned = False
        # keys noted by Database.note_written() in the open transaction
        self.written: list[str] = []
        self.lock = threading.RLock()
        # the thread (ident) inside transaction() while depth > 0; after, the last one
        self.owner = 0
        self.thread = thread  # the thread whose session this is (None: shared by the process)


class _OnSession:
    """The calling thread's connection (its own, or the process's) under its session's lock, for one
    ``with`` block (Database.reading). (A class, not a generator: every read passes here.)"""

    __slots__ = ("database", "session")

    def __init__(self, database: Database, session: _Session) -> None:
        self.database = database
        self.session = session

    def __enter__(self) -> Any:
        session = self.session
        session.lock.acquire()
        try:
            return self.database._hold(session)
        except BaseException:
            session.lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        session = self.session
        try:
            self.database._let_go(session)
        finally:
            session.lock.release()


class _Pool:
    """The connections a Database lends to its threads (in one process): at most ``size`` open at
    once.

    A thread takes one for a block (a read, a transaction, a group of sinks) and keeps it after, so
    that its next block needs no hand-over, until another thread needs one: a thread that finds no
    idle connection opens one while fewer than ``size`` are open, else takes one that another thread
    keeps but is not using (``Database._take_unused``), else waits, up to ``timeout`` seconds, then
    gets a StoreError. While threads wait, a thread gives its connection back at the end of its
    block.
    """

    __slots__ = ("cond", "idle", "opened", "size", "timeout", "waiting")

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.cond = threading.Condition(threading.Lock())
        self.idle: list[Any] = []  # connections given back, the most recent last
        self.opened = 0  # connections open: lent out, kept by a thread, or idle
        self.waiting = 0  # threads waiting for one

    def take(self, database: Database) -> Any:
        """An idle connection, or a new one while fewer than ``size`` are open, or one another
        thread keeps unused; else wait for one."""
        cond = self.cond
        with cond:
            if self.idle:
                return self.idle.pop()
            room = self.opened < self.size
            if room:
                self.opened += 1
            else:
                self.waiting += 1
        if room:
            # (opened outside the lock: threads open theirs side by side)
            return self._new(database)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                conn = database._take_unused()
                if conn is not None:
                    return conn
                with cond:
                    if self.idle:
                        return self.idle.pop()
                    if self.opened < self.size:
                        self.opened += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreError(
                            f"all {self.size} connections of {database!r} stayed in use for "
                            f"connection_timeout={self.timeout:g} s ({self.waiting} threads "
                            "waiting for one): no connection for this thread "
                            f"(max_connections={self.size}); raise max_connections (within what "
                            "the server allows), use fewer threads at once, or keep each "
                            "transaction() short (a thread keeps its connection throughout)")
                    # in slices: a connection kept by a thread that is between blocks can be taken
                    cond.wait(min(left, 0.05))
        finally:
            with cond:
                self.waiting -= 1
        return self._new(database)

    def _new(self, database: Database) -> Any:
        """A new connection, its place counted already (freed again if it cannot be opened)."""
        try:
            return database._create_thread_connection()
        except BaseException:
            self.forget()
            raise

    def give_back(self, conn: Any) -> None:
        with self.cond:
            self.idle.append(conn)
            self.cond.notify()

    def forget(self) -> None:
        """One connection was closed (or could not be opened): its place is free."""
        with self.cond:
            self.opened -= 1
            self.cond.notify()

    def drain(self) -> list[Any]:
        """Take every idle connection out (to be closed by the caller; their places are free)."""
        with self.cond:
            idle, self.idle = self.idle, []
            self.opened -= len(idle)
            self.cond.notify_all()
        return idle


def check_pool_arguments(max_connections: object, connection_timeout: object) -> None:
    """Raise TypeError or ValueError unless ``max_connections`` is an int of at least 1 and
    ``connection_timeout`` a finite number of seconds, 0 or more."""
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise TypeError(f"max_connections must be an int (at least 1), not {max_connections!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
    if isinstance(connection_timeout, bool) or not isinstance(connection_timeout, (int, float)):
        raise TypeError("connection_timeout must be a number of seconds, not "
                        f"{connection_timeout!r}")
    if not 0 <= connection_timeout < float("inf"):
        raise ValueError("connection_timeout must be a number of seconds, 0 or more (not NaN nor "
                         f"infinite), not {connection_timeout!r}")


class Database(abc.ABC):
    """Connections to one SQL database, one per process or one per thread, with a reentrant
    ``transaction()``.

    What every SQL backend needs done the same way lives here: a connection
    is opened in the process (and thread) that uses it, on first use; after a
    fork the inherited connections (the parent's sessions) are abandoned,
    never used nor closed; pickling leaves the connections behind, so stores,
    trackers and projectors can be sent to ESPRunner's children;
    ``transaction()`` is ``begin_statement`` ... COMMIT, and nested use a
    savepoint.

    Threads: with ``connection_per_thread`` False (SQLite's writer) the
    process has one connection, and ``lock``, a reentrant lock, keeps other
    threads off it while one uses it (a transaction holds it throughout).
    With ``connection_per_thread`` True (Postgres) each thread's
    ``transaction()`` is its own, on a connection lent to that thread from
    the database's pool for each block (``reading()``, ``transaction()``,
    ``borrow()``), and ``lock`` is that thread's. The pool holds at most
    ``max_connections`` connections (per process). A thread keeps its
    connection between blocks until another thread needs one: a thread that
    finds none idle and the pool full takes one that another thread keeps
    but is not using, else waits for one to be given back, up to
    ``connection_timeout`` seconds, then gets a StoreError saying so. A
    thread keeps its connection for its whole transaction; one that takes
    ``connection`` outside any block keeps it until the thread ends (or
    ``close()``). Either way
    ``in_transaction()`` answers for the calling thread, and ``reading()``
    gives a connection to read on that waits for no other thread where the
    backend can (one from the pool; SQLite's reader connections, which
    come from the same kind of pool, bounded the same way).

    A backend supplies ``_create_connection()`` (a new connection in
    autocommit mode, ready to use), ``_connection_in_transaction()``, its
    ``placeholder``, and how it creates, names and drops tables
    (``create_tables``, ``drop_tables``, ``qualify``).

    Errors: no driver exception leaves a store. ``driver_errors`` are the
    driver's exception classes, and ``error(exc, doing)`` the es error one of
    them means (StoreError, or CorruptEventError for damaged data), raised
    ``from`` it; ``transaction()`` raises it for a failed BEGIN, SAVEPOINT or
    COMMIT (and rolls back). A connection found unusable before use is opened
    again, except inside a transaction: then its work is lost and that is a
    StoreError.
    """

    #: the parameter marker of the driver's SQL
    placeholder: ClassVar[str] = "?"
    #: the statement that opens a write transaction
    begin_statement: ClassVar[str] = "BEGIN"
    #: a connection per thread (True), or one per process shared by its threads under ``lock``
    #: (False)
    connection_per_thread: ClassVar[bool] = False
    #: connections inherited through fork(): kept referenced so they are never finalised in the
    #: child
    _abandoned: ClassVar[list[Any]] = []
    #: the driver's exception classes, which ``error()`` turns into es errors
    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self, *, max_connections: int = 10, connection_timeout: float = 30.0) -> None:
        check_pool_arguments(max_connections, connection_timeout)
        self.max_connections = max_connections
        self.connection_timeout = float(connection_timeout)
        self._pid = 0
        self._reset()

    def _reset(self) -> None:
        """Forget every connection (after a fork, or in an unpickled copy)."""
        self._shared = _Session(None)  # the process's connection
        self._local = threading.local()  # .session: this thread's own
        self._sessions: list[_Session] = []  # every thread's, to hand ended threads' connections on
        self._pool = _Pool(self.max_connections, self.connection_timeout)  # what threads borrow
        self._registry = threading.Lock()  # guards _sessions and commits
        self.commits = 0  # commits made through this object, in this process

    @abc.abstractmethod
    def _create_connection(self) -> Any:
        """Open and prepare a new connection in autocommit mode (DB-API ``execute`` returning a
        cursor)."""

    def _create_thread_connection(self) -> Any:
        """A new connection for the pool that threads borrow from (by default
        ``_create_connection()``; SQLite's are read-only readers beside its one writer)."""
        return self._create_connection()

    @abc.abstractmethod
    def _connection_in_transaction(self, conn: Any) -> bool:
        """Whether ``conn`` has a transaction open on the server."""

    def _connection_usable(self, conn: Any) -> bool:
        """False once a connection is known to be closed or lost (it is then opened again)."""
        return True

    def _close_connection(self, conn: Any) -> None:
        conn.close()

    def _began(self, conn: Any) -> None:  # noqa: B027 - a hook; most backends need nothing here
        """Called once ``begin_statement`` has opened a (top-level) transaction; raise to refuse
        it."""

    def error(self, exc: Exception, doing: str) -> StoreError:
        """The es error that driver exception ``exc``, raised while trying to ``doing``, means;
        raise it ``from exc``. A backend names damaged data (CorruptEventError), lost connections,
        full disks, ..."""
        return StoreError(f"cannot {doing} ({self!r}): {exc}")

    def note_written(self, keys: Sequence[str]) -> None:
        """Note that the calling thread's open transaction has written rows known by ``keys`` (a
        sink: its events' uuids), so that a COMMIT whose answer is lost can be resolved by looking
        them up (``_commit_lost``). Keys noted inside a savepoint that rolls back are forgotten with
        it."""
        session = self._session()
        if session.depth:
            session.written.extend(keys)

    def _connection_lost(self, exc: Exception) -> bool:
        """Whether driver exception ``exc`` means the connection itself is gone (its session ended,
        so the server rolled back what it had not committed), not that a statement failed. A read
        outside a transaction, or a BEGIN, that meets it is run again once on a new connection."""
        return False

    def _commit_lost(self, exc: Exception, keys: list[str]) -> None:
        """Called when COMMIT raised ``exc``, after the rollback, with the keys ``note_written()``
        noted: return if the transaction is known to have committed after all; otherwise raise the
        es error (by default ``error(exc, "commit")``). A backend whose connections can be lost
        looks keys up."""
        raise self.error(exc, "commit") from exc

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_shared", "_local", "_sessions", "_pool", "_registry"):
            state.pop(name, None)
        state.update(_pid=0, commits=0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _check_process(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            # The parent's sessions: never used nor closed here (another thread may have held a lock
            # at the fork).
            Database._abandoned.extend(s.conn for s in (self._shared, *self._sessions)
                                       if s.conn is not None)
            Database._abandoned.extend(self._pool.idle)
            self._reset()
            self._pid = pid

    def _session(self) -> _Session:
        """The calling thread's session: its own, or the process's shared one."""
        if self._pid != os.getpid():
            self._check_process()
        return self._thread_session() if self.connection_per_thread else self._shared

    def _thread_session(self) -> _Session:
        """The calling thread's own session (made on its first use, with an ended thread's
        connection if any)."""
        try:
            session: _Session = self._local.session
            return session
        except AttributeError:
            pass
        session = _Session(threading.current_thread())
        self._reclaim_ended()
        with self._registry:
            self._sessions.append(session)
        self._local.session = session
        return session

    def _reclaim_ended(self) -> None:
        """Forget the sessions of threads that have ended; their connections go back to the pool."""
        with self._registry:
            ended = [s for s in self._sessions if s.thread is not None and not s.thread.is_alive()]
            for session in ended:
                self._sessions.remove(session)
        for session in ended:
            conn, session.conn = session.conn, None
            if conn is None:
                continue
            # left open by hand: its work is not ours to finish
            if self._connection_in_transaction(conn):
                with contextlib.suppress(Exception):
                    self._close_connection(conn)
                self._pool.forget()
            else:
                self._pool.give_back(conn)

    def _take_unused(self) -> Any:
        """A connection another thread keeps between blocks (or kept until it ended), taken from it;
        None when every one is in use. (Called by the pool, which counts it still.)"""
        me = threading.current_thread()
        with self._registry:
            sessions = list(self._sessions)
        for session in sessions:
            if (session.conn is None or session.holds or session.depth or session.thread is me
                    or session.pinned and session.thread is not None and session.thread.is_alive()):
                continue
            if not session.lock.acquire(blocking=False):
                continue  # its thread is entering a block: it keeps it
            try:
                conn = session.conn
                if (conn is None or session.holds or session.depth
                        or session.pinned and session.thread is not None
                    and session.thread.is_alive()
                        or self._connection_in_transaction(conn)):
                    continue
                session.conn = None
                session.pinned = False
            finally:
                session.lock.release()
            return conn
        return None

    def _open(self, session: _Session) -> Any:
        """The session's connection, usable: the process's opened (again) if need be, a thread's
        taken from the pool (or one that was lost replaced); StoreError if it was lost inside a
        transaction. The caller has the session's lock."""
        conn = session.conn
        if conn is not None:
            if self._connection_usable(conn):
                return conn
            if session.depth:  # the open transaction died with it: never carry on in another
                raise StoreError(f"lost the connection of {self!r} inside a transaction; "
                                 "the transaction was rolled back")
            self._discard(session)
        if session.thread is None:
            conn = session.conn = self._create_connection()
            return conn
        while True:
            conn = self._pool.take(self)
            if self._connection_usable(conn):
                session.conn = conn
                return conn
            with contextlib.suppress(Exception):  # an idle one that died meanwhile
                self._close_connection(conn)
            self._pool.forget()

    def _hold(self, session: _Session) -> Any:
        """The session's connection, held for a block until ``_let_go`` (the caller has its
        lock)."""
        conn = session.conn
        if conn is None or not self._connection_usable(conn):
            conn = self._open(session)
        session.holds += 1
        return conn

    def _let_go(self, session: _Session) -> None:
        """The end of a block that held the session's connection: a thread keeps its connection for
        its next block, unless other threads wait for one, then it goes back to the pool (once
        nothing holds it: no block, no transaction, not taken with no block)."""
        session.holds -= 1
        if (not self._pool.waiting or session.holds or session.depth or session.pinned
                or session.thread is None):
            return
        conn, session.conn = session.conn, None
        if conn is None:
            return
        if self._connection_in_transaction(conn):  # opened by hand on it: not for another thread
            with contextlib.suppress(Exception):
                self._close_connection(conn)
            self._pool.forget()
        else:
            self._pool.give_back(conn)

    @property
    def lock(self) -> threading.RLock:
        """The lock that keeps other threads of this process off the calling thread's connection."""
        return self._session().lock

    @property
    def connection(self) -> Any:
        """The calling thread's connection (the process's, or its own), opened on first use (and
        again after a fork or once lost). A thread that takes its own connection here, outside any
        block (``transaction()``, ``reading()``, ``borrow()``), keeps it until the thread ends or
        ``close()``; prefer ``with borrow() as conn``, which leaves it to other threads after the
        block."""
        session = self._session()
        conn = session.conn
        if conn is None or not self._connection_usable(conn) or not (
                session.holds or session.depth or session.pinned or session.thread is None):
            with session.lock:
                conn = self._open(session)
                if not (session.holds or session.depth or session.thread is None):
                    session.pinned = True
        return conn

    def borrow(self) -> contextlib.AbstractContextManager[Any]:
        """The calling thread's connection for a ``with`` block, under its ``lock``: the connection
        of its transaction if one is open, else one lent from the pool (waiting up to
        ``connection_timeout`` when all ``max_connections`` are in use), which other threads may
        have once the block is over. (The process's one connection where the backend has no pool:
        SQLite's writer.)"""
        return _OnSession(self, self._session())

    def ensure_open(self) -> None:
        """Open the calling thread's connection now, so that a bad target fails here with a clear
        error."""
        with self.borrow():
            pass

    def in_transaction(self) -> bool:
        """Whether the calling thread is inside ``transaction()`` (or another transaction open on
        its connection). A transaction another thread has open on a shared connection is not this
        thread's."""
        session = self._session()
        if session.depth:
            return session.owner == threading.get_ident()
        conn = session.conn
        return conn is not None and self._connection_in_transaction(conn)

    def has_begun(self) -> bool:
        """Whether the calling thread's transaction has begun on the database (a lazy one begins at
        its first write; see ``transaction``)."""
        session = self._session()
        return self.in_transaction() and session.conn is not None and \
            self._connection_in_transaction(session.conn)

    def _rollback(self, session: _Session, conn: Any) -> None:
        try:
            if self._connection_in_transaction(conn):
                conn.execute("ROLLBACK")
        except Exception:  # the connection is unusable: forget it, the next use opens another
            self._discard(session)

    def _discard(self, session: _Session) -> None:
        conn, session.conn = session.conn, None
        session.pinned = False
        if conn is not None:
            with contextlib.suppress(Exception):
                self._close_connection(conn)
            if session.thread is not None:
                self._pool.forget()

    @contextlib.contextmanager
    def transaction(self, *, lazy: bool = False) -> Iterator[Any]:
        """``begin_statement`` ... COMMIT around the block (yields the connection); nested use is a
        savepoint inside the outer transaction, rolled back alone if the inner block raises. A
        failed BEGIN, SAVEPOINT or COMMIT is rolled back and raised as ``error()``. The transaction
        is the calling thread's: other threads wait for the shared connection, or use their own.

        ``lazy`` (an outermost block): where a write transaction is the database's only write lock
        (``_begin_at_first_write``: SQLite), it begins at the block's first write statement (or
        nested block), so the block holds that lock only from then on; elsewhere at once."""
        errors = self.driver_errors
        session = self._session()
        with _OnSession(self, session) as conn:  # (a thread's connection is held until the end)
            if session.depth:
                name = f"es_sp{session.depth + 1}"
                try:
                    if not self._connection_in_transaction(conn):  # a lazy one, not begun yet
                        conn.execute(self.begin_statement)
                    conn.execute(f"SAVEPOINT {name}")
                except errors as exc:
                    raise self.error(exc, "open a savepoint") from exc
                session.depth += 1
                noted = len(session.written)
                try:
                    yield conn
                except BaseException:
                    del session.written[noted:]  # rolled back with the savepoint
                    try:
                        conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                        conn.execute(f"RELEASE SAVEPOINT {name}")
                    except errors as exc:
                        raise self.error(exc, "roll back to a savepoint") from exc
                    raise
                else:
                    try:
                        conn.execute(f"RELEASE SAVEPOINT {name}")
                    except errors as exc:
                        raise self.error(exc, "release a savepoint") from exc
                finally:
                    session.depth -= 1
                return
            lazy = lazy and self._begin_at_first_write(conn, True)
            if not lazy:
                try:
                    conn.execute(self.begin_statement)
                except errors as exc:
                    conn = self._begin_again(session, conn, exc)
            session.owner = threading.get_ident()
            session.depth = 1
            session.written = []
            try:
                self._began(conn)
                yield conn
            except BaseException:
                session.depth = 0
                self._rollback(session, conn)
                if lazy:  # (after the ROLLBACK or COMMIT: with SQLite, switching back would commit)
                    self._begin_at_first_write(conn, False)
                raise
            if lazy and not self._connection_in_transaction(conn):
                session.depth = 0  # nothing was written: nothing to commit
                self._begin_at_first_write(conn, False)
                return
            written, session.written = session.written, []
            try:
                conn.execute("COMMIT")
            except errors as exc:
                # ended, whatever happened to it: _commit_lost may use a new connection
                session.depth = 0
                self._rollback(session, conn)
                self._commit_lost(exc, written)
            except BaseException:
                self._rollback(session, conn)
                raise
            finally:
                session.depth = 0
                if lazy:
                    self._begin_at_first_write(conn, False)
            with self._registry:
                self.commits += 1

    def _begin_at_first_write(self, conn: Any, on: bool) -> bool:
        """Make ``conn`` begin its transaction at its first write statement (``on``), or no longer;
        True where the backend does (``transaction(lazy=True)``)."""
        return False

    def _begin_again(self, session: _Session, conn: Any, exc: Exception) -> Any:
        """After BEGIN raised ``exc`` on ``conn``: when the connection was lost, nothing of the
        transaction had been sent, so begin once more on a new connection (returned); otherwise
        raise ``exc``."""
        self._rollback(session, conn)
        if not self._connection_lost(exc):
            raise self.error(exc, "begin a transaction") from exc
        self._discard(session)
        conn = self.connection
        try:
            conn.execute(self.begin_statement)
        except self.driver_errors as again:
            self._rollback(session, conn)
            raise self.error(again, "begin a transaction") from again
        return conn

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        """A connection to read on during the block: inside the calling thread's transaction, that
        transaction's (so it sees its own uncommitted writes); otherwise the thread's own where it
        has one, else the process's, under ``lock``. A backend with connections that read beside the
        writer (SQLite's readers) gives one of those instead."""
        return _OnSession(self, self._session())

    def execute(self, sql: str, params: Sequence[Any] = (), *, doing: str = "write") -> Any:
        """Run one statement inside the current transaction, or in a transaction of its own; returns
        the cursor. A driver error is raised as ``error(exc, doing)``."""
        with self.transaction() as conn:
            try:
                return conn.execute(sql, params)
            except self.driver_errors as exc:
                raise self.error(exc, doing) from exc

    def fetch_all(self, sql: str, params: Sequence[Any] = (), *, doing: str = "read") -> list[Any]:
        """The rows one query returns (in the calling thread's transaction, if one is open; on a
        ``reading()`` connection otherwise); a driver error is raised as ``error(exc, doing)``.
        Outside a transaction, a query whose connection turns out to be lost is run once more on a
        new one."""
        for attempt in (1, 2):
            with self.reading() as conn:
                try:
                    rows: list[Any] = conn.execute(sql, params).fetchall()
                    return rows
                except self.driver_errors as exc:
                    if attempt == 2 or not self._read_again(exc):
                        raise self.error(exc, doing) from exc
        raise AssertionError("unreachable")

    def _read_again(self, exc: Exception) -> bool:
        """Whether a read that raised ``exc`` may run again: its connection was lost (then
        forgotten, so the next use opens another) and no transaction of the calling thread died with
        it."""
        session = self._session()
        if not self._connection_lost(exc) or session.depth:
            return False
        with session.lock:
            self._discard(session)
        return True

    def close(self) -> None:
        """Close this process's connections (each is opened again when needed): the shared one, the
        calling thread's, and those of other threads and ended ones not in the middle of
        something."""
        if self._pid != os.getpid():
            self._check_process()
            return
        with self._registry:
            sessions = [self._shared, *self._sessions]
        for conn in self._pool.drain():
            with contextlib.suppress(Exception):
                self._close_connection(conn)
        me = threading.current_thread()
        for session in sessions:
            mine = session.thread is None or session.thread is me
            if not session.lock.acquire(blocking=mine):
                continue  # another thread is using its connection: it stays open
            try:
                if mine or not session.depth:
                    self._discard(session)
            finally:
                session.lock.release()

    @property
    def location(self) -> str | None:
        """A path or URL another process can open this database by (``open_database``), without
        secrets; None when there is none (an in-memory database, a connection given open)."""
        return None

    # -- the dialect: how this database's SQL names, creates and drops tables ----------------------

    def qualify(self, table: str) -> str:
        """The SQL name of one of the library's tables (e.g. schema-qualified)."""
        return table

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """The condition that ``column`` is one of ``values``, and its parameters."""
        return f"{column} IN ({', '.join([self.placeholder] * len(values))})", tuple(values)

    def time_value(self, value: _dt.datetime | str) -> Any:
        """A time as this database stores it (a parameter of a statement)."""
        return value

    def table_names(self, ddl: str) -> list[str]:
        """The tables a processor's ``schema`` DDL creates (the ones ``reset()`` drops)."""
        return re.findall(r"CREATE\s+(?:TEMP\w*\s+)?(?:UNLOGGED\s+)?TABLE\s+"
                          r"(?:IF\s+NOT\s+EXISTS\s+)?[\"`\[]?([\w.]+)", ddl, flags=re.IGNORECASE)

    @abc.abstractmethod
    def create_tables(self, conn: Any, ddl: str) -> None:
        """Run ``ddl`` (CREATE ... IF NOT EXISTS statements) inside the open transaction on
        ``conn``, safely when several processes do it at once."""

    @abc.abstractmethod
    def drop_tables(self, conn: Any, tables: Iterable[str]) -> None:
        """Drop these tables, if they exist, inside the open transaction on ``conn``."""


# ---------------------------------------------------------------------------
# The backend interface, 4: trackers in a database. Processor positions,
# ownership (the fencing generation) and failures, kept in a table by the same
# rules on every SQL database (and, through an in-memory SQLite, in memory).
# ---------------------------------------------------------------------------

TRACKER_TABLE = "eventsourcery_trackers"
#: The tracker table's columns beyond (name, position), added in place to an older table.
_TRACKER_COLUMNS = (
    ("generation", "BIGINT NOT NULL DEFAULT 0"), ("horizon", "BIGINT NOT NULL DEFAULT 0"),
    ("fresh", "INTEGER NOT NULL DEFAULT 0"), ("state", "TEXT"), ("last_error", "TEXT"),
    ("failing_event_id", "BIGINT"), ("owner", "TEXT"), ("standby", "TEXT"),
    ("standby_at", "DOUBLE PRECISION"), ("kind", "TEXT"), ("location", "TEXT"), ("tables", "TEXT"),
    ("partitions", "INTEGER"))
#: Every column of a tracker row, as TrackerRecord names them.
_TRACKER_FIELDS = ("name", "position", *(column for column, _ in _TRACKER_COLUMNS))


def tracker_table_ddl(table: str) -> str:
    """The CREATE TABLE IF NOT EXISTS statement of a tracker table named ``table`` (for a backend's
    schema)."""
    return _TRACKER_DDL.format(table=table)


_TRACKER_DDL = ("CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, position BIGINT NOT "
                "NULL DEFAULT 0, " + ", ".join(f"{column} {kind}"
                                               for column, kind in _TRACKER_COLUMNS) + ")")


#: Where a DatabaseTracker keeps parked events (see ``es.parked_events``), beside its positions.
_PARKED_TABLE = "eventsourcery_parked"
_PARKED_DDL = ("CREATE TABLE IF NOT EXISTS {table} (name TEXT NOT NULL, event_id BIGINT NOT NULL, "
               "aggregate_id TEXT NOT NULL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
               "parked_at DOUBLE PRECISION NOT NULL, behind BIGINT, "
               "retry INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (name, event_id))")


def _instance_name() -> str:
    """``pid@host`` of this process: who owns, or waits for, a processor name."""
    return f"{os.getpid()}@{platform.node() or 'localhost'}"


class DatabaseTracker(Tracker):
    """Positions in the ``eventsourcery_trackers`` table of a Database: the event store's, or a
    projection's.

    Writes join the database's current transaction, so a projector's writes
    and its new position commit together. The table is created on first use
    (an older one gains the columns it lacks). Beside the position a row keeps
    the owner's generation (the fencing token ``commit_position`` checks in the
    same transaction), the replay horizon and what the owner reports.
    """

    keeps_owners = True

    def __init__(self, database: Database) -> None:
        self.database = database
        self._table = database.qualify(TRACKER_TABLE)
        self._parked = database.qualify(_PARKED_TABLE)
        self._has_parked = True  # False: a read-only database without that table (none parked)
        self._ready_pid = 0
        # The columns an older table, opened read-only, lacks (read as NULL).
        self._absent: frozenset[str] = frozenset()

    def _conn(self) -> None:
        db = self.database
        if self._ready_pid != os.getpid():
            # Look first, with a read: only a missing table or column takes a write transaction, so
            # reading a position never waits behind another process's write (nor holds a lock a fork
            # could copy).
            missing = self._missing_columns(db)
            read_only = getattr(db, "read_only", False)
            self._absent = frozenset(missing or ()) if read_only else frozenset()
            if missing is None or (missing and not self._absent):
                with db.transaction() as conn:
                    db.create_tables(conn, _TRACKER_DDL.format(table=self._table))
                    for column, kind in _TRACKER_COLUMNS:
                        if column in (self._missing_columns(db) or ()):
                            conn.execute(f"ALTER TABLE {self._table} ADD COLUMN {column} {kind}")
            self._has_parked = self._missing_columns(db, self._parked) is not None
            if not self._has_parked and not read_only:
                with db.transaction() as conn:
                    db.create_tables(conn, _PARKED_DDL.format(table=self._parked))
                self._has_parked = True
            self._ready_pid = os.getpid()

    def _missing_columns(self, db: Database, table: str | None = None) -> list[str] | None:
        """The tracker columns the table (or another ``table``: none) lacks; None when there is no
        table."""
        # Inside a caller's transaction the look is a savepoint, so a missing table spoils nothing
        # (Postgres aborts a transaction on any failed statement); outside, a plain read: no write
        # lock is taken.
        probe = db.transaction() if db.in_transaction() else db.borrow()
        try:
            with probe as conn:
                cursor = conn.execute(f"SELECT * FROM {table or self._table} WHERE 1 = 0")
                have = {d[0] for d in cursor.description}
                cursor.fetchall()
                del cursor  # freed under the lock (see _quiesce_sqlite_for_fork)
        except db.driver_errors:
            return None
        # the savepoint's own error, raised as an es error by transaction()
        except StoreError as exc:
            if not isinstance(exc.__cause__, db.driver_errors):
                raise
            return None
        if table is not None:
            return []
        return [column for column, _ in _TRACKER_COLUMNS if column not in have]

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        """Run one write (``{p}`` is the placeholder, ``{t}`` the table, ``{q}`` that of parked
        events); returns the rows it changed."""
        self._conn()
        sql = sql.format(p=self.database.placeholder, t=self._table, q=self._parked)
        cursor = self.database.execute(sql, params)
        return int(cursor.rowcount)

    def setup(self, name: str) -> None:
        self._write("INSERT INTO {t} (name, position, fresh) VALUES ({p}, 0, 1) ON CONFLICT (name) "
                    "DO NOTHING", (name,))

    def last_processed_event_id(self, name: str) -> int:
        self._conn()
        rows = self.database.fetch_all(f"SELECT position FROM {self._table} WHERE name = "
                                       f"{self.database.placeholder}", (name,),
                                       doing=f"read the position of processor {name!r}")
        return int(rows[0][0]) if rows else 0

    def processed_event(self, name: str, event_id: int) -> None:
        self._write("INSERT INTO {t} (name, position) VALUES ({p}, {p}) ON CONFLICT (name) DO "
                    "UPDATE SET position = excluded.position, fresh = 0", (name, event_id))

    def reset(self, name: str) -> None:
        """Set the positions of ``name`` (of each of its partitions) back to 0, each keeping the
        position it had as its replay horizon, and forget its parked events."""
        with self.database.transaction():
            for each in {name, *self.partition_names(name)}:
                self._write("INSERT INTO {t} (name, position, fresh) VALUES ({p}, 0, 1) "
                            "ON CONFLICT (name) DO UPDATE SET "
                            f"horizon = CASE WHEN {TRACKER_TABLE}.position > "
                            f"{TRACKER_TABLE}.horizon THEN {TRACKER_TABLE}.position ELSE "
                            f"{TRACKER_TABLE}.horizon END, position = 0, fresh = 1, "
                            "last_error = NULL, failing_event_id = NULL", (each,))
                if self._has_parked:
                    self._write("DELETE FROM {q} WHERE name = {p}", (each,))

    def start_fresh(self, names: Iterable[str], event_id: int) -> None:
        with self.database.transaction():
            for name in names:
                self._write("UPDATE {t} SET position = {p}, fresh = 0 WHERE name = {p} AND "
                            "fresh = 1", (event_id, name))

    def set_partitions(self, name: str, partitions: int) -> None:
        with self.database.transaction():
            self.setup(name)
            self._take_turn(name)  # one instance at a time looks and changes
            recorded = self.record(name).partitions or 1
            if recorded == partitions:
                return
            old = [self.record(each) for each in {name, *_partition_names(name, recorded)}]
            used = sorted(r.name for r in old if not r.fresh)
            if used:
                raise Error(
                    f"processor {name!r} has positions for {recorded} partition(s) "
                    f"({', '.join(used[:8])}), and its partitions is now {partitions}: events "
                    f"would be handled twice or never; reset it first (processor.reset(), or "
                    f"python -m eventsourcery STORE reset {name}), or set partitions back to "
                    f"{recorded}; nothing changed")
            # A new split (none has run since its reset): each partition replays up to the
            # furthest any had reached.
            horizon = max(r.horizon for r in old)
            for r in old:
                if r.name != name:
                    self._write("DELETE FROM {t} WHERE name = {p}", (r.name,))
            self._write("UPDATE {t} SET partitions = {p}, horizon = {p} WHERE name = {p}",
                        (None if partitions == 1 else partitions, horizon, name))
            for each in _partition_names(name, partitions):
                if each != name:
                    self._write("INSERT INTO {t} (name, position, fresh, horizon) VALUES "
                                "({p}, 0, 1, {p})", (each, horizon))

    def positions(self) -> dict[str, int]:
        return {r.name: r.position for r in self.records()}

    def _select(self, where: str = "", params: Sequence[Any] = ()) -> list[TrackerRecord]:
        self._conn()
        columns = ", ".join("NULL" if f in self._absent else f for f in _TRACKER_FIELDS)
        rows = self.database.fetch_all(f"SELECT {columns} FROM {self._table} {where} ORDER BY name",
                                       params, doing="read processor positions")
        out = []
        for row in rows:
            values = dict(zip(_TRACKER_FIELDS, row, strict=True))
            values["fresh"] = bool(values.get("fresh"))
            tables = values.get("tables")
            values["tables"] = None if tables is None else tuple(json.loads(tables))
            for key in ("position", "generation", "horizon"):
                values[key] = int(values.get(key) or 0)
            if values.get("partitions") is not None:
                values["partitions"] = int(values["partitions"])
            out.append(TrackerRecord(**values))
        return out

    def records(self) -> list[TrackerRecord]:
        return self._select()

    def record(self, name: str) -> TrackerRecord:
        found = self._select(f"WHERE name = {self.database.placeholder}", (name,))
        return found[0] if found else TrackerRecord(name, fresh=True)

    def acquire(self, name: str, owner: str, kind: str | None = None) -> int:
        p = self.database.placeholder
        with self.database.transaction() as conn:
            self._conn()
            conn.execute(f"INSERT INTO {self._table} (name, position, fresh) VALUES ({p}, 0, 1) "
                         "ON CONFLICT (name) DO NOTHING", (name,))
            conn.execute(f"UPDATE {self._table} SET generation = generation + 1, owner = {p}, kind "
                         f"= coalesce({p}, kind), state = 'running', standby = NULL, standby_at = "
                         f"NULL WHERE name = {p}", (owner, kind, name))
            row = conn.execute(f"SELECT generation FROM {self._table} WHERE name = {p}",
                               (name,)).fetchone()
        return int(row[0])

    #: The SET clause of a position move (the new position three times): a failure it gets past is
    #: cleared.
    _MOVE = ("position = {p}, fresh = 0, last_error = CASE WHEN failing_event_id IS NULL OR "
             "failing_event_id <= {p} THEN NULL ELSE last_error END, failing_event_id = CASE WHEN "
             "failing_event_id <= {p} THEN NULL ELSE failing_event_id END ")

    def commit_position(self, name: str, event_id: int, generation: int | None) -> None:
        if generation is None:
            self.processed_event(name, event_id)
            return
        changed = self._write(
            "UPDATE {t} SET " + self._MOVE + "WHERE name = {p} AND generation = {p}",
            (event_id, event_id, event_id, name, generation))
        if changed != 1:
            raise _fenced(name, generation)

    def skip_event(self, name: str, event_id: int) -> None:
        event_id = _skip_id(event_id)
        with self.database.transaction():
            changed = self._write(
                "UPDATE {t} SET " + self._MOVE + "WHERE name = {p} AND position = {p}",
                (event_id, event_id, event_id, name, event_id - 1))
            if changed != 1:  # nothing changed: say where the processor is
                _check_skip(self.record(name), event_id)
                raise ValueError(
                    f"cannot skip event {event_id}: processor {name!r} is not tracked here")

    def check_owner(self, name: str, generation: int | None) -> None:
        if generation is not None and self.record(name).generation != generation:
            raise _fenced(name, generation)

    def report(self, name: str, generation: int | None, state: str, error: str | None = None,
               failing_event_id: int | None = None) -> None:
        if error is None:
            self._write("UPDATE {t} SET state = {p} WHERE name = {p} AND generation = {p}",
                        (state, name, generation))
        elif failing_event_id is None:
            self._write("UPDATE {t} SET state = {p}, last_error = {p}, failing_event_id = NULL "
                        "WHERE name = {p} AND generation = {p}",
                        (state, error[:2000], name, generation))
        else:  # not a failure at an event the position is past (skipped meanwhile)
            self._write("UPDATE {t} SET state = {p}, last_error = {p}, failing_event_id = {p} "
                        "WHERE name = {p} AND generation = {p} AND position < {p}",
                        (state, error[:2000], failing_event_id, name, generation, failing_event_id))

    def standby(self, name: str, who: str) -> None:
        self._write("UPDATE {t} SET standby = {p}, standby_at = {p} WHERE name = {p}",
                    (who, time.time(), name))

    def register(self, name: str, kind: str, location: str) -> None:
        self._write("INSERT INTO {t} (name, position, kind, location) VALUES ({p}, 0, {p}, {p}) ON "
                    "CONFLICT (name) DO UPDATE SET kind = excluded.kind, location = "
                    "excluded.location", (name, kind, location))

    def declare_tables(self, name: str, tables: Sequence[str]) -> None:
        self._write("UPDATE {t} SET tables = {p} WHERE name = {p}",
                    (json.dumps(list(tables)), name))

    # -- parked events: rows of the parked table, in transactions of the tracker's database --

    def _fence(self, name: str, generation: int | None) -> None:
        """Inside a transaction: raise ProcessorFencedError unless ``generation`` still owns
        ``name`` (a write to the tracker row, so the check holds until the transaction ends)."""
        if generation is not None and self._write("UPDATE {t} SET generation = generation "
                                                  "WHERE name = {p} AND generation = {p}",
                                                  (name, generation)) != 1:
            raise _fenced(name, generation)

    def _take_turn(self, name: str) -> None:
        """Inside a transaction: wait for any unit of ``name`` under way (its row is locked)."""
        self._write("UPDATE {t} SET generation = generation WHERE name = {p}", (name,))

    def parked_events(self, name: str) -> list[ParkedEvent]:
        self._conn()
        if not self._has_parked:
            return []
        p = self.database.placeholder
        rows = self.database.fetch_all(
            "SELECT event_id, aggregate_id, error, attempts, parked_at, behind "
            f"FROM {self._parked} WHERE name = {p} ORDER BY event_id", (name,),
            doing=f"read the parked events of {name!r}")
        utc = _dt.timezone.utc
        return [ParkedEvent(int(e), str(a), err, int(n), _dt.datetime.fromtimestamp(float(t), utc),
                            None if b is None else int(b)) for e, a, err, n, t, b in rows]

    def park(self, name: str, event: Event, error: str | None, attempts: int,
             generation: int | None, behind: int | None = None) -> bool:
        p = self.database.placeholder
        retry = 0
        with self.database.transaction():
            if behind is not None:
                self._fence(name, generation)  # (also waits for a drop or retry request under way)
                first, retry = self.database.fetch_all(
                    f"SELECT min(event_id), max(retry) FROM {self._parked} WHERE name = {p} "
                    f"AND aggregate_id = {p} AND event_id < {p}",
                    (name, event.aggregate_id, event.id))[0]
                if first is None:
                    return False  # dropped meanwhile
                behind = int(first)
            self._write("INSERT INTO {q} (name, event_id, aggregate_id, error, attempts, "
                        "parked_at, behind, retry) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
                        "ON CONFLICT (name, event_id) DO UPDATE SET error = excluded.error, "
                        "attempts = excluded.attempts, behind = excluded.behind, "
                        "retry = excluded.retry",
                        (name, event.id, event.aggregate_id, error and error[:2000], attempts,
                         time.time(), behind, int(retry or 0)))
            if behind is None:
                self.commit_position(name, event.id, generation)  # type: ignore[arg-type]
        return True

    def retry_requested(self, name: str) -> list[int]:
        self._conn()
        if not self._has_parked:
            return []
        p = self.database.placeholder
        rows = self.database.fetch_all(
            f"SELECT event_id FROM {self._parked} WHERE name = {p} AND retry = 1 ORDER BY event_id",
            (name,), doing=f"read the parked events of {name!r}")
        return [int(row[0]) for row in rows]

    def _parked_one(self, name: str, event_id: int,
                    doing: str) -> tuple[ParkedEvent, list[ParkedEvent]]:
        """Parked ``event_id`` and every parked event of its aggregate (ValueError when it is not
        parked)."""
        parked = self.parked_events(name)
        found = next((p for p in parked if p.event_id == event_id), None)
        if found is None:
            listed = ", ".join(str(p.event_id) for p in parked[:20]) or "none"
            raise ValueError(f"cannot {doing} event {event_id}: processor {name!r} has no such "
                             f"parked event (its parked events: {listed}); nothing changed")
        return found, [p for p in parked if p.aggregate_id == found.aggregate_id]

    def request_retry(self, name: str, event_id: int | None = None) -> list[int]:
        with self.database.transaction():
            self._take_turn(name)
            if event_id is None:
                ids = [p.event_id for p in self.parked_events(name)]
            else:
                found, same = self._parked_one(name, event_id, "retry")
                if same[0].event_id != event_id:
                    raise ValueError(
                        f"cannot retry parked event {event_id} of processor {name!r} alone: it "
                        f"waits behind parked event {same[0].event_id} of the same aggregate; "
                        "retry that one (the events behind it follow); nothing changed")
                ids = [p.event_id for p in same]
                self._write("UPDATE {q} SET retry = 1 WHERE name = {p} AND aggregate_id = {p}",
                            (name, found.aggregate_id))
                return ids
            self._write("UPDATE {q} SET retry = 1 WHERE name = {p}", (name,))
        return ids

    def unpark(self, name: str, event_id: int, generation: int | None,
               error: str | None = None) -> None:
        with self.database.transaction():
            self._fence(name, generation)
            if error is None:
                self._write("DELETE FROM {q} WHERE name = {p} AND event_id = {p}", (name, event_id))
                return
            self._write("UPDATE {q} SET error = {p}, attempts = attempts + 1, behind = NULL, "
                        "retry = 0, parked_at = {p} WHERE name = {p} AND event_id = {p}",
                        (error[:2000], time.time(), name, event_id))
            _, same = self._parked_one(name, event_id, "keep")
            for later in same:
                if later.event_id > event_id:
                    self._write("UPDATE {q} SET behind = {p}, retry = 0 "
                                "WHERE name = {p} AND event_id = {p}",
                                (event_id, name, later.event_id))

    def drop_parked(self, name: str, event_id: int) -> None:
        with self.database.transaction():
            self._take_turn(name)
            _, same = self._parked_one(name, event_id, "drop")
            self._write("DELETE FROM {q} WHERE name = {p} AND event_id = {p}", (name, event_id))
            if same[0].event_id == event_id:  # the first of its aggregate: those behind it go on
                for later in same[1:]:
                    self._write("UPDATE {q} SET retry = 1 WHERE name = {p} AND event_id = {p}",
                                (name, later.event_id))


# ---------------------------------------------------------------------------
# SQL stores: the statements SQLite and Postgres share, written once. A
# backend's store gives the Database (its connections and dialect) and
# writes what only it has: sink, locks, subscriptions, scrubbing.
# ---------------------------------------------------------------------------

_D = TypeVar("_D", bound="Database")


class SQLEventStore(EventStore, typing.Generic[_D]):
    """The part of an event store that is the same SQL on every backend: reads, snapshots, erasure,
    statistics, transactions and the tracker, over ``self._db``.

    A subclass sets ``self._db`` (its Database) and ``self._tracker``, and
    writes ``sink``, ``lock`` and ``is_running``. The statements are written
    with the database's ``placeholder``, ``qualify``'d table names and
    ``in_list``; ``select_columns`` is the select list of an event row (in
    EventRow order), which a backend may cast.
    """

    _db: _D
    _tracker: Tracker
    #: the columns of an event row, in EventRow order, as this backend selects them
    select_columns: ClassVar[str] = ", ".join(EVENT_COLUMNS)

    @functools.cached_property
    def _sql(self) -> dict[str, str]:
        """This store's statements, made once from the dialect of its database."""
        db, p = self._db, self._db.placeholder
        events, snapshots = db.qualify("events"), db.qualify("eventsourcery_snapshots")
        select = f"SELECT {self.select_columns} FROM {events} "
        return {
            "page": select + f"WHERE id >= {p} {{types}}ORDER BY id LIMIT {p}",
            "latest": f"SELECT max(id) FROM {events} {{types}}",
            "aggregate": select + f"WHERE aggregate_id = {p} AND version BETWEEN {p} AND {p} "
                                  "ORDER BY version",
            "version": f"SELECT max(version) FROM {events} WHERE aggregate_id = {p}",
            "save_snapshot": (
                f"INSERT INTO {snapshots} ({', '.join(SNAPSHOT_COLUMNS)}) VALUES "
                f"({', '.join([p] * len(SNAPSHOT_COLUMNS))}) ON CONFLICT (aggregate_id, "
                "aggregate_type) DO UPDATE SET version = excluded.version, snapshot_version = "
                "excluded.snapshot_version, last_event_uuid = excluded.last_event_uuid, state = "
                "excluded.state, created_at = excluded.created_at WHERE excluded.version >= "
                f"{snapshots}.version"),
            "snapshots": f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM {snapshots} "
                         f"WHERE aggregate_id = {p} ORDER BY aggregate_type",
            "delete_snapshots": f"DELETE FROM {snapshots} WHERE aggregate_id = {p}",
            "erase": f"UPDATE {events} SET type = {p}, body = '{{}}', metadata = NULL "
                     f"WHERE aggregate_id = {p} AND version <= {p}",
            "counts": f"SELECT count(*), count(DISTINCT aggregate_id) FROM {events}",
            "first": f"SELECT created_at FROM {events} ORDER BY id LIMIT 1",
            "last": f"SELECT created_at FROM {events} ORDER BY id DESC LIMIT 1",
            "types": f"SELECT type, count(*) FROM {events} GROUP BY type "
                     "ORDER BY count(*) DESC, type",
        }

    def _page_query(self, id: int, names: tuple[str, ...] | None,
                    limit: int) -> tuple[str, tuple[Any, ...]]:
        """The SELECT of up to ``limit`` events from ``id`` on (of the types ``names``), and its
        parameters."""
        if names is None:
            return self._sql["page"].format(types=""), (id, limit)
        where, values = self._db.in_list("type", names)
        return self._sql["page"].format(types=f"AND {where} "), (id, *values, limit)

    def get_next_from(self, id: int, event_types: EventTypes = None,
                      limit: int = 1000) -> list[Event]:
        names = type_names(event_types)
        id, limit = check_position("id", id), check_limit(limit)
        sql, params = self._page_query(id, names, limit)
        return decode_rows(self._db.fetch_all(sql, params, doing=f"read events from id {id}"))

    def latest_event_id(self, event_types: EventTypes = None) -> int:
        names = type_names(event_types)
        if names is None:
            sql, params = self._sql["latest"].format(types=""), ()
        else:
            where, params = self._db.in_list("type", names)
            sql = self._sql["latest"].format(types=f"WHERE {where}")
        [(latest,)] = self._db.fetch_all(sql, params, doing="read the latest event id")
        return int(latest or 0)

    def get_events_for_aggregate_id(self, aggregate_id: str | _uuid.UUID, *, from_version: int = 1,
                                    to_version: int | None = None) -> list[Event]:
        first, last = version_range(from_version, to_version)
        aggregate_id = check_aggregate_id(aggregate_id)
        return decode_rows(self._db.fetch_all(
            self._sql["aggregate"], (aggregate_id, first, last),
            doing=f"read the events of aggregate {aggregate_id!r}"))

    def aggregate_version(self, aggregate_id: str | _uuid.UUID) -> int:
        aggregate_id = check_aggregate_id(aggregate_id)
        [(version,)] = self._db.fetch_all(self._sql["version"], (aggregate_id,),
                                          doing=f"read the version of aggregate {aggregate_id!r}")
        return int(version or 0)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._db.execute(self._sql["save_snapshot"],
                         snapshot._replace(created_at=self._db.time_value(snapshot.created_at)),
                         doing="save a snapshot")

    def snapshots(self, aggregate_id: str | _uuid.UUID) -> list[Snapshot]:
        rows = self._db.fetch_all(self._sql["snapshots"], (check_aggregate_id(aggregate_id),),
                                  doing="read snapshots")
        return [Snapshot(*row) for row in rows]

    def delete_snapshots(self, aggregate_id: str | _uuid.UUID) -> None:
        self._db.execute(self._sql["delete_snapshots"], (check_aggregate_id(aggregate_id),),
                         doing="delete snapshots")

    def erase_events(self, aggregate_id: str, to_version: int) -> None:
        self._db.execute(self._sql["erase"], (ERASED_TYPE, aggregate_id, to_version),
                         doing=f"erase the events of aggregate {aggregate_id!r}")

    def stats(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        sql, fetch = self._sql, self._db.fetch_all
        [(events, aggregates)] = fetch(sql["counts"], doing="count the events")
        first = fetch(sql["first"], doing="count the events")
        last = fetch(sql["last"], doing="count the events")
        types = dict(fetch(sql["types"], doing="count the events"))
        return {"events": events, "aggregates": aggregates,
                "first_created_at": _iso_text(first[0][0]) if first else None,
                "last_created_at": _iso_text(last[0][0]) if last else None, "types": types}

    @property
    def connection(self) -> Any:
        """The calling thread's connection to the store's database (see its Database for which).
        Outside a transaction the thread keeps it (one of ``max_connections``) until it ends."""
        return self._db.connection

    @property
    def database(self) -> _D:
        return self._db

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return self._db.transaction()

    def tracker(self) -> Tracker:
        return self._tracker

    def close(self) -> None:
        self._db.close()


def _iso_text(value: _dt.datetime | str) -> str:
    """A stored time as ISO text in UTC (SQLite keeps the text, Postgres gives a datetime)."""
    if isinstance(value, str):
        return value
    return value.astimezone(_dt.timezone.utc).isoformat()


# ---------------------------------------------------------------------------
# The memory store: the contract kept in this process's memory, for tests.
# ---------------------------------------------------------------------------

class _ProcessLocks:
    """Single-instance locks held in this process (for stores without files)."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._mutex = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[LockHeld]:
        with self._mutex:
            if name in self._held:
                raise UnableToLockProcessorError(
                    f"processor {name!r} is already running in this process")
            self._held.add(name)
        try:
            yield lambda: True  # (nothing can take it away)
        finally:
            with self._mutex:
                self._held.discard(name)

    def is_running(self, name: str) -> bool:
        return name in self._held


class MemoryTracker(DatabaseTracker):
    """Positions in this process's memory: they start again at 0 in every new process (a copy
    pickled for another process carries what it had).

    The rules are DatabaseTracker's, run on an in-memory SQLite database of its own, so the memory,
    SQLite and Postgres trackers keep positions, ownership and failures alike.
    """

    def __init__(self) -> None:
        super().__init__(SQLiteDatabase(":memory:"))

    def __getstate__(self) -> dict[str, Any]:
        self._conn()
        parked = self.database.fetch_all(f"SELECT * FROM {self._parked}")
        return {"records": self.records(), "parked": [tuple(row) for row in parked]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        fields = [f.name for f in dataclasses.fields(TrackerRecord)]
        for record in state["records"]:
            self._write(f"INSERT INTO {{t}} ({', '.join(fields)}) VALUES "
                        f"({', '.join(['{p}'] * len(fields))})",
                        [json.dumps(list(v)) if isinstance(v, tuple) else v
                         for v in dataclasses.astuple(record)])
        for row in state.get("parked", ()):
            self._write(f"INSERT INTO {{q}} VALUES ({', '.join(['{p}'] * len(row))})", row)


class MemoryEventStore(EventStore):
    """An event store in this process's memory, for tests and experiments.

    Events are kept as encoded rows and decoded on read, exactly as the
    database stores do, so behaviour (round trips, upcasting) is the same.
    ``subscribe`` works across threads.
    """

    shared_between_processes: ClassVar[bool] = False

    def __init__(self) -> None:
        self._rows: list[EventRow] = []
        self._by_aggregate: dict[str, list[int]] = {}
        self._uuids: set[str] = set()
        self._changed = threading.Condition(threading.RLock())
        self._tracker = MemoryTracker()
        self._locks = _ProcessLocks()
        self._depth = 0
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        # saved inside a transaction: kept once it commits
        self._pending_snapshots: list[Snapshot] = []
        # how to take back in-place changes, if a transaction rolls back
        self._undo: list[Callable[[], None]] = []

    def sink(self, event_or_events: Event | Sequence[Event],
             expected_version: int | None = None) -> list[Event]:
        events, aggregate_id, rows = encode_events(event_or_events, expected_version)
        with self.transaction():
            current = len(self._by_aggregate.get(aggregate_id, ()))
            if expected_version is not None and current != expected_version:
                raise ConcurrencyError(f"aggregate {aggregate_id!r} is at version {current}, "
                                       f"expected {expected_version}")
            uuids = [r.uuid for r in rows]
            if len(set(uuids)) != len(uuids) or self._uuids.intersection(uuids):
                raise DuplicateEventError(f"an event uuid in {uuids} is already stored")
            first_id = len(self._rows) + 1
            positions = self._by_aggregate.setdefault(aggregate_id, [])
            for i, row in enumerate(rows):
                self._rows.append(row._replace(id=first_id + i, version=current + 1 + i))
                positions.append(first_id + i - 1)
                self._uuids.add(row.uuid)
        return stored_copies(events, rows, first_id, current + 1)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Sinks and tracker writes inside commit together; a nested block that raises rolls back
        only its own part (like a savepoint), the outermost one everything since it began."""
        with self._changed, self._tracker.database.transaction():  # (positions roll back with it)
            saved_rows = len(self._rows)
            saved_snapshots, saved_undo = len(self._pending_snapshots), len(self._undo)
            self._depth += 1
            try:
                yield None
            except BaseException:
                del self._pending_snapshots[saved_snapshots:]
                for undo in reversed(self._undo[saved_undo:]):
                    undo()
                del self._undo[saved_undo:]
                for row in reversed(self._rows[saved_rows:]):
                    self._uuids.discard(row.uuid)
                    positions = self._by_aggregate[row.aggregate_id]
                    positions.pop()
                    if not positions:
                        del self._by_aggregate[row.aggregate_id]
                del self._rows[saved_rows:]
                raise
            finally:
                self._depth -= 1
            if not self._depth:
                self._undo.clear()
                pending, self._pending_snapshots = self._pending_snapshots, []
                for snapshot in pending:
                    self._keep_snapshot(snapshot)
                self._changed.notify_all()

    def erase_events(self, aggregate_id: str, to_version: int) -> None:
        with self.transaction():
            for index in self._by_aggregate.get(aggregate_id, ())[:to_version]:
                row = self._rows[index]
                self._rows[index] = row._replace(type=ERASED_TYPE, metadata=None, body="{}")
                self._undo.append(functools.partial(self._rows.__setitem__, index, row))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self._changed:
            if self._depth:
                self._pending_snapshots.append(snapshot)
            else:
                self._keep_snapshot(snapshot)

    def _keep_snapshot(self, snapshot: Snapshot) -> None:
        key = (snapshot.aggregate_id, snapshot.aggregate_type)
        kept = self._snapshots.get(key)
        if kept is None or kept.version <= snapshot.version:
            self._snapshots[key] = snapshot

    def snapshots(self, aggregate_id: str | _uuid.UUID) -> list[Snapshot]:
        aggregate_id = check_aggregate_id(aggregate_id)
        with self._changed:
            return [snap for (agg, _), snap in sorted(self._snapshots.items())
                    if agg == aggregate_id]

    def delete_snapshots(self, aggregate_id: str | _uuid.UUID) -> None:
        aggregate_id = check_aggregate_id(aggregate_id)
        with self.transaction():
            for key in [key for key in self._snapshots if key[0] == aggregate_id]:
                self._undo.append(functools.partial(self._snapshots.__setitem__, key,
                                                    self._snapshots.pop(key)))
            self._pending_snapshots[:] = [s for s in self._pending_snapshots
                                          if s.aggregate_id != aggregate_id]

    def get_next_from(self, id: int, event_types: EventTypes = None,
                      limit: int = 1000) -> list[Event]:
        names = type_names(event_types)
        start = max(check_position("id", id), 1) - 1
        limit = check_limit(limit)
        with self._changed:
            if names is None:
                rows = self._rows[start:start + limit]
            else:  # read on from start only until limit rows match, never copying the whole tail
                wanted = set(names)
                matching = (r for r in itertools.islice(self._rows, start, None)
                            if r.type in wanted)
                rows = list(itertools.islice(matching, limit))
        return decode_rows(rows)

    def latest_event_id(self, event_types: EventTypes = None) -> int:
        names = type_names(event_types)
        with self._changed:
            if names is None:
                return len(self._rows)
            wanted = set(names)
            return next((r.id or 0 for r in reversed(self._rows) if r.type in wanted), 0)

    def get_events_for_aggregate_id(self, aggregate_id: str | _uuid.UUID, *, from_version: int = 1,
                                    to_version: int | None = None) -> list[Event]:
        first, last = version_range(from_version, to_version)
        aggregate_id = check_aggregate_id(aggregate_id)
        with self._changed:
            positions = self._by_aggregate.get(aggregate_id, ())
            rows = [self._rows[i] for i in positions[first - 1:last]]
        return decode_rows(rows)

    def aggregate_version(self, aggregate_id: str | _uuid.UUID) -> int:
        aggregate_id = check_aggregate_id(aggregate_id)
        with self._changed:
            return len(self._by_aggregate.get(aggregate_id, ()))

    def _change_token(self) -> Any:
        return len(self._rows)

    def _wait_for_change(self, token: Any, stopper: Stopper) -> None:
        with self._changed:
            if len(self._rows) == token:
                self._changed.wait(0.05)

    def tracker(self) -> Tracker:
        return self._tracker

    def lock(self, name: str) -> contextlib.AbstractContextManager[LockHeld]:
        return self._locks.lock(name)

    def is_running(self, name: str) -> bool:
        return self._locks.is_running(name)


# ---------------------------------------------------------------------------
# The SQLite backend: its database, event store, tracker and locks.
# ---------------------------------------------------------------------------

def _is_file_path(target: str) -> bool:
    """Whether an SQLite target names a file we open ourselves: not ``:memory:`` nor a ``file:``
    URI."""
    return target != ":memory:" and not target.startswith("file:")


class _Reader:
    """The connection one thread reads on for a ``with`` block outside its transaction
    (SQLiteDatabase. reading): the writer, if this thread was the last to write on it and no thread
    is using it now (its page cache holds what it wrote, where a reader connection would fetch those
    pages again), else the thread's own reader connection (opened on first use), which WAL lets read
    beside the writer; so a read never waits, and a thread that only reads never holds up the
    writers. Either is held under its session's lock for the block, so that a fork waits for the
    read. (A class, not a generator: it is on every read's path.)"""

    __slots__ = ("database", "held", "ident", "session")

    def __init__(self, database: SQLiteDatabase, session: _Session) -> None:
        self.database = database
        self.session = session  # the thread's own, for its reader connection
        self.ident = threading.get_ident()
        self.held: list[_Session] = []  # the sessions of the blocks now open, innermost last

    def __enter__(self) -> sqlite3.Connection:
        writer = self.database._shared
        if writer.owner == self.ident and writer.lock.acquire(False):
            conn: sqlite3.Connection | None = writer.conn
            if conn is not None and not writer.depth:
                self.held.append(writer)
                return conn
            writer.lock.release()
        session = self.session
        session.lock.acquire()  # uncontended: the thread's own
        try:
            # a reader from the pool (waiting if all are in use)
            conn = self.database._hold(session)
        except BaseException:
            session.lock.release()
            raise
        self.held.append(session)
        return conn

    def __exit__(self, *exc: object) -> None:
        session = self.held.pop()
        try:
            if session is self.session:
                self.database._let_go(session)
        finally:
            session.lock.release()


class SQLiteDatabase(Database):
    """This process's connection to one SQLite file (or a connection you opened yourself).

    Every write transaction starts with BEGIN IMMEDIATE, because a deferred
    transaction that has read cannot be upgraded to a writer and fails at
    once with "database is locked". A file is opened in WAL mode; ``prepare``,
    if given, runs on every new connection (the event store creates its schema).

    A file that cannot be written (its permissions, an immutable file, a
    read-only filesystem), or any file when ``read_only=True`` is given, is
    opened read-only (``read_only`` is then True): it can be read, and every
    write transaction raises StoreError; nothing changes the file (its schema
    is not upgraded, its journal mode not switched), a missing file is not
    created, and no -wal or -shm file is left where there was none. A file
    deleted or replaced since it was opened is noticed when the next write
    transaction begins: StoreError, nothing written, until the database is
    closed and opened again.

    Threads: writes take turns on the process's one connection (``lock``),
    and the sinks that arrive while another thread writes are committed
    together (``group_commit``); reads outside the calling thread's
    transaction go to a reader connection of that thread's own (read-only,
    opened on first use), which WAL lets read beside the writer, so a read
    waits neither for other readers nor for a write in progress (the thread
    that last wrote reads on the writer itself while nobody uses it: the pages
    it wrote are cached there, and a reader would fetch them again). A thread's
    reads inside its ``transaction()`` use the writer, and see the
    transaction's uncommitted writes. (An in-memory database, a ``file:``
    URI, a connection you opened and a read-only file have no readers: there
    every read takes its turn on the one connection.)
    """

    begin_statement: ClassVar[str] = "BEGIN IMMEDIATE"
    driver_errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)

    def __init__(self, db: str | os.PathLike[str] | sqlite3.Connection,
                 *, synchronous: str = "FULL", busy_timeout: float = 30.0,
                 prepare: Callable[[sqlite3.Connection], None] | None = None,
                 read_only: bool = False, max_connections: int = 10,
                 connection_timeout: float = 30.0) -> None:
        super().__init__(max_connections=max_connections, connection_timeout=connection_timeout)
        with _fork_gate:
            _sqlite_databases.add(self)
        if (not isinstance(synchronous, str)
            or synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA")):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self._given = db if isinstance(db, sqlite3.Connection) else None
        self._given_pid = 0
        self.path = "" if isinstance(db, sqlite3.Connection) else os.fspath(db)
        if self._given is None and not self.path:
            raise StoreError("an SQLite database needs a file path")
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self._prepare = prepare
        self.read_only = False
        self._open_read_only = read_only
        self._read_only_conns: dict[int, str] = {}  # id -> key, of those in _read_only_openings
        # (device, inode) of the file the connection opened
        self._file_id: tuple[int, int] | None = None
        # reader connections need a file of our own opening (not :memory:, a file: URI or a given
        # connection)
        self._can_have_readers = self._given is None and _is_file_path(self.path)

    def __repr__(self) -> str:
        return f"SQLiteDatabase({self.path or self._given!r})"

    def __getstate__(self) -> dict[str, Any]:
        if self._given is not None:
            raise TypeError("an SQLite database given as an open connection cannot be sent to "
                            "another process; pass its file path instead")
        state = super().__getstate__()
        state.pop("_group", None)
        return state

    def _reset(self) -> None:
        super()._reset()
        # (after a fork: the parent's waiting threads are not in the child)
        self._group = GroupCommit(self._commit_together, writer_lock=lambda: self._shared.lock,
                                  abandoned=self._group_failure)

    def group_commit(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` on the writer and commit it; returns its result once the commit is
        durable.

        Inside the calling thread's ``transaction()`` the work joins that
        transaction. Otherwise the works that threads of this process hand in
        while the writer is busy are committed together (GroupCommit, holding
        the writer's lock): one BEGIN IMMEDIATE, a savepoint each, one COMMIT
        (one fsync for all of them). An exception of ``work`` undoes its own
        writes only, and is raised to its caller alone; when the transaction
        fails as a whole (BEGIN, COMMIT, or an error that ends it) nothing of
        the group is stored and every caller gets a StoreError. With no other
        thread writing, this is one ``transaction()`` around ``work``.
        """
        writer = self._session()
        # the calling thread's transaction
        if writer.depth and writer.owner == threading.get_ident():
            with self.transaction() as conn:
                return work(conn)
        result: _T = self._group.write(work)
        return result

    def _commit_together(self, works: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """GroupCommit's writer: the works in one transaction, a savepoint each (none for a work
        alone), one commit; the outcome of each (its result, or its exception)."""
        if len(works) == 1:
            try:
                with self.transaction() as conn:
                    return [works[0](conn)]
            except Exception as exc:  # noqa: BLE001 - its caller raises it
                return [exc]
        outcomes: list[Any] = []
        try:
            with self.transaction() as conn:
                for work in works:
                    conn.execute("SAVEPOINT es_write")
                    try:
                        outcomes.append(work(conn))
                    except Exception as exc:
                        outcomes.append(exc)
                        # SQLite rolled back everything (some I/O errors do)
                        if not conn.in_transaction:
                            raise StoreError(f"the transaction of {self!r} that this write shared "
                                             "with others was rolled back by one of them: "
                                             f"{exc}") from exc
                        conn.execute("ROLLBACK TO SAVEPOINT es_write")
                    conn.execute("RELEASE SAVEPOINT es_write")
        except Exception as exc:  # nothing of the group is stored
            failed = [o if isinstance(o, BaseException) else self._group_failure(exc)
                      for o in outcomes]
            return failed + [self._group_failure(exc) for _ in works[len(outcomes):]]
        return outcomes

    def _group_failure(self, exc: BaseException) -> StoreError:
        """The error for each write of a group whose transaction failed: a new one each, as one
        exception raised in several threads at once would mix their tracebacks."""
        if isinstance(exc, StoreError):
            error, cause = type(exc)(*exc.args), exc.__cause__
        elif isinstance(exc, sqlite3.Error):
            error, cause = self.error(exc, "commit writes together; nothing was written"), exc
        else:
            error, cause = StoreError(f"the transaction of {self!r} was abandoned ({exc!r}); "
                                      "nothing was written"), exc
        error.__cause__ = cause
        return error

    def _create_connection(self) -> sqlite3.Connection:
        if self._given is not None:
            if self._given_pid and self._given_pid != os.getpid():
                raise StoreError("this SQLite connection was opened in another process; pass a "
                                 "file path instead")
            self._given.isolation_level = None
            self._given_pid = os.getpid()
            if self._prepare:
                self._prepare(self._given)
            return self._given
        path = self.path
        if os.path.isdir(path):
            raise StoreError(f"cannot open SQLite database {path!r}: it is a directory")
        on_disk = _is_file_path(path)
        exists = on_disk and os.path.exists(path)
        conn = None
        if self._open_read_only and not exists:
            raise StoreError(f"cannot open SQLite database {path!r} read-only: it does not exist")
        if not self._open_read_only and (not exists or os.access(path, os.W_OK)):
            try:
                conn = self._connect(path, read_only=False)
            except sqlite3.Error as exc:
                if not exists or os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
                    raise self.error(exc, "open it") from exc
        if conn is None:
            # A file we may not write (a read-only file, directory or filesystem): read it, refuse
            # writes.
            uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
            if os.statvfs(path).f_flag & os.ST_RDONLY:
                uri += "&immutable=1"  # nobody can write it, and its -shm file cannot be created
            key = _begin_read_only_opening(path) if self._open_read_only else None
            try:
                conn = self._connect(uri, read_only=True)
            except BaseException as exc:
                if key is not None:
                    self._end_read_only_opening(key)
                if isinstance(exc, sqlite3.Error):
                    raise self.error(exc, "open it, even read-only") from exc
                raise
            if key is not None:
                self._read_only_conns[id(conn)] = key
        # the file the connection opened (or made)
        self._file_id = self._stat_file() if on_disk else None
        return conn

    def _connect(self, target: str, *, read_only: bool) -> sqlite3.Connection:
        """Open and prepare a connection; an open that finds the file locked is tried again.

        Processes (or connections) that open one new file at once take turns: switching it to WAL
        needs the file to itself, and SQLite answers that BUSY at once, without waiting
        (busy_timeout does not apply, as waiting there could deadlock). So the whole open is tried
        again, after a growing pause (2 ms up to 100 ms, with jitter), until it succeeds or
        busy_timeout has passed since the first try; then StoreError says so."""
        import random

        started = time.monotonic()
        pause = 0.002
        tries = 0
        while True:
            tries += 1
            step = ["open it"]
            try:
                return self._connect_once(target, read_only=read_only, step=step)
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
                if code not in (5, 6) and "locked" not in str(exc):  # SQLITE_BUSY, SQLITE_LOCKED
                    raise
                elapsed = time.monotonic() - started
                if elapsed + pause > self.busy_timeout:
                    raise StoreError(
                        f"cannot open the SQLite database {self.path!r}: other connections kept it "
                        f"locked while it was being opened (the last try failed to {step[0]}), "
                        f"through {tries} tries over {elapsed:.1f} s "
                        f"(busy_timeout={self.busy_timeout:g} s bounds the tries): {exc}") from exc
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 0.1)

    def _connect_once(self, target: str, *, read_only: bool, step: list[str]) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False, uri=read_only)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not read_only and _is_file_path(target):
                step[0] = "switch it to WAL mode (which needs the file to itself)"
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
            step[0] = "set it up"
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if self._prepare:
                # so that prepare sees it may not write
                conn.execute(f"PRAGMA query_only = {int(read_only)}")
                step[0] = "create or check its schema"
                self._prepare(conn)
                # (writes are refused by _began, with a clearer message)
                conn.execute("PRAGMA query_only = 0")
        except BaseException:
            self._close_connection(conn)
            raise
        self.read_only = read_only
        return conn

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        # Every read's path: in_transaction() is spelled out here, and each thread keeps its
        # _Reader.
        writer = self._shared
        if writer.conn is None or self._pid != os.getpid():
            # the writer first: it creates (or upgrades) the schema and finds read_only
            self.ensure_open()
            writer = self._shared
        if writer.depth:
            # inside the calling thread's transaction()
            on_writer = writer.owner == threading.get_ident()
        else:
            conn = writer.conn
            # one opened by hand
            on_writer = conn is not None and self._connection_in_transaction(conn)
        if on_writer or not self._can_have_readers or self.read_only:
            return super().reading()
        try:
            reader: _Reader = self._local.reader
        except AttributeError:
            reader = self._local.reader = _Reader(self, self._thread_session())
        return reader

    def _create_thread_connection(self) -> sqlite3.Connection:
        return self._create_reader()

    def _create_reader(self) -> sqlite3.Connection:
        """A read-only connection for the pool of readers (it never creates the file)."""
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None,
                                   # closed by close(), from whichever thread
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self.error(exc, "open a reader connection") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc, "prepare a reader connection") from exc
        return conn

    def _stat_file(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:  # no such file (or no way to reach it)
            return None
        return st.st_dev, st.st_ino

    def _began(self, conn: Any) -> None:
        if self.read_only:
            raise StoreError(f"the SQLite database {self.path!r} is read-only here (the file or "
                             "its filesystem cannot be written); nothing was written")
        if self._file_id is not None and self._stat_file() != self._file_id:
            raise StoreError(f"the SQLite database file {self.path!r} was deleted or replaced "
                             "since this process opened it; nothing was written (close the store "
                             "and open it again)")

    def error(self, exc: Exception, doing: str) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF  # Python 3.11+; else the message tells
        text = str(exc)
        where = f"the SQLite database {self.path or self._given!r}"
        if code in (11, 26) or "malformed" in text or "not a database" in text or "UTF-8" in text:
            # SQLITE_CORRUPT, SQLITE_NOTADB, or text that is not UTF-8
            return CorruptEventError(f"{where} is damaged: cannot {doing}: {text}")
        if code == 8 or "readonly" in text:  # SQLITE_READONLY
            return StoreError(f"{where} cannot be written: cannot {doing}: {text}")
        if code == 13 or "disk is full" in text:  # SQLITE_FULL
            return StoreError(f"the disk of {where} is full: cannot {doing}: {text}")
        if code in (5, 6) or "locked" in text:  # SQLITE_BUSY, SQLITE_LOCKED
            return StoreError(f"{where} stayed locked by another writer for "
                              f"busy_timeout={self.busy_timeout} s: cannot {doing}: {text}")
        return StoreError(f"{where}: cannot {doing}: {text}")

    def time_value(self, value: _dt.datetime | str) -> Any:
        return value.isoformat() if isinstance(value, _dt.datetime) else value
    def _begin_at_first_write(self, conn: Any, on: bool) -> bool:
        # sqlite3 itself issues BEGIN IMMEDIATE before the first INSERT, UPDATE, DELETE or REPLACE
        with contextlib.suppress(sqlite3.Error):  # (a connection closed meanwhile)
            conn.isolation_level = "IMMEDIATE" if on else None
        return True

    def _connection_in_transaction(self, conn: Any) -> bool:
        try:
            return bool(conn.in_transaction)
        except sqlite3.ProgrammingError:  # closed: its transaction, if any, is gone
            return False

    @property
    def location(self) -> str | None:
        if not self.path or not _is_file_path(self.path):
            return None
        return os.path.abspath(self.path)

    def _close_connection(self, conn: Any) -> None:
        if conn is not self._given:
            conn.close()
            key = self._read_only_conns.pop(id(conn), None)
            if key is not None:
                self._end_read_only_opening(key)

    def _end_read_only_opening(self, key: str) -> None:
        """Count one read-only connection to the file ``key`` closed; the process's last one
        removes the -wal and -shm files that the first one made (whichever thread or database
        object opened it)."""
        with _read_only_openings_lock:
            openings = _read_only_openings[key]
            openings[0] -= 1
            if openings[0] == 0:
                del _read_only_openings[key]
                if openings[1]:  # (under the lock: no read-only connection to it opens meanwhile)
                    self._remove_companions()

    def _remove_companions(self) -> None:
        """Let SQLite remove the -wal and -shm files read-only connections (opened with
        ``read_only=True`` where there were none) made and leave behind: one connection that reads
        and closes removes them when it is the file's last and the WAL is empty, as the last
        writer's close would; the database file itself does not change. Left alone when another
        process has written meanwhile."""
        try:
            if os.path.getsize(self.path + "-wal") != 0:
                return
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=rw"
            with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except (OSError, sqlite3.Error):
            # nothing to tidy, or no way to: they are harmless, and the next writer removes them
            pass

    def create_tables(self, conn: Any, ddl: str) -> None:
        # The write transaction the caller opened (BEGIN IMMEDIATE) already keeps other processes
        # out.
        for statement in ddl.split(";"):
            if statement.strip():
                conn.execute(statement)

    def drop_tables(self, conn: Any, tables: Iterable[str]) -> None:
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


# A child made by fork() copies SQLite's in-process record of the locks this process holds on each
# file: forked while another thread is inside a statement or transaction, the child would wait for a
# lock nobody in it holds. So a fork waits (a bounded while) until no thread uses an SQLite
# connection.
_sqlite_databases: weakref.WeakSet[SQLiteDatabase] = weakref.WeakSet()
# held from the start of a fork until it is done: no database registers meanwhile
_fork_gate = threading.Lock()
_held_for_fork: list[Any] = []  # the locks a fork holds (released after it, in parent and child)


# The connections opened with read_only=True that this process has open on each SQLite file (by
# real path): [how many, whether the first found no -wal or -shm file there]. Counted for the
# process, not per database object: threads that each open a file read-only at once
# (processor_statuses() of a threaded server) must leave the companions to the last of them, which
# removes them if theirs they were.
_read_only_openings: dict[str, list[int]] = {}
_read_only_openings_lock = threading.Lock()


def _begin_read_only_opening(path: str) -> str:
    """Count a read-only connection to ``path`` about to open; returns the key to end it with."""
    key = os.path.realpath(path)
    with _read_only_openings_lock:
        openings = _read_only_openings.setdefault(key, [0, 0])
        if openings[0] == 0:
            openings[1] = not any(os.path.exists(path + suffix) for suffix in ("-wal", "-shm"))
        openings[0] += 1
    return key


def _quiesce_sqlite_for_fork() -> None:
    deadline = time.monotonic() + 2.0

    def hold(lock: Any) -> None:
        if lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            _held_for_fork.append(lock)

    hold(_fork_gate)
    for database in list(_sqlite_databases):
        if database._pid == os.getpid():
            hold(database._registry)  # no thread gets a new session (and so a connection) meanwhile
            for session in [database._shared, *database._sessions]:
                hold(session.lock)
    hold(_read_only_openings_lock)  # last: its holder (closing) may hold a session's lock


def _release_after_fork() -> None:
    while _held_for_fork:
        with contextlib.suppress(RuntimeError):
            _held_for_fork.pop().release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_quiesce_sqlite_for_fork, after_in_parent=_release_after_fork,
                        after_in_child=_release_after_fork)


SQLITE_SCHEMA_VERSION = 2
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS eventsourcery_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    aggregate_id TEXT NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    correlation_id TEXT,
    causation_id TEXT,
    body TEXT NOT NULL,
    metadata TEXT,
    UNIQUE (aggregate_id, version)
);
CREATE INDEX IF NOT EXISTS events_type_id ON events (type, id);
{trackers};
CREATE TABLE IF NOT EXISTS eventsourcery_snapshots (
    aggregate_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    version INTEGER NOT NULL,
    snapshot_version INTEGER NOT NULL,
    last_event_uuid TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, aggregate_type)
);
""".replace("{trackers}", tracker_table_ddl(TRACKER_TABLE))

#: Statements that take a store of each older schema version to the next one, in one transaction.
_SQLITE_UPGRADES = {
    # 2: application metadata (and the snapshots table)
    1: "ALTER TABLE events ADD COLUMN metadata TEXT",
}


def _create_sqlite_store_schema(conn: sqlite3.Connection) -> None:
    # erased or deleted data is overwritten, not left in free space
    conn.execute("PRAGMA secure_delete = ON")
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'eventsourcery_schema'").fetchone()
    if row:
        version = conn.execute("SELECT max(version) FROM eventsourcery_schema").fetchone()[0]
        if version == SQLITE_SCHEMA_VERSION:
            return
        if version is not None and version > SQLITE_SCHEMA_VERSION:
            raise StoreError(f"this store has schema version {version}; this eventsourcery "
                             f"({__version__}) knows version {SQLITE_SCHEMA_VERSION}: upgrade "
                             "eventsourcery")
    # opened read-only: it is neither created nor upgraded
    if conn.execute("PRAGMA query_only").fetchone()[0]:
        raise StoreError(f"this file holds no store of schema version {SQLITE_SCHEMA_VERSION}, "
                         f"which this eventsourcery ({__version__}) writes (it has none, or an "
                         "older one), and it is opened read-only here, so nothing is created or "
                         "upgraded: an older store is upgraded when it is first opened for writing")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # read again under the write lock: another process may have created or upgraded it
        version = None
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone():
            has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE name = "
                                     "'eventsourcery_schema'").fetchone()
            version = (conn.execute("SELECT max(version) FROM eventsourcery_schema").fetchone()[0]
                       if has_table else None) or 1
        # upgrade in place, one step at a time
        if version is not None and version < SQLITE_SCHEMA_VERSION:
            for step in range(version, SQLITE_SCHEMA_VERSION):
                for statement in _SQLITE_UPGRADES.get(step, "").split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("DELETE FROM eventsourcery_schema")
        for statement in _SQLITE_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if conn.execute("SELECT count(*) FROM eventsourcery_schema").fetchone()[0] == 0:
            conn.execute("INSERT INTO eventsourcery_schema (version) VALUES (?)",
                         (SQLITE_SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _check_existing_sqlite_store(path: str) -> None:
    """Raise StoreError unless ``path`` is an existing eventsourcery store; looks read-only, changes
    nothing."""
    if not os.path.exists(path):
        raise StoreError(f"no eventsourcery store at {path!r}: it does not exist (it is not "
                         "created when opening an existing store)")
    if os.path.isdir(path):
        raise StoreError(f"cannot open store {path!r}: it is a directory, not an SQLite file")
    database = SQLiteDatabase(path, read_only=True)  # which leaves no -wal or -shm file behind
    try:
        tables = {row[0] for row in database.fetch_all(
            "SELECT name FROM sqlite_master WHERE type = 'table'", doing="read its tables")}
    finally:
        database.close()
    if "events" not in tables:
        raise StoreError(f"no eventsourcery store at {path!r}: that SQLite file is not an "
                         "eventsourcery event store (it has no events table); it was left as it "
                         "was")


class _FileLocks:
    """Single-instance locks as flock()ed files beside a database file; the OS releases them on
    death."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, name: str) -> str:
        if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", name):
            return os.path.join(self.directory, name + ".lock")
        # Any other name: a readable prefix and a digest of the whole name, so that two names never
        # share a file and a long one still fits in a file name.
        import hashlib
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
        return os.path.join(self.directory,
                            f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)[:40]}%{digest}.lock")

    def _try(self, name: str, exclusive: bool = True) -> int | None:
        import fcntl
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[LockHeld]:
        fd = self._try(name)
        deadline = time.monotonic() + 0.25
        while fd is None and time.monotonic() < deadline:
            time.sleep(0.01)  # an is_running() probe holds the lock for an instant: try again
            fd = self._try(name)
        if fd is None:
            raise UnableToLockProcessorError(f"processor {name!r} is already running against this "
                                             f"store (lock file {self._path(name)})")
        path = self._path(name)

        def held() -> bool:  # the file locked is still the one at that path
            try:
                here, ours = os.stat(path), os.fstat(fd)
            except OSError:
                return False
            return (here.st_ino, here.st_dev) == (ours.st_ino, ours.st_dev)

        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield held
        finally:
            os.close(fd)

    def is_running(self, name: str) -> bool:
        if not os.path.exists(self._path(name)):
            return False
        fd = self._try(name, exclusive=False)
        if fd is None:
            return True
        os.close(fd)
        return False


class SQLiteEventStore(SQLEventStore[SQLiteDatabase]):
    """An event store in one SQLite file, shared safely by several processes on one host.

    The file is created with its schema on first use, in WAL mode. By default
    ``synchronous="FULL"``: a committed event survives power loss. With
    ``"NORMAL"`` commits are about twice as fast and still survive any
    application crash, but a power loss may roll back the last commits.
    Processor positions are kept in the same file (``tracker()``), and the
    single-instance locks of processors in ``<path>.locks/``. With
    ``read_only=True`` an existing store is opened only to be read (as the
    command line's read commands do): nothing is created or changed, and
    every write raises StoreError. With ``create=False`` only an existing
    store is opened (StoreError otherwise).

    Reads go to reader connections beside the one writer: at most
    ``max_connections`` of them (default 10); a thread that finds them all
    in use waits for one up to ``connection_timeout`` seconds (default 30),
    then gets StoreError.
    """

    _INSERT = ("INSERT INTO events (uuid, aggregate_id, type, version, created_at, correlation_id, "
               "causation_id, metadata, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 busy_timeout: float = 30.0, poll_interval: float = 0.005,
                 read_only: bool = False, create: bool = True, max_connections: int = 10,
                 connection_timeout: float = 30.0) -> None:
        if read_only or not create:
            _check_existing_sqlite_store(os.fspath(path))
        self._db = SQLiteDatabase(path, synchronous=synchronous, busy_timeout=busy_timeout,
                                  prepare=_create_sqlite_store_schema, read_only=read_only,
                                  max_connections=max_connections,
                                  connection_timeout=connection_timeout)
        self.path = self._db.path
        self.poll_interval = poll_interval
        self._tracker = DatabaseTracker(self._db)
        self._locks: _FileLocks | _ProcessLocks = (
            _FileLocks(self.path + ".locks") if _is_file_path(self.path)
            else _ProcessLocks())
        self._db.ensure_open()  # so that a bad path fails here, with a clear error

    def __repr__(self) -> str:
        return f"SQLiteEventStore({self.path!r})"

    @property
    def shared_between_processes(self) -> bool:  # type: ignore[override]
        return _is_file_path(self.path)  # (":memory:" and a "file:" URI are this process's)

    def lock(self, name: str) -> contextlib.AbstractContextManager[LockHeld]:
        return self._locks.lock(name)

    def is_running(self, name: str) -> bool:
        return self._locks.is_running(name)

    def sink(self, event_or_events: Event | Sequence[Event],
             expected_version: int | None = None) -> list[Event]:
        events, aggregate_id, rows = encode_events(event_or_events, expected_version)

        def append(conn: sqlite3.Connection) -> tuple[int, int]:
            current = conn.execute("SELECT max(version) FROM events WHERE aggregate_id = ?",
                                   (aggregate_id,)).fetchone()[0] or 0
            if expected_version is not None and current != expected_version:
                raise ConcurrencyError(f"aggregate {aggregate_id!r} is at version {current}, "
                                       f"expected {expected_version}")
            # Rowids are max + 1 under the write lock, so a batch's ids are contiguous.
            values = [(r.uuid, r.aggregate_id, r.type, current + 1 + i,
                       r.created_at.isoformat(),  # type: ignore[union-attr]
                       r.correlation_id, r.causation_id, r.metadata, r.body)
                      for i, r in enumerate(rows)]
            if len(values) == 1:
                last_id = conn.execute(self._INSERT, values[0]).lastrowid or 0
            else:
                conn.executemany(self._INSERT, values)
                last_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            return last_id - len(values) + 1, current

        try:
            # with other threads' sinks, if they wait
            first_id, current = self._db.group_commit(append)
        except sqlite3.IntegrityError as exc:
            if "uuid" in str(exc):
                raise DuplicateEventError(f"an event with one of these uuids is already stored: "
                                          f"{[r.uuid for r in rows]}") from exc
            raise ConcurrencyError(
                f"concurrent write to aggregate {aggregate_id!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise self._db.error(
                exc, f"store events of aggregate {aggregate_id!r}; nothing was written") from exc
        return stored_copies(events, rows, first_id, current + 1)

    def scrub(self) -> None:
        # secure_delete (on for every store connection) zeroed what the UPDATE freed in the file;
        # the WAL still holds older copies of those pages until a checkpoint writes them back and
        # truncates it.
        if self._db.in_transaction():
            return  # inside a caller's transaction: the next checkpoint after it commits does it
        with self._db.lock:  # on the writer: a reader may not checkpoint (query_only)
            try:
                busy = self._db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                raise self._db.error(exc, "checkpoint the WAL") from exc
        if busy:
            config.logger.warning("%r: erased data stays in the WAL file until no reader holds it "
                                  "back (the next checkpoint removes it)", self)

    def stats(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        counts = super().stats(progress)
        wal = self.path + "-wal"
        try:
            file_size = os.path.getsize(self.path)
            wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
        except OSError as exc:
            raise StoreError(f"cannot read the size of {self.path!r}: {exc}") from exc
        return {**counts, "file_size": file_size, "wal_size": wal_size}

    def _change_token(self) -> Any:
        # On a reader connection data_version moves with every commit of another connection, this
        # process's writer included; on the writer our own are counted. (A poll that reads on the
        # other connection than the last one sees a change that may not be one: that costs one
        # read.)
        with self._db.reading() as conn:
            try:
                return (conn.execute("PRAGMA data_version").fetchone()[0], self._db.commits)
            except sqlite3.Error as exc:
                raise self._db.error(exc, "poll for new events") from exc

    def _wait_for_change(self, token: Any, stopper: Stopper) -> None:
        # PRAGMA data_version changes when another connection commits; our own
        # commits are counted in-process. Either is only a hint to read again:
        # correctness comes from reading on from the saved position.
        waited = 0.0
        interval = 0.001
        while not stopper.is_set() and self._change_token() == token and waited < 1.0:
            stopper.sleep(interval)
            waited += interval
            interval = min(interval * 2, self.poll_interval)


class SQLiteTracker(DatabaseTracker):
    """Positions in the ``eventsourcery_trackers`` table of an SQLite file (a path or an open
    connection)."""

    def __init__(self, db: str | os.PathLike[str] | sqlite3.Connection | SQLiteDatabase) -> None:
        super().__init__(db if isinstance(db, SQLiteDatabase) else SQLiteDatabase(db))


# ---------------------------------------------------------------------------
# Opening stores and databases by URL: one parser, and a table of the
# backend modules that are imported only when a URL names them.
# ---------------------------------------------------------------------------

class StoreURL(NamedTuple):
    """What a store URL names: ``scheme`` (``memory``, ``sqlite`` or a key of BACKENDS) and
    ``target`` (the SQLite file path, or the URL a backend module is given; empty for
    ``memory``)."""

    scheme: str
    target: str


#: URL scheme -> the module that opens stores and databases of that kind, imported when a URL first
#: names it. Such a module offers ``open_store(url, *, create=True, max_connections=10,
#: connection_timeout=30.0)`` and ``open_database(url, **options)``.
BACKENDS: dict[str, str] = {"postgresql": "eventsourcery_pg", "postgres": "eventsourcery_pg"}


def parse_store_url(url: str | os.PathLike[str]) -> StoreURL:
    """Read ``memory:``, a file path, ``sqlite:///relative/path``, ``sqlite:////absolute/path`` or a
    backend's URL (``postgresql://...``); StoreError for anything else."""
    text = os.fspath(url)
    if not isinstance(text, str):
        raise TypeError(f"a store URL must be a str or a path, not {type(url).__name__}")
    if text == "memory:":
        return StoreURL("memory", "")
    if text.startswith("sqlite:///"):
        return StoreURL("sqlite", text[len("sqlite:///"):])
    if text.startswith("sqlite:"):
        raise StoreError(f"cannot read store URL {text!r}: use sqlite:///relative/path or "
                         "sqlite:////absolute/path")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and scheme.group(1).lower() in BACKENDS:
        return StoreURL(scheme.group(1).lower(), text)
    if scheme or not text:
        raise StoreError(f"cannot open store {text!r}: use memory:, a file path, sqlite:///path "
                         f"or {', '.join(f'{name}://...' for name in BACKENDS)}")
    return StoreURL("sqlite", text)


def _backend(scheme: str) -> Any:
    import importlib
    return importlib.import_module(BACKENDS[scheme])


def open_store(url: str | os.PathLike[str], *, create: bool = True, read_only: bool = False,
               max_connections: int = 10, connection_timeout: float = 30.0) -> EventStore:
    """Open an event store from ``memory:``, a file path, ``sqlite:///path`` or
    ``postgresql://...``.

    With ``create=False`` only an existing store is opened (StoreError otherwise) and nothing is
    created; with ``read_only=True`` it is also only read: every write raises StoreError (an SQLite
    file is opened read-only and stays as it was; a Postgres session's transactions are read-only).
    ``max_connections`` bounds the connections the store object lends its threads (SQLite: its
    reader connections; the writer is one more), and ``connection_timeout`` is how long (seconds) a
    thread waits for one when all are in use before StoreError.
    """
    check_pool_arguments(max_connections, connection_timeout)
    location = parse_store_url(url)
    if location.scheme == "memory":
        return MemoryEventStore()
    options: dict[str, Any] = dict(create=create, read_only=read_only,
                                   max_connections=max_connections,
                                   connection_timeout=connection_timeout)
    if location.scheme == "sqlite":
        return SQLiteEventStore(location.target, **options)
    store: EventStore = _backend(location.scheme).open_store(location.target, **options)
    return store


def open_database(target: str | os.PathLike[str] | sqlite3.Connection | Database,
                  **options: Any) -> Database:
    """The Database a projector writes to: a Database as given, an open ``sqlite3.Connection``, a
    file path (``sqlite:///`` too) or a backend's URL; ``options`` go to that backend's database
    class."""
    if isinstance(target, Database):
        return target
    if isinstance(target, sqlite3.Connection):
        return SQLiteDatabase(target, **options)
    location = parse_store_url(target)
    if location.scheme == "memory":
        raise StoreError("memory: has no SQL database for a processor's tables; give a file path, "
                         "':memory:' for an in-memory SQLite database, or a postgresql:// URL")
    if location.scheme == "sqlite":
        return SQLiteDatabase(location.target, **options)
    database: Database = _backend(location.scheme).open_database(location.target, **options)
    return database


# ---------------------------------------------------------------------------
# Command line: python -m eventsourcery STORE COMMAND ...
# ---------------------------------------------------------------------------

class _CLIError(Exception):
    """A failure the command line reports as one line on stderr, with exit status ``status`` (1)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _cli_open_store(target: str, *, read_only: bool) -> EventStore:
    """Open an existing store; nothing is ever created. For a read command (``read_only``) an SQLite
    file is opened read-only, so nothing in it changes. A ``memory:`` store is refused: it would be
    empty."""
    location: StoreURL | None = None
    with contextlib.suppress(Error, ValueError):
        location = parse_store_url(target)
    if location is not None and location.scheme == "memory":
        raise _CLIError(f"{target!r} is a store in one process's memory, which the command line "
                        "cannot see; give an SQLite file or a postgresql:// URL")
    try:
        return open_store(target, create=False, read_only=read_only)
    except ImportError as exc:
        raise _CLIError(f"cannot open {target!r}: {exc} (the Postgres store needs psycopg: "
                        "pip install 'eventsourcery[postgres]')") from exc


def _cli_time(value: _dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_CLI_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _cli_safe(text: str, keep: str = "") -> str:
    """``text`` with control characters escaped (except those in ``keep``), so that a stored
    string cannot drive the terminal: the one escaping of the command line. A value printed
    inside a line is escaped whole (a newline in it too, so it cannot forge a line); all output
    passes here once more on its way out (``_CLISafeStream``), with its own newlines kept."""
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return _CLI_CONTROL.sub(escape, text)


class _CLISafeStream:
    """A text stream that writes to ``stream`` through ``_cli_safe``, keeping newlines: the
    command line writes all it prints (stdout and stderr, its own messages, argparse's, the
    library's log lines) through two of these, so nothing stored reaches the terminal as a
    control character, whichever command prints it. JSON output is ASCII (``_cli_json_line``):
    it passes unchanged."""

    def __init__(self, stream: typing.TextIO) -> None:
        self.raw_stream = stream

    def write(self, text: str) -> int:
        self.raw_stream.write(_cli_safe(text, keep="\n"))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        return getattr(self.raw_stream, name)


class _CLILogFormatter(logging.Formatter):
    """The library's log lines as the command line prints them: one line each, escaped whole (a
    processor name with a newline in it cannot forge a line)."""

    def format(self, record: logging.LogRecord) -> str:
        return _cli_safe(super().format(record))


def _cli_raw(stream: typing.TextIO) -> typing.TextIO:
    """The stream under a ``_CLISafeStream``: for the progress line's own carriage returns only."""
    return stream.raw_stream if isinstance(stream, _CLISafeStream) else stream


def _cli_json(value: Any) -> str:
    """``value`` as compact JSON, non-ASCII kept: for a table cell, which ``_cli_safe`` escapes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _cli_json_line(value: Any) -> str:
    """``value`` as one line of JSON output: ASCII only (JSON escapes every control character of
    a string, and ``ensure_ascii`` every character past ASCII, C1 controls included), so it is
    exact and safe."""
    return json.dumps(value, default=str) + "\n"


def _cli_event_dict(event: Event) -> dict[str, Any]:
    """An event as one JSON object: every metadata field and the body."""
    return {"id": event.id, "uuid": event.uuid, "type": event.type,
            "aggregate_id": event.aggregate_id, "version": event.version,
            "created_at": event.created_at.isoformat() if event.created_at is not None else None,
            "correlation_id": event.correlation_id, "causation_id": event.causation_id,
            "metadata": dict(event.metadata), "body": event.body}


class _CLIProgress:
    """A progress line on stderr, drawn only when stderr is a terminal and cleared before other
    output."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.enabled = sys.stderr.isatty()
        self._shown = 0
        self._last = float("-inf")

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        text = _cli_safe(f"{self.label}: {done:,} of {self.total:,}")
        err = _cli_raw(sys.stderr)
        err.write("\r" + text.ljust(self._shown))
        err.flush()
        self._shown = len(text)

    def clear(self) -> None:
        if self._shown:
            err = _cli_raw(sys.stderr)
            err.write("\r" + " " * self._shown + "\r")
            err.flush()
            self._shown = 0
            self._last = float("-inf")


class _CLIEventPrinter:
    """Writes events as an aligned table (columns widen as needed) or as JSON lines."""

    HEADER = ("id", "created_at", "type", "aggregate_id", "version")

    def __init__(self, as_json: bool, width: int | None) -> None:
        self.as_json = as_json
        self.width = width
        self.widths = [len(h) for h in self.HEADER]
        self.printed = 0

    def _line(self, cells: Sequence[str], body: str) -> str:
        parts = [c.rjust(w) if i in (0, 4) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, self.widths, strict=True))]
        line = "  ".join(parts) + "  " + body
        if self.width is not None and len(line) > self.width:
            line = line[:max(self.width - 1, 0)] + "…"
        return line.rstrip()

    def fit(self, events: Sequence[Event], next_id: int = 0) -> None:
        """Widen the columns for these events (and for ids up to ``next_id``), printing nothing."""
        for e in events:
            cells = (str(e.id), _cli_time(e.created_at), _cli_safe(str(e.type)),
                     _cli_safe(e.aggregate_id), str(e.version))
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        self.widths[0] = max(self.widths[0], len(str(next_id)))

    def write(self, events: Sequence[Event]) -> None:
        out = sys.stdout
        if self.as_json:
            out.writelines(_cli_json_line(_cli_event_dict(e)) for e in events)
        else:
            rows = [(str(e.id), _cli_time(e.created_at), _cli_safe(str(e.type)),
                     _cli_safe(e.aggregate_id), str(e.version),
                     _cli_safe(_cli_json(e.body) + (f"  metadata {_cli_json(e.metadata)}"
                                                    if e.metadata else ""))) for e in events]
            self.fit(events)
            if not self.printed and rows:
                out.write(self._line(self.HEADER, "body") + "\n")
            out.writelines(self._line(row[:5], row[5]) + "\n" for row in rows)
        self.printed += len(events)
        out.flush()


def _cli_printer(args: argparse.Namespace) -> _CLIEventPrinter:
    width: int | None = None
    if not args.wide and (sys.stdout.isatty() or "COLUMNS" in os.environ):
        import shutil
        width = shutil.get_terminal_size().columns
    return _CLIEventPrinter(args.json, width)


def _cli_matches(args: argparse.Namespace) -> Callable[[Event], bool]:
    types = set(args.type or ())
    aggregate = args.aggregate
    return (lambda e: (not types or e.type in types)
            and (aggregate is None or e.aggregate_id == aggregate))


def _cli_events(store: EventStore, args: argparse.Namespace) -> int:
    printer = _cli_printer(args)
    limit: int | None = args.limit
    if args.aggregate is not None:
        matches = _cli_matches(args)
        history = [e for e in store.get_events_for_aggregate_id(args.aggregate)
                   if (e.id or 0) >= args.from_id and matches(e)]
        printer.write(history[:limit])
    else:
        latest = store.latest_event_id()
        progress = _CLIProgress("reading events", latest)
        position = args.from_id
        remaining = limit
        try:
            while position <= latest and (remaining is None or remaining > 0):
                page = store.get_next_from(position, args.type, limit=min(1000, remaining or 1000))
                page = [e for e in page if (e.id or 0) <= latest]
                if not page:
                    break
                if sys.stdout.isatty():  # the same terminal, maybe: no progress line amid the rows
                    progress.clear()
                printer.write(page)
                position = (page[-1].id or 0) + 1
                if remaining is not None:
                    remaining -= len(page)
                progress.update(position - 1)
        finally:
            progress.clear()
    if not printer.printed:
        sys.stderr.write("no events\n")
    return 0


def _cli_follow(store: EventStore, args: argparse.Namespace) -> int:
    printer = _cli_printer(args)
    matches = _cli_matches(args)
    latest = store.latest_event_id()
    start = args.from_id if args.from_id is not None else latest + 1
    if start <= latest:
        sys.stderr.write(f"printing the stored events from id {start}, then waiting for new events "
                         "(Ctrl-C to stop)\n")
    else:
        sys.stderr.write(f"waiting for new events after id {latest} (Ctrl-C to stop)\n")
    sys.stderr.flush()
    # size the columns for what the latest events hold, so that new rows stay aligned
    if not args.json:
        printer.fit(store.get_next_from(max(latest - 999, 1)), next_id=latest + 1000)
    stopping = False

    def stop(signum: int, frame: types.FrameType | None) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C while the store is busy: stop at once
            raise KeyboardInterrupt
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for batch in store.subscribe(start, args.type, stop=lambda: stopping):
            selected = [e for e in batch if matches(e)]
            if selected:
                printer.write(selected)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _cli_aggregate(store: EventStore, args: argparse.Namespace) -> int:
    history = store.get_events_for_aggregate_id(args.aggregate_id)
    if not history:
        sys.stderr.write(f"no events for aggregate {_cli_safe(repr(args.aggregate_id))}\n")
        return 0
    _cli_printer(args).write(history)
    snapshots = store.snapshots(args.aggregate_id)
    notes = ([f"snapshot of {_cli_safe(snap.aggregate_type)} at version {snap.version} "
              f"(snapshot_version {snap.snapshot_version}, taken "
              f"{_cli_time(_cli_datetime(snap.created_at))})" for snap in snapshots]
             or ["no snapshot"])
    (sys.stderr if args.json else sys.stdout).writelines(note + "\n" for note in notes)
    return 0


def _cli_datetime(value: _dt.datetime | str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _cli_confirm(question: str) -> bool:
    """Ask ``question [y/N]`` on stderr and read the answer from stdin: True only for y or yes."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line.endswith("\n") or not sys.stdin.isatty():
        sys.stderr.write("\n")  # the answer was not echoed: end the prompt's line
    return line.strip().lower() in ("y", "yes")


def _cli_erase(store: EventStore, args: argparse.Namespace) -> int:
    aggregate_id = args.aggregate_id
    version = store.aggregate_version(aggregate_id)
    shown = _cli_safe(repr(aggregate_id))
    if version == 0:
        sys.stderr.write(f"no events for aggregate {shown}: nothing erased\n")
        return 0
    if not args.yes and not _cli_confirm(f"Erase aggregate {shown} for good ({version} events: "
                                         "their bodies and metadata are removed; this cannot be "
                                         "undone)?"):
        sys.stderr.write(f"not erased: {shown} keeps its {version} events\n")
        return 1
    erased = store.erase_aggregate(aggregate_id, reason=args.reason)
    assert erased is not None
    sys.stdout.write(f"erased {shown}: {erased.erased_events} events are tombstones now; "
                     f"event {erased.id} ({erased.type}) tells projectors to forget it\n")
    return 0


def _cli_processors(store: EventStore, args: argparse.Namespace) -> int:
    statuses = processor_statuses(store)
    if not statuses:
        sys.stderr.write("no processors have run against this store\n")
        return 0
    if args.json:
        sys.stdout.writelines(_cli_json_line(dataclasses.asdict(s)) for s in statuses)
        return 0
    rows = [("name", "position", "lag", "running", "state")] + [
        (_cli_safe(s.name), str(s.position), str(s.lag), "yes" if s.running else "no", s.state)
            for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row, status in zip(rows, [None, *statuses], strict=True):
        sys.stdout.write(f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  "
                         f"{row[2].rjust(widths[2])}  {row[3].ljust(widths[3])}  {row[4]}\n")
        if status is not None and status.last_error is not None:
            at = (f" at event {status.failing_event_id}" if status.failing_event_id is not None
                  else "")
            sys.stdout.write(f"  failing{at}: {_cli_safe(status.last_error)}\n")
            horizon = status.replay_horizon
            if status.failing_event_id is not None and status.failing_event_id <= horizon:
                reset = (f"python -m eventsourcery {shlex.quote(args.store)} reset "
                         f"{shlex.quote(status.name)}")
                sys.stdout.write(
                    f"  it fails while replaying (it had processed events 1-{horizon} before its "
                    "last reset): if its tables still hold what it wrote then, skipping will not "
                    f"help; reset it with its tables: {_cli_safe(reset)}\n")
            if status.failing_event_id is not None:
                command = _skip_command(shlex.quote(args.store), status.name,
                                        status.failing_event_id)
                sys.stdout.write("  to move it past that event without processing it: "
                                 f"{_cli_safe(command)}\n")
        if status is not None and status.standby is not None:
            sys.stdout.write("  standby: pid "
                             f"{_cli_safe(status.standby.replace('@', ' on host '))}\n")
        if status is not None and status.parked:
            command = (f"python -m eventsourcery {shlex.quote(args.store)} parked "
                       f"{shlex.quote(status.name)}")
            sys.stdout.write(f"  parked: {status.parked} event{'s' if status.parked != 1 else ''} "
                             f"(see {_cli_safe(command)})\n")
        for part in status.partitions if status is not None else ():
            owner = (f", owner pid {_cli_safe(part.owner.replace('@', ' on host '))}"
                     if part.owner else "")
            sys.stdout.write(f"  partition {part.partition}: position {part.position}, lag "
                             f"{part.lag}, {part.state}{owner}\n")
    return 0


def _tables_to_reset(record: TrackerRecord, *, keep_tables: bool = False,
                     command: str = "python -m eventsourcery STORE reset NAME") -> tuple[str, ...]:
    """The tables a reset of processor ``record.name`` drops with its position (none with
    ``keep_tables``), as its own ``reset()`` would; ValueError, naming ``command`` (the reset
    command line) among what to do, when they are not recorded or include the store's own."""
    name = record.name
    # A processor with a schema lists its tables in its record, beside them: they go with the
    # position, as its reset() drops them, so that it rebuilds them from event 1.
    if keep_tables:
        return ()
    if record.tables is None and record.kind in ("projector", "reactor"):
        raise ValueError(
            f"not reset: the tables of {record.kind} {name!r} are not recorded in its tracker (it "
            "last ran with an older eventsourcery), so the command line cannot drop them, and a "
            "position of 0 over its old rows would fail or double them; either call reset() on "
            f"the {record.kind} in your code (it drops its tables and its position), or run it "
            "once with this eventsourcery (it records its tables as it starts) and then: "
            f"{command}; or drop its tables yourself and then: {command} --keep-tables")
    tables = record.tables or ()
    store_own = [t for t in tables
                 if t.lower() == "events" or t.lower().startswith("eventsourcery_")]
    if store_own and not record.location:
        raise ValueError(f"not reset: {name!r} lists the store's own tables "
                         f"{', '.join(store_own)} as its tables; the command line does not drop "
                         "those")
    return tables


def _reset_processor(store: EventStore, record: TrackerRecord,
                     tables: Sequence[str] = ()) -> None:
    """Set the position of processor ``record.name`` (a located record) back to 0 where it is
    kept and drop ``tables`` in the same transaction, under its lock
    (UnableToLockProcessorError while it runs)."""
    database = open_database(record.location) if record.location else store.database
    try:
        with contextlib.ExitStack() as locks:  # (each partition's, of one split into partitions)
            for name in _partition_names(record.name, record.partitions or 1):
                locks.enter_context(store.lock(name))
            if database is None:  # a store without an SQL database (none the command line opens)
                store.tracker().reset(record.name)
            else:
                tracker = DatabaseTracker(database) if record.location else store.tracker()
                with database.transaction() as conn:  # the tables and the position go together
                    database.drop_tables(conn, tables)
                    tracker.reset(record.name)
    finally:
        if record.location and database is not None:
            database.close()


def _cli_reset(store: EventStore, args: argparse.Namespace) -> int:
    name = args.name
    shown = _cli_safe(name)
    records = {r.name: r for r in store.tracker().records()}
    if name not in records:
        known = ", ".join(sorted(records)) or "none"
        raise _CLIError(f"unknown processor {name!r} (processors in this store: {known})")
    record = _located_record(records[name], read_only=True)  # (a missing file is not created)
    if record.location and record is records[name]:  # what the registration says: unreachable
        raise _CLIError(f"not reset: {name!r} keeps its position and tables in "
                        f"{record.location!r}, which cannot be opened now; nothing changed")
    position = record.position
    command = f"python -m eventsourcery {shlex.quote(args.store)} reset {shlex.quote(name)}"
    try:
        tables = _tables_to_reset(record, keep_tables=args.keep_tables, command=command)
    except ValueError as exc:
        raise _CLIError(str(exc)) from exc
    dropping = _cli_safe(f" and drop its tables {', '.join(tables)}" if tables else "")
    question = f"Reset processor {shown} (position {position}){dropping}?"
    if not args.yes and not _cli_confirm(question):
        sys.stderr.write(f"not reset: {shown} stays at position {position}\n")
        return 1
    try:
        _reset_processor(store, record, tables)
    except UnableToLockProcessorError as exc:
        raise _CLIError(
            f"cannot reset {name!r} while it is running; stop it first ({exc})") from exc
    horizon = max(position, record.horizon)
    latest = store.latest_event_id()
    sys.stdout.write(f"reset {shown}: position {position} -> 0; its next run processes every event "
                     "again, from event 1\n")
    if tables:
        sys.stdout.write(f"dropped its tables {_cli_safe(', '.join(tables))}: its next run creates "
                         "them again and rebuilds them\n")
    elif args.keep_tables and record.kind in ("projector", "reactor"):
        sys.stdout.write("its tables were kept (--keep-tables): they still hold what it wrote\n")
    if latest:
        sys.stdout.write('  (unless its class sets start_from = "end": then its next run starts '
                         f"after the latest event of\n  that moment (now event {latest}) and "
                         "replays nothing)\n")
    if horizon:
        sys.stdout.write(f"events 1-{horizon} are a replay: self.replaying is True while it "
                         f"processes them; events after {horizon} are new to it\n")
    if record.kind == "reactor" and horizon:
        sys.stdout.write(
            "for this reactor, during the replay:\n  done again:     every handler runs again, "
            "with its writes to the reactor's own tables, and\n                  every outside "
            "effect (mail, API calls) that its handler does not guard with\n                  `if "
            "not self.replaying`\n  not done again: emit_event sinks nothing (the events it "
            "emitted the first time are in the\n                  store), nor anything its "
            "handlers guard with `if not self.replaying`\n")
    return 0


def _cli_skip(store: EventStore, args: argparse.Namespace) -> int:
    name, event_id = args.name, args.event_id
    shown = _cli_safe(name)
    try:  # refused before asking, when it would be refused after
        record, _ = _skip_target(store, name, event_id)
    except ValueError as exc:
        raise _CLIError(_cli_safe(str(exc))) from exc
    try:
        [event] = store.get_next_from(event_id, limit=1)
        what = f"{_cli_safe(event.type)} of aggregate {_cli_safe(repr(event.aggregate_id))}"
    except CorruptEventError:
        what = "damaged: it cannot be read"
    failing = (f"; it is failing on it: {_cli_safe(record.last_error or '')}"
               if record.failing_event_id == event_id else "")
    if not args.yes and not _cli_confirm(f"Skip event {event_id} ({what}) for processor "
                                         f"{shown}{failing}? {shown} will never process it "
                                         f"(position {event_id - 1} -> {event_id})"):
        sys.stderr.write(f"not skipped: {shown} stays at position {record.position}\n")
        return 1
    try:
        skip_event(store, name, event_id)
    except ValueError as exc:  # it moved meanwhile
        raise _CLIError(_cli_safe(str(exc))) from exc
    sys.stdout.write(f"skipped event {event_id} for {shown}: position {event_id - 1} -> "
                     f"{event_id}; it will not process event {event_id}; the next event it "
                     f"processes is {event_id + 1} (a running instance goes on at its next "
                     "retry)\n")
    return 0


def _cli_parked_list(store: EventStore, name: str) -> list[ParkedEvent]:
    try:
        return parked_events(store, name)
    except ValueError as exc:
        raise _CLIError(_cli_safe(str(exc))) from exc


def _cli_parked(store: EventStore, args: argparse.Namespace) -> int:
    found = _cli_parked_list(store, args.name)
    if args.json:
        sys.stdout.writelines(
            _cli_json_line({**dataclasses.asdict(p), "parked_at": p.parked_at.isoformat()})
            for p in found)
        return 0
    shown = _cli_safe(args.name)
    if not found:
        sys.stderr.write(f"{shown} has no parked events\n")
        return 0
    for p in found:
        head = (f"{p.event_id}  aggregate {_cli_safe(repr(p.aggregate_id))}  "
                f"parked {p.parked_at.isoformat(timespec='seconds')}")
        if p.behind is None:
            failures = f"{p.attempts} failure{'s' if p.attempts != 1 else ''}"
            sys.stdout.write(f"{head} after {failures}: {_cli_safe(p.error or '')}\n")
        else:
            sys.stdout.write(f"{head} behind event {p.behind}\n")
    command = f"python -m eventsourcery {shlex.quote(args.store)} %s {shlex.quote(args.name)}"
    sys.stdout.write(f"{len(found)} parked; to retry: {_cli_safe(command % 'retry-parked')} "
                     f"[EVENT_ID]; to give one up: {_cli_safe(command % 'drop-parked')} EVENT_ID\n")
    return 0


def _cli_retry_parked(store: EventStore, args: argparse.Namespace) -> int:
    try:
        ids = retry_parked(store, args.name, args.event_id)
    except ValueError as exc:
        raise _CLIError(_cli_safe(str(exc))) from exc
    shown = _cli_safe(args.name)
    if not ids:
        sys.stdout.write(f"{shown} has no parked events: nothing to retry\n")
    else:
        sys.stdout.write(f"asked {shown} to retry parked event{'s' if len(ids) != 1 else ''} "
                         f"{', '.join(map(str, ids))}: the instance running now, or the next to "
                         "run, handles them before its next batch (one that fails again stays "
                         "parked)\n")
    return 0


def _cli_drop_parked(store: EventStore, args: argparse.Namespace) -> int:
    name, event_id = args.name, args.event_id
    shown = _cli_safe(name)
    found = _cli_parked_list(store, name)
    this = next((p for p in found if p.event_id == event_id), None)
    if this is None:
        listed = ", ".join(str(p.event_id) for p in found[:20]) or "none"
        raise _CLIError(f"{shown} has no parked event {event_id} (its parked events: {listed}); "
                        "nothing changed")
    behind = [p.event_id for p in found if p.behind == event_id]
    then = f"; the {len(behind)} event(s) parked behind it are retried" if behind else ""
    why = (f" (it failed: {_cli_safe(this.error)})" if this.error
           else f" (parked behind event {this.behind})")
    question = f"Drop parked event {event_id} of {shown}{why}? {shown} will never handle it{then}"
    if not args.yes and not _cli_confirm(question):
        sys.stderr.write(f"not dropped: event {event_id} stays parked\n")
        return 1
    try:
        drop_parked(store, name, event_id)
    except ValueError as exc:  # dropped or retried meanwhile
        raise _CLIError(_cli_safe(str(exc))) from exc
    sys.stdout.write(f"dropped parked event {event_id} of {shown}: it will not be handled{then}\n")
    return 0


def _cli_stats(store: EventStore, args: argparse.Namespace) -> int:
    progress = _CLIProgress("counting events", 0)

    def report(done: int, total: int) -> None:
        progress.total = total
        progress.update(done)

    try:
        stats: dict[str, Any] = {"store": args.store, **store.stats(report)}
    finally:
        progress.clear()
    if args.json:
        sys.stdout.write(_cli_json_line(stats))
        return 0

    def when(text: str | None) -> str:
        return _cli_time(_dt.datetime.fromisoformat(text)) if text else "-"

    lines = [("store", _cli_safe(str(stats["store"]))), ("events", f"{stats['events']:,}"),
             ("aggregates", f"{stats['aggregates']:,}"),
             ("first event", when(stats["first_created_at"])),
             ("last event", when(stats["last_created_at"]))]
    if "file_size" in stats:
        lines.append(("file size",
                      f"{stats['file_size']:,} bytes (+ {stats['wal_size']:,} bytes of WAL)"))
    out = [f"{label + ':':<13}{value}" for label, value in lines]
    types = {_cli_safe(str(t)): n for t, n in stats["types"].items()}
    if types:
        out.append("events by type:")
        width = max(len(t) for t in types)
        digits = max(len(f"{n:,}") for n in types.values())
        out.extend(f"  {t.ljust(width)}  {n:>{digits},}" for t, n in types.items())
    sys.stdout.write("\n".join(out) + "\n")
    return 0


#: Pages copied per step of a backup (the progress line moves between steps).
_CLI_BACKUP_PAGES = 1024


def _cli_backup_target(args: argparse.Namespace) -> None:
    """Refuse a backup the command line cannot make, before anything is opened: a Postgres store
    (exit status 2, saying which pg_dump command does it)."""
    location = parse_store_url(args.store)
    if location.scheme in ("sqlite", "memory"):  # (memory: refused as the store is opened)
        return
    if BACKENDS.get(location.scheme) != "eventsourcery_pg":
        raise _CLIError(f"a {location.scheme} store is not copied by eventsourcery: back it up "
                        "with its database's own tools", status=2)
    parts = urllib.parse.urlsplit(args.store)
    query = urllib.parse.parse_qsl(parts.query)
    schema = next((value for key, value in query if key == "schema"), "public")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{host}" if parts.username else host  # without the password
    rest = urllib.parse.urlencode([(key, value) for key, value in query if key != "schema"])
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, rest, ""))
    dump = (f"pg_dump --format=custom --schema={shlex.quote(schema)} "
            f"--file={shlex.quote(args.file)} {shlex.quote(url)}")
    raise _CLIError(f"a {location.scheme} store is not copied by eventsourcery: back it up with "
                    "the server's own tools, which take a consistent copy while it is in use: "
                    f"{dump} (restore it with pg_restore into an empty database; see README, "
                    "Backups)", status=2)


def _cli_backup(store: EventStore, args: argparse.Namespace) -> int:
    database = store.database
    path = os.path.abspath(parse_store_url(args.store).target)
    target = os.path.abspath(args.file)
    shown = _cli_safe(target)
    if database is None:
        raise _CLIError(f"{_cli_safe(args.store)} is not a store the command line can copy")
    if os.path.isdir(target):
        raise _CLIError(f"{shown} is a directory: give the path of the backup file to write")
    if not os.path.isdir(os.path.dirname(target)):
        raise _CLIError(f"cannot write {shown}: its directory does not exist")
    if target in (path, path + "-wal", path + "-shm", path + "-journal") or (
            os.path.exists(target) and os.path.samefile(target, path)):
        raise _CLIError(f"{shown} is the store itself (or one of its files): give another path")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(target + suffix):
            raise _CLIError(f"{shown}{suffix} exists: {shown} is, or was, an open database, and "
                            f"SQLite would apply that {suffix[1:]} file to the copy; nothing "
                            "written (remove it once no process uses the file)")
    if os.path.exists(target) and not args.force:
        raise _CLIError(f"{shown} exists: nothing written (--force replaces it)")
    # Written beside the target, then moved there whole: FILE is never half-written.
    directory = os.path.dirname(target)
    partial = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.partial")
    progress = _CLIProgress("copying pages", 0)
    try:
        try:
            with contextlib.closing(sqlite3.connect(partial, isolation_level=None)) as copy:
                _cli_copy_sqlite(database.connection, copy, progress)
                check = copy.execute("PRAGMA quick_check").fetchone()[0]
                count, latest = copy.execute(
                    "SELECT count(*), coalesce(max(id), 0) FROM events").fetchone()
        except sqlite3.Error as exc:
            raise _CLIError(f"cannot write {shown}: {exc}; nothing written") from exc
        if check != "ok":
            raise _CLIError(f"the copy does not check out ({_cli_safe(str(check))}): nothing "
                            "written")
        if args.force:
            os.replace(partial, target)
        else:
            try:
                os.link(partial, target)  # never over a file that appeared meanwhile
            except FileExistsError:
                raise _CLIError(f"{shown} exists: nothing written (--force replaces it)") from None
            os.unlink(partial)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the move itself survives a power loss
        finally:
            os.close(fd)
    finally:
        progress.clear()
        for leftover in (partial, *(partial + suffix for suffix in ("-journal", "-wal", "-shm"))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    sys.stdout.write(f"backed up {_cli_safe(path)} to {shown}: {count:,} events, up to event "
                     f"{latest} ({os.path.getsize(target):,} bytes); a consistent copy as of that "
                     "event\n")
    others = [r for r in store.tracker().records() if r.location]
    if others:
        sys.stderr.write("not in this copy: the projectors that keep their tables and position in "
                         "their own database (back them up before the store, or reset them after a "
                         "restore; see README, Backups):\n")
        sys.stderr.writelines(f"  {_cli_safe(r.name)}: {_cli_safe(r.location or '')}\n"
                              for r in others)
    return 0


def _cli_copy_sqlite(source: sqlite3.Connection, copy: sqlite3.Connection,
                     progress: _CLIProgress) -> None:
    """Copy the database of ``source`` into ``copy`` with SQLite's online backup, a page range at
    a time, all from one snapshot: a read transaction held across the steps, so that no write
    between them makes SQLite restart the copy (which a steady writer could make endless). In WAL
    mode (as eventsourcery creates stores) a reader never holds a writer up, so applications
    write on meanwhile; in rollback-journal mode their commits wait for the copy, up to their busy
    timeout."""
    def report(status: int, remaining: int, total: int) -> None:
        progress.total = total
        progress.update(total - remaining)

    try:
        source.execute("BEGIN")
        try:
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot begins
            source.backup(copy, pages=_CLI_BACKUP_PAGES, progress=report, sleep=0.05)
        finally:
            source.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise _CLIError(f"the backup failed: {exc}; nothing written") from exc


def _cli_serve(store: EventStore, args: argparse.Namespace) -> int:
    try:
        import eventsourcery_web
    except ModuleNotFoundError as exc:
        if exc.name != "eventsourcery_web":
            raise
        here = os.path.dirname(os.path.abspath(__file__))
        raise _CLIError(f"the event browser needs eventsourcery_web.py, which is not found beside "
                        f"eventsourcery.py (in {here}) nor anywhere on sys.path: copy it there "
                        "as you copied eventsourcery.py (pip install of the repository installs "
                        "both)") from exc
    return eventsourcery_web.serve_command(store, args)


_CLI_EPILOG = """\
exit status:
  0    ok; also when nothing matches (no events, no such aggregate, no
       processors): stdout is then empty and a note says so on stderr
  1    error (a one-line message on stderr), or reset, skip or erase not
       confirmed
  2    bad usage (the usage of the command at fault, and the error); also
       backup of a Postgres store (the message names the pg_dump command)
  130  interrupted (Ctrl-C), except follow and serve, which stop with 0

examples:
  python -m eventsourcery todo.db events --type todo_added --limit 20
  python -m eventsourcery todo.db events --json | jq .body
  python -m eventsourcery todo.db follow
  python -m eventsourcery postgresql://localhost/todo processors
  python -m eventsourcery todo.db skip outstanding_todos 42
  python -m eventsourcery todo.db backup todo-backup.db
  python -m eventsourcery todo.db serve        # the event browser: http://127.0.0.1:8100/

Only reset, skip and erase write (and serve's actions, with --allow-actions);
every other command only reads (an SQLite file is opened read-only) and never
creates a store (backup writes FILE only).
"""

_CLI_RESET_HELP = """\
Do what processor.reset() does: drop the processor's own tables (those of its
schema, which a projector or reactor records in its tracker as it starts, in
the store's database or its own) and set its position back to 0, in one
transaction, so that its next run creates its tables again and rebuilds them
from event 1. Asks first (--yes skips the question). Refuses while the
processor is running, and refuses a projector or reactor whose tables are not
recorded (it last ran with an older eventsourcery), saying what to run.
--keep-tables resets the position only.
The events it had processed are a replay (self.replaying is True; a reactor's
emit_event sinks nothing); a processor class with start_from = "end" starts
after the latest event instead.
"""

_CLI_SKIP_HELP = """\
Move a processor's position past one event without processing it: an event
whose handler keeps failing, or a damaged one that cannot be read (the
processor is then "failing" at it: see the processors command). Only the next
event it would process can be skipped (its position must be EVENT_ID - 1),
else nothing changes; works while the processor runs: a running instance goes
on with the next event at its next retry. The event stays in the store; this
processor alone never processes it. The same as es.skip_event(store, NAME,
EVENT_ID) in code.
"""


def _cli_parser() -> argparse.ArgumentParser:
    prog = ("eventsourcery" if os.path.basename(sys.argv[0]) == "eventsourcery"
            else "python -m eventsourcery")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Look inside an eventsourcery event store: list, filter and follow events, "
                    "show an aggregate's history, list, reset and skip processors.",
        epilog=_CLI_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"eventsourcery {__version__}")
    parser.add_argument("store", metavar="STORE",
                        help="an SQLite file path or sqlite:///path (it must exist: it is never "
                             "created), or a postgresql:// URL")
    # only reset, skip and erase write: the others open the store read-only
    parser.set_defaults(writes=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def from_id(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(
                f"expected an event id (0 or 1: the beginning), got {text!r}")
        return max(value, 1)

    def positive(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        return value

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true",
                        help="one JSON object per line (every metadata field and the body) instead "
                             "of a table")
    output.add_argument("--wide", action="store_true",
                        help="do not truncate the body to the terminal's width")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--type", action="append", metavar="NAME",
                         help="only events of this type (repeat for several types)")
    filters.add_argument("--aggregate", metavar="ID", help="only events of this aggregate")

    events = commands.add_parser("events", parents=[filters, output],
                                 help="list events (oldest first)",
                                 description="List stored events, oldest first.")
    events.add_argument("--from", dest="from_id", type=from_id, default=1, metavar="ID",
                        help="start at this event id (default: 1; 0 also means the beginning)")
    events.add_argument("--limit", type=positive, metavar="N", help="list at most N events")
    events.set_defaults(run=_cli_events)

    follow = commands.add_parser("tail", aliases=["follow"], parents=[filters, output],
                                 help="print new events as they are stored, until Ctrl-C",
                                 description="Print events as they are stored, until Ctrl-C or "
                                             "SIGTERM (exit status 0).")
    follow.add_argument("--from", dest="from_id", type=from_id, metavar="ID",
                        help="first print the stored events from this id (0: from the beginning; "
                             "default: only new events)")
    follow.set_defaults(run=_cli_follow)

    aggregate = commands.add_parser("aggregate", parents=[output],
                                    help="show one aggregate's history",
                                    description="Show one aggregate's events in version order.")
    aggregate.add_argument("aggregate_id", metavar="ID")
    aggregate.set_defaults(run=_cli_aggregate)

    processors = commands.add_parser(
        "processors", help="list processors with their position and lag",
        description="List every processor that has run against this store (projectors that keep "
                    "their position in their own database included), with its position, lag, "
                    "whether one is running now and its state; under one failing at an event, its "
                    "error and the skip command that moves it past that event.")
    processors.add_argument("--json", action="store_true", help="one JSON object per line")
    processors.set_defaults(run=_cli_processors)

    reset = commands.add_parser("reset",
                                help="reset a processor: drop its tables, position 0 (asks first)",
                                description=_CLI_RESET_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    reset.add_argument("name", metavar="NAME", help="the processor's name")
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--keep-tables", action="store_true",
                       help="reset the position only, keeping the processor's tables as they are")
    reset.set_defaults(run=_cli_reset, writes=True)

    skip = commands.add_parser(
        "skip", help="move a processor past one event without processing it (asks first)",
        description=_CLI_SKIP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    skip.add_argument("name", metavar="NAME", help="the processor's name")
    skip.add_argument("event_id", metavar="EVENT_ID", type=positive,
                      help="the event to skip: the next one the processor would process")
    skip.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    skip.set_defaults(run=_cli_skip, writes=True)

    parked = commands.add_parser(
        "parked", help="list a processor's parked events",
        description="List the events a processor has parked (a retry handler with park_after "
                    "parks an event whose handler keeps failing, and the later events of its "
                    "aggregate behind it): each with its aggregate, when, and its error or the "
                    "event it waits behind. The same as es.parked_events(store, NAME).")
    parked.add_argument("name", metavar="NAME", help="the processor's name")
    parked.add_argument("--json", action="store_true", help="one JSON object per line")
    parked.set_defaults(run=_cli_parked)

    retry = commands.add_parser(
        "retry-parked", help="ask a processor to handle its parked events again",
        description="Ask a processor (the instance running now, or the next to run) to handle "
                    "its parked events again before its next batch, each aggregate's in order: "
                    "all of them, or EVENT_ID with the events parked behind it. One that fails "
                    "again stays parked. The same as es.retry_parked(store, NAME, EVENT_ID).")
    retry.add_argument("name", metavar="NAME", help="the processor's name")
    retry.add_argument("event_id", metavar="EVENT_ID", type=positive, nargs="?",
                       help="the parked event to retry (default: all of them)")
    retry.set_defaults(run=_cli_retry_parked, writes=True)

    drop = commands.add_parser(
        "drop-parked", help="give up on one parked event (asks first)",
        description="Remove one parked event for good: the processor never handles it; the "
                    "events parked behind it are retried. The same as es.drop_parked(store, "
                    "NAME, EVENT_ID).")
    drop.add_argument("name", metavar="NAME", help="the processor's name")
    drop.add_argument("event_id", metavar="EVENT_ID", type=positive,
                      help="the parked event to drop")
    drop.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    drop.set_defaults(run=_cli_drop_parked, writes=True)

    erase = commands.add_parser(
        "erase", help="erase one aggregate's data for good (asks first)",
        description="Turn every event of one aggregate into a tombstone (its body and metadata are "
                    "removed, its id, uuid, version and time stay), delete its snapshots and "
                    "append an eventsourcery.aggregate_erased event that projectors handle to "
                    "forget it. Cannot be undone.")
    erase.add_argument("aggregate_id", metavar="ID")
    erase.add_argument("--reason", help="recorded in the aggregate_erased event")
    erase.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    erase.set_defaults(run=_cli_erase, writes=True)

    backup = commands.add_parser(
        "backup", help="copy an SQLite store to FILE while it is in use",
        description="Write a consistent copy of an SQLite store to FILE with SQLite's online "
                    "backup, while applications write to it (in WAL mode, as eventsourcery "
                    "creates stores, writers are never held up). FILE is written beside its final "
                    "place and moved there once complete and checked. Projectors with a database "
                    "of their own are not in the copy (they are listed). A Postgres store is "
                    "backed up with pg_dump (exit status 2, with the command). Restore: see "
                    "README, Backups.")
    backup.add_argument("file", metavar="FILE", help="the backup file to write")
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    backup.set_defaults(run=_cli_backup, before_open=_cli_backup_target)

    stats = commands.add_parser("stats", help="count events by type; first and last; file size",
                                description="Count events (in all and by type) and aggregates, "
                                            "show when the first and last events were stored and, "
                                            "for SQLite, the file size.")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(run=_cli_stats)

    serve = commands.add_parser(
        "serve", help="serve the event browser: a web page over this store (read-only unless told)",
        description="Serve the event browser (eventsourcery_web.py, beside eventsourcery.py): "
                    "events with filters, paging and live updates, one event and its causes, an "
                    "aggregate's history, the processors with a lag chart, statistics, and a JSON "
                    "API under /api/. It only reads (an SQLite file is opened read-only) unless "
                    "--allow-actions is given. Ctrl-C stops it.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="the address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8100,
                       help="the port (default: 8100; 0 picks a free one)")
    serve.add_argument("--allow-actions", action="store_true",
                       help="offer reset, skip, retry-parked and drop-parked on the page (each "
                            "asks first and is a POST carrying a token made at start)")
    serve.set_defaults(run=_cli_serve)
    return parser


def _cli_one_line(exc: BaseException) -> str:
    text = _cli_safe(" ".join(str(exc).split()))
    if isinstance(exc, (_CLIError, Error)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cli_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command name (aliases included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cli_parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; every usage error and ``--help`` after a command is that command's
    own."""
    parser = _cli_parser()
    commands = _cli_commands(parser)
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    if first in commands and argv.index(first) == 0 and not os.path.exists(first):
        command = commands[first]
        if "-h" in argv or "--help" in argv:
            command.parse_args(["--help"])  # prints the command's help and exits with 0
        command.error(f"the STORE is missing: it comes before the command, as in "
                      f"{parser.prog} todo.db {first} ...")
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, ``python -m eventsourcery STORE COMMAND ...``; returns the exit status."""
    if sys.stdout is not None and hasattr(sys.stdout, "reconfigure"):
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(errors="backslashreplace")
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (typing.cast(typing.TextIO, _CLISafeStream(s)) if s is not None else s
                              for s in streams)
    log: logging.Handler | None = None
    if not config.logger.hasHandlers():  # else logging's last resort prints to stderr, unescaped
        log = logging.StreamHandler(sys.stderr)
        log.setLevel(logging.WARNING)
        log.setFormatter(_CLILogFormatter())
        config.logger.addHandler(log)
    try:
        return _cli_main(argv)
    finally:
        sys.stdout, sys.stderr = streams
        if log is not None:
            config.logger.removeHandler(log)


def _cli_main(argv: Sequence[str] | None) -> int:
    args = _cli_parse(list(sys.argv[1:] if argv is None else argv))
    try:
        before_open: Callable[[argparse.Namespace], None] | None = getattr(args, "before_open",
                                                                           None)
        if before_open is not None:  # a command that refuses some stores before opening them
            before_open(args)
        store = _cli_open_store(args.store, read_only=not args.writes)
        try:
            status: int = args.run(store, args)
        finally:
            store.close()
        return status
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from complaining at exit.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except Exception as exc:
        sys.stderr.write(f"eventsourcery: error: {_cli_one_line(exc)}\n")
        return exc.status if isinstance(exc, _CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())
