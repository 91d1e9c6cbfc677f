"""The JSON HTTP API, on the standard library's threaded HTTP server.

=========================================  ===========  ======
route                                      command      status
=========================================  ===========  ======
``POST /todo/<todo_id>``                   add          201
``PUT /todo/<todo_id>``                    amend        200
``POST /todo/<todo_id>/complete``          complete     200
``POST /todo/<todo_id>/abandon``           abandon      200
``DELETE /todo/<todo_id>``                 forget       200
``GET /todos/outstanding``                 query        200
``GET /todos/scheduled``                   query        200
``GET /todos/completed``                   query        200
=========================================  ===========  ======

Request bodies are JSON objects with the original app's keys (``title``,
``description``, ``due_date``, ``stakeholder_email``, ``completed_on``,
``abandoned_on``; dates as ``YYYY-MM-DD``); an empty body counts as ``{}``.
Queries answer JSON arrays. Errors are plain text, one line ending with a
newline: ``Bad Request: <why>``
(400), ``Not Found: ...`` (404), ``Method Not Allowed: ...`` (405),
``Conflict: ...`` (409), ``Gone: ...`` (410, a todo that was forgotten),
``Payload Too Large: ...`` (413),
``Unprocessable Entity: <why>`` (422), ``Internal Server Error`` (500, the
details go to the server's log, never to the client).

Read-your-writes: every successful write answers with an
``Eventsourcery-Event-Id: <n>`` header, the id of the last event it stored
(for a write that stored nothing, the store's latest id at that moment). A
query that sends that header back waits, up to ``wait_timeout`` seconds
(5 by default), until the projector behind the query has processed event
``<n>``; if it has not by then, the query answers what the projection holds,
with ``Eventsourcery-Behind: <position it had reached>``. A value that is not
a whole number from 0 to 2**63 - 1 is a 400. Several values (repeated headers,
or a comma-separated list) wait for the highest.

Input the app cannot read is a 400 (or a 413), never a 500: a body that is
not UTF-8 JSON (or has an unpaired surrogate escape), a path with malformed
percent-encoding or that is not UTF-8 once decoded, and framing it cannot
trust (a Content-Length or chunk size that is not plain digits, two
different Content-Lengths, a Transfer-Encoding other than ``chunked``). A
size over the limit is refused before the body (or the chunk) is read; only
a well-formed Content-Length of up to 16 MiB is then read and dropped, so
that the client gets to see the 413.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# the C string encoder, when built
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from urllib.parse import unquote, urlsplit

import eventsourcery as es

from .aggregate import quoted
from .commands import (
    AbandonTodo,
    AddTodo,
    AmendTodo,
    BadRequest,
    CommandHandler,
    CompleteTodo,
    Conflict,
    UnprocessableEntity,
    todo_id_of,
)
from .projections import QUERIES

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB
_DRAIN_LIMIT = 16 * MAX_BODY_BYTES  # read and drop an oversized body up to this size
_LINE_LIMIT = 1024  # bytes in a chunk-size line or a trailer line
_MAX_TRAILER_LINES = 32
_CONTENT_LENGTH = re.compile(r"[0-9]+")  # no sign, no underscores, no other digits than ASCII
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")  # no sign, no 0x, no underscores
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"

#: On a write's answer: the id of the last event it stored. On a query: wait until the projection
#: has it.
EVENT_ID_HEADER = "Eventsourcery-Event-Id"
#: On a query's answer when the wait timed out: the position the projection had reached.
BEHIND_HEADER = "Eventsourcery-Behind"
MAX_EVENT_ID = 2**63 - 1  # a BIGINT: no store hands out a higher id
_EVENT_ID = re.compile(r"[0-9]{1,19}")


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status, body=b"", content_type=JSON_TYPE, headers=None):
        self.status = HTTPStatus(status)
        # backslashreplace: an error message may quote a caller's str that is no UTF-8 (a lone
        # surrogate)
        self.body = body.encode("utf-8", "backslashreplace") if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers or {}

    def __repr__(self):
        return f"<Response {self.status.value} {self.body[:80]!r}>"


# route name -> (method -> (command class, success status))
_COMMAND_ROUTES = {
    "todo": {"POST": (AddTodo, HTTPStatus.CREATED), "PUT": (AmendTodo, HTTPStatus.OK)},
    "complete": {"POST": (CompleteTodo, HTTPStatus.OK)},
    "abandon": {"POST": (AbandonTodo, HTTPStatus.OK)},
}


class TodoApp:
    """The API without the HTTP plumbing: ``dispatch(method, path, body, headers)``.

    ``store`` is the event store the commands load from and save to, shared
    by the request threads. ``connect_projections()`` returns a new DB-API
    connection to the projections; each request thread keeps one of its own
    for its queries (``release_thread()`` closes it when the thread is done).

    ``projectors`` maps a query name (``"outstanding"``...) to the projector
    whose tables it reads: an instance opened on the projections' database,
    not running here (the runner's children run them), used only to read its
    position. With it a query can wait for an event (``Eventsourcery-Event-Id``,
    up to ``wait_timeout`` seconds), and the encoded answer is kept until the
    projector's position moves, so repeated queries cost a position read. A
    query without a projector is read and encoded every time, and does not wait.
    """

    def __init__(self, store: es.EventStore, connect_projections: Callable, *,
                 projectors: Mapping[str, es.EventStreamProcessor] | None = None,
                 wait_timeout: float = 5.0) -> None:
        self.store = store
        self.connect_projections = connect_projections
        self.projectors = dict(projectors or {})
        self.wait_timeout = wait_timeout
        self._local = threading.local()
        self._answers: dict[str, tuple[int, bytes]] = {}  # query name -> (position, encoded rows)
        self._answer_locks = {name: threading.Lock() for name in QUERIES}

    def dispatch(self, method: str, target: str, body: bytes | None = None,
                 headers=None) -> Response:
        """Answer one request. ``headers`` is the request's headers: a mapping of names to values,
        or an ``email.message.Message`` (as ``http.server`` gives), or None."""
        try:
            return self._dispatch(method, target, body, headers)
        except HTTPError as e:
            return _error(e.status, e.message, e.headers)
        except BadRequest as e:
            return _error(HTTPStatus.BAD_REQUEST, str(e))
        except UnprocessableEntity as e:
            return _error(HTTPStatus.UNPROCESSABLE_ENTITY, str(e))
        except Conflict as e:
            return _error(HTTPStatus.CONFLICT, str(e))
        except es.AggregateErasedError:
            return _error(HTTPStatus.GONE, "this todo was forgotten")
        except Exception:  # never show a traceback to the client
            traceback.print_exc(file=sys.stderr)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, None)

    def _dispatch(self, method, target, body, headers):
        path = urlsplit(target).path
        segments = path.split("/")[1:]
        # /todo/<id>, /todo/<id>/complete, /todo/<id>/abandon
        if len(segments) in (2, 3) and segments[0] == "todo" and segments[1]:
            action = "todo" if len(segments) == 2 else segments[2]
            if action == "todo" and method == "DELETE":
                return self.forget(todo_id_of({"todo_id": _path_segment(segments[1])}))
            if action in _COMMAND_ROUTES:
                allowed = _COMMAND_ROUTES[action]
                if method not in allowed:
                    raise _not_allowed(method, target,
                                       [*allowed, "DELETE"] if action == "todo" else allowed)
                command_class, status = allowed[method]
                todo_id = _path_segment(segments[1])
                params = _json_object(body)
                params["todo_id"] = todo_id  # the route's id wins
                stored = self.handle(command_class.build(params))
                return Response(status, headers=self._written(stored[-1].id if stored else None))
        # /todos/<name>
        if len(segments) == 2 and segments[0] == "todos" and segments[1] in QUERIES:
            if method not in ("GET", "HEAD"):
                raise _not_allowed(method, target, ("GET", "HEAD"))
            wanted = wanted_event_id(headers)
            return self.answer(segments[1], wanted)
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no route for {method} {path}")

    def _written(self, event_id: int | None) -> dict[str, str]:
        """The headers of a write's answer: the id to wait for to read what it did (or saw)."""
        # nothing stored (an amend that changed nothing): what it saw is in the store
        if event_id is None:
            event_id = self.store.latest_event_id()
        return {EVENT_ID_HEADER: str(event_id)}

    def handle(self, command) -> list:
        """Run a command; the events it stored."""
        return CommandHandler(es.Repository(self.store)).handle(command)

    def forget(self, todo_id: str) -> Response:
        """Erase the todo and everything it held (the stakeholder's e-mail included) for good; the
        projectors and the notifier forget it on the ``AggregateErased`` event this appends."""
        erased = self.store.erase_aggregate(todo_id, reason="forgotten on request")
        if erased is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"Todo {quoted(todo_id)} does not exist")
        return Response(HTTPStatus.OK, headers=self._written(erased.id))

    def answer(self, name: str, wanted: int | None = None) -> Response:
        """The query's answer (200, its rows as indented JSON), once its projector has processed
        event ``wanted`` (if given), or after ``wait_timeout`` seconds with the
        ``Eventsourcery-Behind`` header."""
        projector = self.projectors.get(name)
        if projector is None:
            return Response(HTTPStatus.OK, encode_rows(self.query(name)))
        position = projector.last_processed_event_id
        headers = {}
        if wanted is not None and position < wanted:
            # an id the store has not handed out yet will not come in time: no wait for it
            if self.wait_timeout > 0 and wanted <= self.store.latest_event_id():
                projector.wait_for(wanted, timeout=self.wait_timeout)
            position = projector.last_processed_event_id
            if position < wanted:
                headers[BEHIND_HEADER] = str(position)
        return Response(HTTPStatus.OK, self._encoded(name, position), headers=headers)

    def _encoded(self, name: str, position: int) -> bytes:
        """The encoded rows of query ``name`` as of projector position ``position`` or later.

        The position is read before the rows (and the projector commits its rows and its position
        together), so the rows kept under a position are never older than it.
        """
        kept = self._answers.get(name)
        if kept is not None and kept[0] == position:
            return kept[1]
        # one thread reads and encodes; the others wait for its answer
        with self._answer_locks[name]:
            kept = self._answers.get(name)
            if kept is not None and kept[0] == position:
                return kept[1]
            body = encode_rows(self.query(name)).encode("utf-8")
            self._answers[name] = (position, body)
            return body

    def query(self, name: str) -> list[dict]:
        """The rows of query ``name``, read on this thread's projections connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self.connect_projections()
        try:
            return QUERIES[name](db)
        except BaseException:
            self.release_thread()  # a connection that failed is not used again
            raise

    def release_thread(self) -> None:
        """Close the calling thread's projections connection, if it has one."""
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            try:
                db.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def close(self) -> None:
        """Close the calling thread's connection and the projectors' database connections."""
        self.release_thread()
        for projector in self.projectors.values():
            projector.close()


