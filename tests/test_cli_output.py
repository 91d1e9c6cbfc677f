"""Nothing stored reaches the terminal as a control character, in any command of the command line.

Every command runs (plain, ``--json`` and ``--wide`` where it has them) against a store whose
aggregate ids, type names, bodies, metadata, snapshot type, processor names, errors and standby hold
ESC, BEL, CR, LF, TAB, a C1 control and a bidi override; stdout and stderr must hold no control
character but the newlines of the format, and JSON output must give the stored strings back exactly.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import queue
import re
import signal
import sqlite3
import time

import pytest

import eventsourcery as es
from tests._util import WAIT
from tests.test_cli import LineReader, cli, cli_popen

NASTY = "A\x1b[31mB\x07C\rD\nE\tF\x9bG\u202eH"
AGGREGATE = f"agg-{NASTY}"
TYPE = f"type-{NASTY}"
PROCESSOR = f"proc-{NASTY}"
PROJECTOR = f"projector-{NASTY}"
PARKER = f"parker-{NASTY}"
#: Any control character but the newline (the formats use no tab).
CONTROL = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
#: The printable part of NASTY: present, in some escaped form, where stored data is printed.
SEEN = "[31mB"


@pytest.fixture
def nasty_store(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "nasty.db"
    with es.SQLiteEventStore(path) as store:
        for n in range(2):
            store.sink(
                es.Event(
                    type=TYPE,
                    aggregate_id=AGGREGATE,
                    body={"s": NASTY, f"k{NASTY}": n},
                    metadata={"m": NASTY, f"k{NASTY}": NASTY},
                    correlation_id=NASTY,
                )
            )
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO eventsourcery_snapshots VALUES (?, ?, 2, 1, ?, '{}', ?)",
                (AGGREGATE, f"Type{NASTY}", NASTY, "2024-01-01T00:00:00+00:00"),
            )
        tracker = store.tracker()
        generation = tracker.acquire(PROCESSOR, f"1@{NASTY}", "processor")
        tracker.report(PROCESSOR, generation, "running", f"RuntimeError: {NASTY}", 1)
        tracker.standby(PROCESSOR, f"2@{NASTY}")
        tracker.register(PROJECTOR, "projector", f"/nonexistent/{NASTY}.db")
        first, second = store.get_next_from(1, limit=2)  # parked: 1 with its error, 2 behind it
        generation = tracker.acquire(PARKER, f"3@{NASTY}", "processor")
        tracker.park(PARKER, first, f"RuntimeError: {NASTY}", 3, generation)
        tracker.park(PARKER, second, None, 0, generation, behind=1)
    return path


def follow(path: pathlib.Path, *args: str) -> tuple[str, str]:
    """Run ``tail --from 0 ARGS`` until it has printed the two stored events, then stop it."""
    proc = cli_popen(
        path, "tail", "--from", "0", *args, stdout=subprocess_pipe(), stderr=subprocess_pipe()
    )
    lines: list[str] = []
    try:
        reader = LineReader(proc)
        deadline = time.monotonic() + WAIT
        while sum(SEEN in line for line in lines) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                lines.append(reader.next(timeout=0.2))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT) == 0
        time.sleep(0.1)  # the reader thread takes the last lines
        while True:
            try:
                lines.append(reader.next(timeout=0.2))
            except queue.Empty:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
    assert proc.stderr is not None
    return "".join(lines), proc.stderr.read()


def subprocess_pipe() -> int:
    import subprocess

    return subprocess.PIPE


#: command -> [(arguments after the command, stdin, whether stored data is printed)]
COMMANDS: dict[str, list[tuple[tuple[str, ...], str, bool]]] = {
    "events": [
        ((), "", True),
        (("--json",), "", True),
        (("--wide",), "", True),
        (("--aggregate", AGGREGATE, "--type", TYPE), "", True),
    ],
    "tail": [((), "", True), (("--json",), "", True), (("--wide",), "", True)],
    "follow": [(("--json",), "", True)],
    "aggregate": [
        ((AGGREGATE,), "", True),
        ((AGGREGATE, "--json"), "", True),
        ((AGGREGATE, "--wide"), "", True),
        ((f"no-{NASTY}",), "", True),
    ],
    "processors": [((), "", True), (("--json",), "", True)],
    "stats": [((), "", True), (("--json",), "", True)],
    "reset": [
        ((PROCESSOR,), "n\n", True),
        ((PROCESSOR, "--yes"), "", True),
        ((PROJECTOR, "--yes"), "", True),
        ((f"no-{NASTY}", "--yes"), "", True),
    ],
    "skip": [((PROCESSOR, "1"), "n\n", True), ((PROCESSOR, "1", "--yes"), "", True)],
    "parked": [((PARKER,), "", True), ((PARKER, "--json"), "", True)],
    "retry-parked": [((PARKER,), "", True), ((PARKER, "1"), "", True)],
    "drop-parked": [((PARKER, "1"), "n\n", True), ((PARKER, "1", "--yes"), "", True)],
    "erase": [((AGGREGATE,), "n\n", True), ((AGGREGATE, "--yes", "--reason", NASTY), "", True)],
    "backup": [(("copy.db",), "", False)],
}
#: Commands that print no stored data to a terminal (the event browser escapes its own HTML).
NOT_HERE = {"serve"}


def test_every_command_is_covered() -> None:
    parser_commands = set(es._cli_commands(es._cli_parser()))
    assert parser_commands - NOT_HERE == set(COMMANDS)


@pytest.mark.parametrize(
    ("command", "args", "answer", "prints_data"),
    [
        pytest.param(command, args, answer, prints_data, id=f"{command}-{i}")
        for command, runs in COMMANDS.items()
        for i, (args, answer, prints_data) in enumerate(runs)
    ],
)
def test_no_control_character_from_stored_data_reaches_the_terminal(
    nasty_store: pathlib.Path, command: str, args: tuple[str, ...], answer: str, prints_data: bool
) -> None:
    args = tuple(str(nasty_store.parent / a) if a == "copy.db" else a for a in args)
    if command in ("tail", "follow"):
        stdout, stderr = follow(nasty_store, *args)
    else:
        result = cli(nasty_store, command, *args, input=answer)
        assert "Traceback" not in result.stderr, result.stderr
        stdout, stderr = result.stdout, result.stderr
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        found = CONTROL.search(text)
        assert found is None, f"{name} holds {found.group()!r}: {text!r}"
        assert "D\nE" not in text, f"a stored newline reached {name}: {text!r}"
    if prints_data:
        assert SEEN in stdout + stderr, (stdout, stderr)
    if "--json" in args:
        values = [json.loads(line) for line in stdout.splitlines()]
        assert values and stdout.isascii()
        assert any(NASTY in str(v) for value in values for v in flatten(value)), values


def flatten(value: object) -> list[object]:
    if isinstance(value, dict):
        return [*value, *(x for v in value.values() for x in flatten(v))]
    if isinstance(value, list):
        return [x for v in value for x in flatten(v)]
    return [value]


def test_the_progress_line_keeps_its_carriage_returns_and_escapes_nothing_stored(
    nasty_store,
) -> None:
    """The one raw write: the progress line's own carriage returns, on a terminal only."""
    import io

    err = io.StringIO()
    safe = es._CLISafeStream(err)
    assert es._cli_raw(safe) is err  # type: ignore[arg-type]
    safe.write(f"x{NASTY}\n")
    assert err.getvalue() == "xA\\x1b[31mB\\x07C\\x0dD\nE\\x09F\\x9bG\\u202eH\n"
    with contextlib.closing(sqlite3.connect(nasty_store)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)
