"""The event browser's JSON API and server (SPEC §9), without a browser: the fields of the CLI's
``--json`` output, keyset paging newest first, read-only browsing, actions behind a token, and the
library fix a threaded server needs (statuses read from several threads leave no stray file)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

import eventsourcery as es
import eventsourcery_web as web
from tests import processing_support as ps
from tests._util import WAIT, everything_in
from tests.processing_support import Ping
from tests.web_support import HOSTILE, Note, running_server, seed_hostile, serving
from tests.web_support import target as target  # the fixture


def test_statuses_read_from_eight_threads_at_once_leave_no_wal_or_shm_beside_a_projection(
    tmp_path,
) -> None:
    db, projection = tmp_path / "events.db", tmp_path / "projection.db"
    with es.SQLiteEventStore(db) as store:
        for n in range(5):
            store.sink(Ping(aggregate_id="p", n=n))
        projector = ps.CountingProjector(str(projection))  # its position lives in its own file
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 5)
        projector.close()
    files = sorted(os.listdir(tmp_path))
    store = es.SQLiteEventStore(db, read_only=True)
    try:
        for _ in range(
            5
        ):  # each round: 8 threads open, read and close the projection's file together
            barrier = threading.Barrier(8, timeout=WAIT)
            seen: list[int] = []

            def read(barrier: threading.Barrier = barrier, seen: list[int] = seen) -> None:
                barrier.wait()
                statuses = {s.name: s for s in es.processor_statuses(store)}
                seen.append(statuses["event_counter"].position)

            threads = [threading.Thread(target=read) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            assert seen == [5] * 8
            assert not [f for f in os.listdir(tmp_path) if f.startswith("projection.db-")]
    finally:
        store.close()
    assert sorted(os.listdir(tmp_path)) == files


# --- the API over HTTP, on SQLite and Postgres ----------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Other(es.Event, type="webtest.other"):
    n: int = 0


def get(server, path: str, *, host: str | None = None) -> tuple[int, dict, object]:
    request = urllib.request.Request(
        server.url.rstrip("/") + path, headers={"Host": host} if host else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            body = answer.read()
            status, headers = answer.status, dict(answer.headers)
    except urllib.error.HTTPError as exc:
        body, status, headers = exc.read(), exc.code, dict(exc.headers)
    value = (
        json.loads(body) if headers.get("Content-Type", "").startswith("application/json") else body
    )
    return status, headers, value


def post(server, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Eventsourcery-Token"] = token
    request = urllib.request.Request(
        server.url.rstrip("/") + path,
        data=json.dumps(body or {}).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fill(store, count: int = 130) -> None:
    for n in range(count):
        kind = Note if n % 3 else Other
        store.sink(kind(aggregate_id=f"a{n % 4}", n=n))


FILTERS = [
    ({}, lambda e: True),
    ({"type": ["webtest.note"]}, lambda e: e.type == "webtest.note"),
    ({"aggregate_id": ["a1"]}, lambda e: e.aggregate_id == "a1"),
    (
        {"type": ["webtest.other"], "aggregate_id": ["a2"]},
        lambda e: e.type == "webtest.other" and e.aggregate_id == "a2",
    ),
    ({"type": ["webtest.note", "webtest.other"]}, lambda e: True),
    ({"type": ["webtest.none"]}, lambda e: False),
]


def query(filters: dict, **more) -> str:
    pairs = [(k, v) for k, values in filters.items() for v in values] + [
        (k, str(v)) for k, v in more.items()
    ]
    return "/api/events?" + urllib.parse.urlencode(pairs)


def test_event_pages_are_newest_first_and_their_cursors_walk_every_event_once(target) -> None:
    url, store = target
    fill(store)
    stored = everything_in(store)
    with serving(url) as server:
        for filters, matches in FILTERS:
            expected = [e.id for e in stored if matches(e)]
            older, seen = None, []  # from the newest page back, by `older`
            for _ in range(100):
                status, _, page = get(
                    server, query(filters, limit=7, **({"before": older} if older else {}))
                )
                assert status == 200, page
                ids = [e["id"] for e in page["events"]]
                assert ids == sorted(ids, reverse=True)
                seen += ids
                older = page["older"]
                if older is None:
                    break
            assert seen == expected[::-1], filters
            newer, forward = 0, []  # from the beginning on, by `after` and `newer`
            for _ in range(100):
                status, _, page = get(server, query(filters, limit=7, after=newer))
                ids = [e["id"] for e in page["events"]]
                assert ids == sorted(ids, reverse=True)
                forward += ids[::-1]
                if page["newer"] is None:
                    break
                newer = page["newer"]
            assert forward == expected, filters
            if expected:  # an older page has a way back to newer events, the newest none
                status, _, page = get(server, query(filters, limit=3, before=expected[-1]))
                assert page["newer"] == (page["events"][0]["id"] if page["events"] else None)
                assert get(server, query(filters, limit=3))[2]["newer"] is None


def cli_json(url: str, *args: str) -> list:
    result = subprocess.run(
        [sys.executable, "-m", "eventsourcery", url, *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_api_gives_the_fields_of_the_command_lines_json_output(target) -> None:
    url, store = target
    fill(store, 12)
    seed_hostile(store)
    with serving(url) as server:
        status, headers, events = get(server, "/api/events?limit=100")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert events["events"][::-1] == cli_json(url, "events")
        assert get(server, "/api/aggregates/a1")[2]["events"] == cli_json(url, "aggregate", "a1")
        assert (
            get(server, "/api/events/5")[2]["event"]
            == cli_json(url, "events", "--from", "5", "--limit", "1")[0]
        )
        assert get(server, "/api/processors")[2]["processors"] == cli_json(url, "processors")
        stats = get(server, "/api/stats")[2]
        assert {k: v for k, v in stats.items() if k not in ("store", "wal_size")} == {
            k: v for k, v in cli_json(url, "stats")[0].items() if k not in ("store", "wal_size")
        }
        assert stats["store"] == url
        hostile = get(
            server,
            "/api/aggregates/" + urllib.parse.quote(events["events"][1]["aggregate_id"], safe=""),
        )
        assert hostile[0] == 200 and hostile[2]["events"][0]["body"] == events["events"][1]["body"]


def test_one_event_links_its_cause_the_events_it_caused_and_its_correlation(target) -> None:
    url, store = target
    [root] = store.sink(Note(aggregate_id="c1", n=1))
    [child] = store.sink(
        Note(aggregate_id="c2", n=2, causation_id=root.uuid, correlation_id=root.uuid)
    )
    store.sink(Other(aggregate_id="c3", n=3))
    [grandchild] = store.sink(
        Note(aggregate_id="c3", n=4, causation_id=child.uuid, correlation_id=root.uuid)
    )
    with serving(url) as server:
        status, _, answer = get(server, f"/api/events/{child.id}")
        assert status == 200
        assert [e["id"] for e in answer["caused_by"]] == [root.id]
        assert [e["id"] for e in answer["caused"]] == [grandchild.id]
        assert [e["id"] for e in answer["correlated"]] == [root.id, grandchild.id]
        assert answer["searched"] == {"from": 1, "to": grandchild.id}
        assert get(server, "/api/events/99")[0] == 404
        assert get(server, "/api/events/x")[0] == 400


class CountingStore:
    """A store that counts the events its reads return, and refuses to count them all."""

    def __init__(self, store) -> None:
        self.store, self.read = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get_next_from(self, *args, **kwargs):
        found = self.store.get_next_from(*args, **kwargs)
        self.read += len(found)
        return found

    def get_events_for_aggregate_id(self, *args, **kwargs):
        found = self.store.get_events_for_aggregate_id(*args, **kwargs)
        self.read += len(found)
        return found

    def each_by_range(self, *args, **kwargs):
        return es.EventStore.each_by_range(
            self, *args, **kwargs
        )  # through the counted get_next_from

    def stats(self, *args, **kwargs):
        raise AssertionError("a page of events must not count the store's events")


def test_a_page_reads_about_as_many_events_as_it_shows_never_the_whole_store(tmp_path) -> None:
    with es.SQLiteEventStore(tmp_path / "events.db", synchronous="OFF") as store:  # (a fast fill)
        store.sink(Other(aggregate_id="rare", n=0))
        for start in range(0, 4000, 500):
            for n in range(start, start + 500):
                store.sink(Note(aggregate_id=f"a{n % 7}", n=n))
        store.sink(Other(aggregate_id="rare", n=1))
        counting = CountingStore(store)
        browser = web.EventBrowser(counting)  # type: ignore[arg-type]
        for filters in [
            {},
            {"types": ["webtest.note"]},
            {"types": ["webtest.other"]},
            {"aggregate_id": "a3"},
            {"aggregate_id": "rare"},
            {"types": ["webtest.other", "webtest.note"]},
        ]:
            for cursor in [{}, {"before": 2000}, {"after": 2000}]:
                counting.read = 0
                page = browser.events(**filters, **cursor, limit=20)
                assert (
                    len(page["events"])
                    == (
                        2
                        if "rare" in str(filters) or filters.get("types") == ["webtest.other"]
                        else 20
                    )
                    or cursor
                ), (filters, cursor)
                assert counting.read <= 20 * 12, (filters, cursor, counting.read)  # of 4,002 events


def test_actions_need_allow_actions_and_the_servers_token(target) -> None:
    url, store = target
    seed_hostile(store)  # a processor failing at event 2
    name = "web_hostile_<b>reactor</b>"
    path = "/api/processors/" + urllib.parse.quote(name, safe="") + "/skip"
    with serving(url) as server:  # read-only: no action at all
        assert post(server, path, {"event_id": 2}, token=server.browser.token)[0] == 403
        assert get(server, "/api/processors")[2]["actions"] == []
    with serving(url, allow_actions=True) as server:
        assert post(server, path, {"event_id": 2})[0] == 403
        assert post(server, path, {"event_id": 2}, token="not-" + server.browser.token)[0] == 403
        assert post(server, path, {"event_id": 8, "token": ""})[0] == 403
        assert {s.name: s.position for s in es.processor_statuses(store)}[
            name
        ] == 1  # nothing changed
        assert (
            get(server, "/")[2].decode().count(server.browser.token) == 1
        )  # the page has it, to send it
        status, answer = post(server, path, {"event_id": 2}, token=server.browser.token)
        assert status == 200, answer
        assert answer["processor"]["position"] == 2 and answer["processor"]["last_error"] is None
        status, answer = post(server, path, {"event_id": 2}, token=server.browser.token)
        assert status == 409 and "position" in answer["error"]  # refused, as the CLI refuses it
        reset = path.replace("/skip", "/reset")
        status, answer = post(server, reset, token=server.browser.token)
        assert status == 200, answer
        assert {s.name: s.position for s in es.processor_statuses(store)}[name] == 0
        assert post(server, path.replace("/skip", "/explode"), token=server.browser.token)[0] == 404
    with serving(url, allow_actions=True) as other:
        assert (
            post(other, reset, token=server.browser.token)[0] == 403
        )  # each start makes its own token


def file_state(path: pathlib.Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_browsing_changes_nothing_in_an_sqlite_store_nor_in_a_projectors_file(tmp_path) -> None:
    db, projection = tmp_path / "events.db", tmp_path / "projection.db"
    with es.SQLiteEventStore(db) as store:
        fill(store, 20)
        seed_hostile(store)
        projector = ps.CountingProjector(str(projection))
        projector.subscribe_to(store, stop=lambda: projector.last_processed_event_id >= 22)
        projector.close()
    before = {path: file_state(path) for path in (db, projection)}
    files = sorted(os.listdir(tmp_path))
    paths = [
        "/",
        "/processors",
        "/stats",
        "/events/3",
        "/aggregates/a1",
        "/static/app.js",
        "/static/app.css",
        "/api/events",
        "/api/events?type=webtest.note&aggregate_id=a1",
        "/api/events/3",
        "/api/aggregates/a1",
        "/api/stats",
    ] + ["/api/processors"] * 16
    with serving(str(db)) as server:
        errors: list[object] = []

        def visit(path: str) -> None:
            status = get(server, path)[0]
            if status != 200:
                errors.append((path, status))

        threads = [threading.Thread(target=visit, args=(path,)) for path in paths]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert errors == []
    assert {path: file_state(path) for path in (db, projection)} == before
    assert sorted(os.listdir(tmp_path)) == files


def test_every_answer_has_the_policy_and_a_request_for_another_host_is_refused(tmp_path) -> None:
    with es.SQLiteEventStore(tmp_path / "events.db") as store:
        fill(store, 3)
    with serving(str(tmp_path / "events.db")) as server:
        for path in [
            "/",
            "/processors",
            "/static/app.js",
            "/api/events",
            "/api/nothing",
            "/nothing",
        ]:
            status, headers, _ = get(server, path)
            assert headers["Content-Security-Policy"] == web.CONTENT_SECURITY_POLICY, path
            assert "script-src 'self'" in headers["Content-Security-Policy"]
            assert "unsafe-inline" not in headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
        assert get(server, "/nothing")[0] == 404 and get(server, "/api/nothing")[0] == 404
        assert get(server, "/", host="evil.example:8100")[0] == 403  # DNS rebinding
        assert get(server, "/api/events", host="localhost:1")[0] == 200
        status, _, page = get(server, "/")
        assert b'<script src="/static/app.js"' in page and b"<script>" not in page


def test_the_page_escapes_the_stores_name(tmp_path) -> None:
    with es.SQLiteEventStore(tmp_path / "events.db") as store:
        with running_server(store, target='<script>x</script>"') as server:
            page = get(server, "/")[2].decode()
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;&quot;" in page


@pytest.mark.parametrize("actions", [False, True], ids=["read-only", "allow-actions"])
def test_serve_listens_on_127_0_0_1_answers_and_stops_on_ctrl_c(tmp_path, actions) -> None:
    db = tmp_path / "events.db"
    with es.SQLiteEventStore(db) as store:
        fill(store, 3)
        seed_hostile(store)  # a processor failing at event 2 (the first Note)
    before, files = file_state(db), sorted(os.listdir(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "eventsourcery", str(db), "serve", "--port", "0"]
        + (["--allow-actions"] if actions else []),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stderr], [], [], WAIT)  # a bounded wait for its line
        assert ready, "serve printed nothing"
        line = process.stderr.readline()
        assert "http://127.0.0.1:" in line and ("with actions" if actions else "read-only") in line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url + "api/stats", timeout=WAIT) as answer:
            assert json.loads(answer.read())["events"] == 5
        name = urllib.parse.quote("web_hostile_<b>reactor</b>", safe="")
        request = urllib.request.Request(
            f"{url}api/processors/{name}/skip", method="POST", data=b'{"event_id": 2}'
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=WAIT)
        assert refused.value.code == 403
        if actions:  # with the token the page carries, the skip is done on the store
            with urllib.request.urlopen(url, timeout=WAIT) as answer:
                page = answer.read().decode()
            token = page.split('data-token="', 1)[1].split('"', 1)[0]
            request.add_header("X-Eventsourcery-Token", token)
            with urllib.request.urlopen(request, timeout=WAIT) as answer:
                assert json.loads(answer.read())["processor"]["position"] == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    if not actions:
        assert file_state(db) == before and sorted(os.listdir(tmp_path)) == files
    with es.SQLiteEventStore(db) as store:
        position = {s.name: s.position for s in es.processor_statuses(store)}[
            "web_hostile_<b>reactor</b>"
        ]
    assert position == (2 if actions else 1)


def test_serve_without_eventsourcery_web_says_which_file_is_missing(tmp_path) -> None:
    db = tmp_path / "events.db"
    es.SQLiteEventStore(db).close()
    alone = tmp_path / "vendored"
    alone.mkdir()
    (alone / "eventsourcery.py").write_bytes((ROOT / "eventsourcery.py").read_bytes())
    result = subprocess.run(
        [sys.executable, "-S", str(alone / "eventsourcery.py"), str(db), "serve"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 1
    assert (
        "eventsourcery_web.py" in result.stderr
        and "not found beside eventsourcery.py" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- partitions and parked events: shown and acted on where the library has them ---------------


@dataclasses.dataclass(frozen=True)
class ScaledStatus(es.ProcessorStatus):
    """A status as the scale-out work gives it: with partitions and a parked count."""

    partitions: tuple = ()
    parked: int = 0


@dataclasses.dataclass(frozen=True)
class Parked:
    event_id: int
    aggregate_id: str
    error: str
    attempts: int
    parked_at: str
    behind: int | None


def with_parking(monkeypatch, calls: list) -> None:
    """Make this eventsourcery look like one that partitions processors and parks events."""
    status = ScaledStatus(
        "scaled",
        5,
        2,
        True,
        "running",
        owner="1@h",
        parked=1,
        partitions=(
            {"partition": 0, "position": 5, "lag": 2, "owner": "1@h", "state": "running"},
            {"partition": 1, "position": 7, "lag": 0, "owner": "2@h", "state": "running"},
        ),
    )
    monkeypatch.setattr(es, "processor_statuses", lambda store, tracker=None: [status])
    parked = [Parked(3, HOSTILE, f"failing: {HOSTILE}", 4, "2026-12-06T10:00:00+00:00", None)]
    monkeypatch.setattr(es, "parked_events", lambda store, name: parked, raising=False)
    monkeypatch.setattr(
        es,
        "retry_parked",
        lambda store, name, event_id=None: calls.append(("retry", name, event_id)),
        raising=False,
    )
    monkeypatch.setattr(
        es,
        "drop_parked",
        lambda store, name, event_id: calls.append(("drop", name, event_id)),
        raising=False,
    )


def test_real_parked_events_are_listed_retried_and_dropped(tmp_path) -> None:
    from tests.test_cli_parking import HOSTILE as ERROR_TEXT
    from tests.test_cli_parking import NAME, park_two

    path = str(tmp_path / "events.db")
    with es.SQLiteEventStore(path) as store:
        park_two(store)  # event 2 parked (it failed), 4 behind it
        with serving(path, allow_actions=True) as server:
            token = server.browser.token
            answer = get(server, "/api/processors")[2]
            assert answer["actions"] == ["reset", "skip", "retry-parked", "drop-parked"]
            assert [p["parked"] for p in answer["processors"]] == [2]
            parked = get(server, f"/api/processors/{NAME}/parked")[2]["parked"]
            assert [(p["event_id"], p["behind"], p["attempts"]) for p in parked] == [
                (2, None, 2),
                (4, 2, 0),
            ]
            assert parked[0]["error"] == f"RuntimeError: cannot {ERROR_TEXT}"
            assert get(server, "/api/processors/nobody/parked")[0] == 404
            assert post(server, f"/api/processors/{NAME}/retry-parked", {}, token=token)[0] == 200
            assert store.tracker().retry_requested(NAME) == [2, 4]
            assert (
                post(server, f"/api/processors/{NAME}/drop-parked", {"event_id": 3}, token=token)[0]
                == 409
            )
            assert (
                post(server, f"/api/processors/{NAME}/drop-parked", {"event_id": 2}, token=token)[0]
                == 200
            )
        assert [p.event_id for p in es.parked_events(store, NAME)] == [4]


def test_partitions_and_parked_events_are_given_and_acted_on_where_the_library_has_them(
    tmp_path, monkeypatch
) -> None:
    path = str(tmp_path / "events.db")
    with es.SQLiteEventStore(path) as store:
        fill(store, 3)
    calls: list = []
    with_parking(monkeypatch, calls)
    with serving(path, allow_actions=True) as server:
        token = server.browser.token
        answer = get(server, "/api/processors")[2]
        assert answer["actions"] == ["reset", "skip", "retry-parked", "drop-parked"]
        [status] = answer["processors"]
        assert status["parked"] == 1 and [p["owner"] for p in status["partitions"]] == [
            "1@h",
            "2@h",
        ]
        parked = get(server, "/api/processors/scaled/parked")[2]["parked"]
        assert parked == [
            {
                "event_id": 3,
                "aggregate_id": HOSTILE,
                "error": f"failing: {HOSTILE}",
                "attempts": 4,
                "parked_at": "2026-12-06T10:00:00+00:00",
                "behind": None,
            }
        ]
        assert post(server, "/api/processors/scaled/drop-parked", {"event_id": 3})[0] == 403
        assert post(server, "/api/processors/scaled/drop-parked", {}, token=token)[0] == 400
        assert calls == []
        assert post(server, "/api/processors/scaled/retry-parked", {}, token=token)[0] == 200
        assert (
            post(server, "/api/processors/scaled/retry-parked", {"event_id": 3}, token=token)[0]
            == 200
        )
        assert (
            post(server, "/api/processors/scaled/drop-parked", {"event_id": 3}, token=token)[0]
            == 200
        )
        assert calls == [("retry", "scaled", None), ("retry", "scaled", 3), ("drop", "scaled", 3)]