def encode_rows(rows: list[dict]) -> str:
    """A query's rows as the API answers them: JSON, indented by 2, non-ASCII kept, with a final
    newline.

    The same text as ``json.dumps(rows, indent=2, ensure_ascii=False) + "\\n"``, made faster for
    what the queries return (dicts of text, None and ints): ``json`` encodes indented output in
    Python, value by value, while each string here goes through its C string encoder. Anything
    else is left to ``json.dumps``.
    """
    quote = encode_basestring
    parts = []
    for row in rows:
        if row.__class__ is not dict or not row:
            break
        items = []
        for key, value in row.items():
            kind = value.__class__
            if kind is str:
                text = quote(value)
            elif value is None:
                text = "null"
            elif kind is int:
                text = int.__repr__(value)
            else:
                break
            if key.__class__ is not str:
                break
            items.append(f"    {quote(key)}: {text}")
        else:
            parts.append("  {\n" + ",\n".join(items) + "\n  }")
            continue
        break
    else:
        return "[\n" + ",\n".join(parts) + "\n]\n" if parts else "[]\n"
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


def _header_values(headers, name: str) -> list[str]:
    if headers is None:
        return []
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:  # email.message.Message, as http.server parses them
        return list(get_all(name) or [])
    return [value for key, value in headers.items() if key.lower() == name.lower()]


