"""The command line's ``parked``, ``retry-parked`` and ``drop-parked`` (SPEC section 6): plain and
JSON output, asking first, and stored strings (errors, aggregate ids) never reaching the terminal as
control characters."""

from __future__ import annotations

import pathlib
import time

import pytest

import eventsourcery as es
from tests._util import WAIT
from tests.events import ItemAdded
from tests.test_cli import assert_one_line_error, cli, json_lines

HOSTILE = "\x1b[2J\x1b]0;owned\x07\nforged line\r\x9b"
NAME = "cli_parker"


class Parker(es.EventStreamProcessor):
    processor_name = NAME

    def __init__(self, tracker):
        super().__init__(tracker)
        self.handled: list[int] = []

    @es.on(ItemAdded)
    def _added(self, event):
        if event.title == "bad":
            raise RuntimeError(f"cannot {HOSTILE}")
        self.handled.append(event.id)


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    """A store whose processor has parked event 2 (aggregate HOSTILE) with event 4 behind it."""
    path = tmp_path / "events.db"
    with es.SQLiteEventStore(path) as store:
        park_two(store)
    return path


def park_two(store: es.EventStore) -> None:
    """Events 1-4 sunk; event 2 (aggregate HOSTILE) parked after two failures, 4 behind it."""
    for aggregate_id, title in (
        (HOSTILE, "ok"),
        (HOSTILE, "bad"),
        ("other", "ok"),
        (HOSTILE, "ok"),
    ):
        store.sink(ItemAdded(aggregate_id=aggregate_id, title=title))
    parker = Parker(store.tracker())
    es.run_processor(
        parker,
        store,
        stop=lambda: parker.last_processed_event_id >= 4,
        error_handler=es.ConstantRetry(0.0, park_after=2),
    )
    assert parker.handled == [1, 3]


def parked_ids(path: pathlib.Path) -> list[int]:
    with es.SQLiteEventStore(path) as store:
        return [p.event_id for p in es.parked_events(store, NAME)]


def test_parked_lists_them_escaped(db: pathlib.Path) -> None:
    result = cli(db, "parked", NAME)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert (
        lines[0].startswith("2  aggregate ")
        and "after 2 failures: RuntimeError: cannot \\x1b[2J" in lines[0]
    )
    assert lines[1].startswith("4  aggregate ") and lines[1].endswith("behind event 2")
    assert lines[2].startswith(
        f"2 parked; to retry: python -m eventsourcery {db} retry-parked {NAME}"
    )
    for text in (result.stdout, result.stderr):
        assert not any(ch in text for ch in "\x1b\x07\r\x9b")
    assert "forged line" in lines[0]  # on the line of its event, escaped


def test_parked_json(db: pathlib.Path) -> None:
    result = cli(db, "parked", NAME, "--json")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    rows = json_lines(result.stdout)
    assert [(r["event_id"], r["aggregate_id"], r["attempts"], r["behind"]) for r in rows] == [
        (2, HOSTILE, 2, None),
        (4, HOSTILE, 0, 2),
    ]
    assert rows[0]["error"] == f"RuntimeError: cannot {HOSTILE}" and rows[1]["error"] is None
    assert rows[0]["parked_at"].endswith("+00:00")


def test_parked_of_an_unknown_processor_or_none_parked(db: pathlib.Path) -> None:
    assert_one_line_error(cli(db, "parked", "nobody"), "unknown processor 'nobody'", NAME)
    cli(db, "drop-parked", NAME, "4", "--yes")
    cli(db, "drop-parked", NAME, "2", "--yes")
    result = cli(db, "parked", NAME)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "",
        f"{NAME} has no parked events\n",
    )


def test_retry_parked_asks_the_processor_which_handles_them_on_its_next_run(
    db: pathlib.Path,
) -> None:
    result = cli(db, "retry-parked", NAME, "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"asked {NAME} to retry parked events 2, 4:")
    assert_one_line_error(
        cli(db, "retry-parked", NAME, "4"), "waits behind parked event 2", "nothing changed"
    )
    assert_one_line_error(
        cli(db, "retry-parked", NAME, "3"), "no such parked event", "nothing changed"
    )
    assert cli(db, "retry-parked", NAME, "0").returncode == 2
    assert cli(db, "retry-parked", NAME).returncode == 0
    with es.SQLiteEventStore(db) as store:
        parker = Parker(store.tracker())
        deadline = time.monotonic() + WAIT
        es.run_processor(
            parker,
            store,
            stop=lambda: time.monotonic() > deadline or not store.tracker().retry_requested(NAME),
            error_handler=es.ConstantRetry(0.0, park_after=2),
        )
        # 2 fails again (stays parked, attempts counted), so 4 stays behind it
        assert parker.handled == [] and [p.attempts for p in es.parked_events(store, NAME)] == [
            3,
            0,
        ]


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_drop_parked_declined_changes_nothing(db: pathlib.Path, answer: str) -> None:
    result = cli(db, "drop-parked", NAME, "2", input=answer)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"Drop parked event 2 of {NAME} (it failed: RuntimeError: cannot \\x1b[2J"
    )
    assert "the 1 event(s) parked behind it are retried [y/N] " in result.stderr
    assert "not dropped: event 2 stays parked" in result.stderr
    assert "\x1b" not in result.stderr
    assert parked_ids(db) == [2, 4]


@pytest.mark.parametrize("how", [{"input": "y\n"}, {"flag": "--yes"}, {"flag": "-y"}])
def test_drop_parked_confirmed_drops_it_and_those_behind_are_retried(db: pathlib.Path, how) -> None:
    result = cli(
        db,
        "drop-parked",
        NAME,
        "2",
        *([how["flag"]] if "flag" in how else []),
        input=how.get("input"),
    )
    assert result.returncode == 0, result.stderr
    assert ("[y/N]" in result.stderr) == ("input" in how)
    assert result.stdout.startswith(f"dropped parked event 2 of {NAME}: it will not be handled")
    assert parked_ids(db) == [4]
    with es.SQLiteEventStore(db) as store:
        parker = Parker(store.tracker())
        deadline = time.monotonic() + WAIT
        es.run_processor(
            parker,
            store,
            stop=lambda: time.monotonic() > deadline or not es.parked_events(store, NAME),
            error_handler=es.NoRetry(),
        )
    assert parker.handled == [4]


def test_drop_parked_of_what_is_not_parked_is_refused_before_asking(db: pathlib.Path) -> None:
    for extra in ((), ("--yes",)):
        assert_one_line_error(
            cli(db, "drop-parked", NAME, "3", *extra, input="y\n"),
            "no parked event 3",
            "its parked events: 2, 4",
            "nothing changed",
        )
    assert_one_line_error(
        cli(db, "drop-parked", "nobody", "2", "--yes"), "unknown processor 'nobody'"
    )
    assert cli(db, "drop-parked", NAME).returncode == 2
    assert parked_ids(db) == [2, 4]


def test_processors_says_how_many_are_parked(db: pathlib.Path) -> None:
    result = cli(db, "processors")
    assert result.returncode == 0, result.stderr
    assert (
        f"  parked: 2 events (see python -m eventsourcery {db} parked {NAME})"
        in result.stdout.splitlines()
    )
    assert json_lines(cli(db, "processors", "--json").stdout)[0]["parked"] == 2