def wanted_event_id(headers) -> int | None:
    """The highest event id named by the request's ``Eventsourcery-Event-Id`` headers (None without
    any).

    Each value is a comma-separated list of whole numbers from 0 to 2**63 - 1; anything else
    (a sign, a fraction, an empty item, a larger number) is a BadRequest.
    """
    values = _header_values(headers, EVENT_ID_HEADER)
    if not values:
        return None
    ids = []
    for item in (i.strip() for value in values for i in str(value).split(",")):
        if not _EVENT_ID.fullmatch(item) or int(item) > MAX_EVENT_ID:
            raise BadRequest(f"{EVENT_ID_HEADER} must be an event id, a whole number from 0 to "
                             f"{MAX_EVENT_ID}")
        ids.append(int(item))
    return max(ids)


def _not_allowed(method, target, allowed) -> HTTPError:
    allow = ", ".join(sorted(allowed))
    return HTTPError(HTTPStatus.METHOD_NOT_ALLOWED,
                     f"{method} is not allowed on {urlsplit(target).path} (allowed: {allow})",
                     {"Allow": allow})


def _path_segment(segment: str) -> str:
    """A percent-decoded path segment; malformed escapes and text that is not UTF-8 are a 400."""
    if _BAD_PERCENT.search(segment):
        raise BadRequest("malformed percent-encoding in the path")
    try:
        return unquote(segment, errors="strict")  # strict: %ED%A0%80 (a surrogate) is no UTF-8
    except UnicodeDecodeError:
        raise BadRequest("the path is not UTF-8 text") from None


def _json_object(body: bytes | None) -> dict:
    if not body or not body.strip():
        return {}
    try:
        # decoded here, strictly: json.loads(bytes) would also take UTF-16 and encoded surrogates
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    try:
        params = json.loads(text)
        # "\ud800" is valid JSON but no text a store can keep: find one anywhere (keys too)
        json.dumps(params, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("malformed JSON: unpaired surrogate in a string") from None
    except ValueError as e:  # json.JSONDecodeError
        raise BadRequest(f"malformed JSON: {e}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(params, dict):
        raise BadRequest("request body must be a JSON object")
    return params


# Fixed phrases: the body is part of the API, and Python renames some
# (3.13 calls 413 "Content Too Large" and 422 "Unprocessable Content").
_PHRASES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
}


def _error(status: HTTPStatus, detail: str | None, headers=None) -> Response:
    """A plain-text error answer: ``<phrase>: <detail>`` and a newline (as a terminal wants it)."""
    phrase = _PHRASES.get(status.value, status.phrase)
    text = phrase if detail is None else f"{phrase}: {detail}"
    return Response(status, text + "\n", TEXT_TYPE, headers)


# ---------------------------------------------------------------------------
# HTTP plumbing


class TodoRequestHandler(BaseHTTPRequestHandler):
    server_version = "eventsourcery-todo/1.0"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stay silent
    # TCP_NODELAY: an answer goes out at once, not after the client's ACK
    disable_nagle_algorithm = True
    # a well-formed Content-Length over the limit, which _read_body drains (up to _DRAIN_LIMIT)
    _too_large = 0

    def do_GET(self):
        self._serve()

    def do_HEAD(self):
        self._serve(head=True)

    def do_POST(self):
        self._serve()

    def do_PUT(self):
        self._serve()

    def do_DELETE(self):
        self._serve()

    def do_PATCH(self):
        self._serve()

    def handle_expect_100(self):
        # "Expect: 100-continue" (curl sends it for large bodies): refuse an
        # oversized body before the client sends it.
        length = self._content_length()
        if isinstance(length, Response):
            self._send(length)
            return False
        return super().handle_expect_100()

    def _declared_length(self):
        """The Content-Length: None, a length of at most MAX_BODY_BYTES, or an error Response.

        Nothing of the body is read here, whatever the header says. For a 413,
        ``self._too_large`` is the (well-formed) length refused.
        """
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return None
        texts = [v.strip() for value in values for v in value.split(",")]
        # "5, 5" (or two headers) is 5; "5, 6" is not
        lengths = {t.lstrip("0") or "0" for t in texts}
        if len(lengths) != 1 or not all(_CONTENT_LENGTH.fullmatch(t) for t in texts):
            return self._refuse(_error(HTTPStatus.BAD_REQUEST, "invalid Content-Length header"))
        text = lengths.pop()
        too_large = _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"request body exceeds {MAX_BODY_BYTES} bytes")
        if len(text) > 20:  # past any real length (and int() refuses more than 4300 digits)
            return self._refuse(too_large)
        length = int(text)
        if length > MAX_BODY_BYTES:
            self._too_large = length
            return self._refuse(too_large)
        return length

    def _content_length(self):
        """The declared body length (None when there is none), or an error Response (no body
        read)."""
        if self.headers.get_all("Transfer-Encoding"):
            return self._transfer_encoding()
        return self._declared_length()

    def _transfer_encoding(self):
        """None for a chunked body (its size comes in the chunks), else an error Response."""
        codings = [c.strip().lower() for value in self.headers.get_all("Transfer-Encoding")
                   for c in value.split(",") if c.strip()]
        if codings != ["chunked"]:
            return self._refuse(_error(HTTPStatus.BAD_REQUEST,
                                       "unsupported Transfer-Encoding (only chunked)"))
        if "Content-Length" in self.headers:  # chunked wins (RFC 9112), but this client is odd
            self.close_connection = True
        return None

    def _refuse(self, response: Response) -> Response:
        # the rest of the stream cannot be trusted to be a next request
        self.close_connection = True
        return response

    def _read_body(self):
        """The request body (bytes), or an error Response."""
        self._too_large = 0
        length = self._content_length()
        if isinstance(length, Response):
            if 0 < self._too_large <= _DRAIN_LIMIT:
                # a well-formed size, just too big: so the client can read our answer
                self._discard(self._too_large)
            return length
        if self.headers.get_all("Transfer-Encoding"):
            return self._read_chunked()
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) < length:
            return self._refuse(_error(HTTPStatus.BAD_REQUEST,
                                       "request body shorter than Content-Length"))
        return body

    def _read_chunked(self):
        body = bytearray()
        malformed = _error(HTTPStatus.BAD_REQUEST, "malformed chunked body")
        while True:
            size = self._chunk_size()
            if size is None:
                return self._refuse(malformed)
            if size == 0:
                return bytes(body) if self._read_trailers() else self._refuse(malformed)
            if size > MAX_BODY_BYTES - len(body):  # refused before reading the chunk
                return self._refuse(_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                           f"request body exceeds {MAX_BODY_BYTES} bytes"))
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                return self._refuse(malformed)
            body += chunk

    def _chunk_size(self) -> int | None:
        """The next chunk's size: hex digits (then maybe ``;extensions``) on a line; None if not
        that."""
        line = self.rfile.readline(_LINE_LIMIT + 1)
        if len(line) > _LINE_LIMIT or not line.endswith(b"\n"):
            return None
        digits = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits):
            return None
        digits = digits.lstrip(b"0") or b"0"
        if len(digits) > 16:  # beyond 2**64: too large for anything, and for int() to bother
            return MAX_BODY_BYTES + 1
        return int(digits, 16)

    def _read_trailers(self) -> bool:
        """Skip the trailer lines up to the empty line that ends the body; False if there is
        none."""
        for _ in range(_MAX_TRAILER_LINES + 1):
            line = self.rfile.readline(_LINE_LIMIT + 1)
            if len(line) > _LINE_LIMIT or not line.endswith(b"\n"):
                return False
            if not line.strip():
                return True
        return False

    def _discard(self, n):
        try:
            while n > 0:
                chunk = self.rfile.read(min(n, 65536))
                if not chunk:
                    break
                n -= len(chunk)
        except OSError:
            pass

    def _serve(self, head=False):
        try:
            body = self._read_body() if self.command not in ("GET", "HEAD") else b""
            target = _request_target(self.path)
            if isinstance(body, Response):
                response = body
            elif target is None:
                response = _error(HTTPStatus.BAD_REQUEST, "the path is not UTF-8 text")
            else:
                response = self.server.app.dispatch("GET" if head else self.command, target, body,
                                                    self.headers)
            self._send(response, head=head)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _send(self, response: Response, head=False):
        """Send the status line, the headers and the body in one write (so that no delayed ACK holds
        back a second packet: one write per answer, and TCP_NODELAY on the socket)."""
        status = response.status.value
        self.log_request(status)
        data = b"" if head else response.body
        if self.request_version != "HTTP/0.9":  # HTTP/0.9 answers are the body alone
            lines = [
                f"{self.protocol_version} {status} {self.responses[status][0]}",
                f"Server: {self.version_string()}",
                f"Date: {self.date_time_string()}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}",
                *(f"{name}: {value}" for name, value in response.headers.items()),
            ]
            if self.close_connection:
                lines.append("Connection: close")
            data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict") + data
        self.wfile.write(data)

    _date = (0, "")  # (second, Date header text) of the last answer, shared by the threads

    def date_time_string(self, timestamp=None):
        """The Date header's text, formatted once a second rather than for every answer."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        second, text = TodoRequestHandler._date
        if second != now:
            text = super().date_time_string(now)
            TodoRequestHandler._date = (now, text)
        return text

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.app.release_thread()  # this connection's thread ends here

    def log_message(self, format, *args):
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def _request_target(path: str) -> str | None:
    """The request target as text: http.server decodes the request line as Latin-1, so raw
    (unescaped) non-ASCII bytes come back as UTF-8 here; None if they are not UTF-8."""
    if path.isascii():
        return path
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


class TodoHTTPServer(ThreadingHTTPServer):
    """The threaded HTTP server around a TodoApp: a thread per connection."""

    daemon_threads = True
    # the listen backlog: 5 (the default) drops connections a burst of clients opens
    request_queue_size = 128

    def __init__(self, address, app: TodoApp, *, quiet=False):
        self.app = app
        self.quiet = quiet
        super().__init__(address, TodoRequestHandler)


def make_server(app: TodoApp, host="127.0.0.1", port=8000, *, quiet=False) -> TodoHTTPServer:
    return TodoHTTPServer((host, port), app, quiet=quiet)
