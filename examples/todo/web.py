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
Queries answer JSON arrays. Errors are plain text: ``Bad Request: <why>``
(400), ``Not Found: ...`` (404), ``Method Not Allowed: ...`` (405),
``Conflict: ...`` (409), ``Gone: ...`` (410, a todo that was forgotten),
``Payload Too Large: ...`` (413),
``Unprocessable Entity: <why>`` (422), ``Internal Server Error`` (500, the
details go to the server's log, never to the client).

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
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
        # backslashreplace: an error message may quote a caller's str that is no UTF-8 (a lone surrogate)
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
    """The API without the HTTP plumbing: ``dispatch(method, path, body)``.

    ``store`` is the event store the commands load from and save to, shared
    by the request threads (the SQLite and Postgres stores guard their
    connection with a lock). ``connect_projections()`` returns a new DB-API
    connection to the projections; each query opens and closes its own.
    """

    def __init__(self, store: es.EventStore, connect_projections: Callable):
        self.store = store
        self.connect_projections = connect_projections

    def dispatch(self, method: str, target: str, body: bytes | None = None) -> Response:
        try:
            return self._dispatch(method, target, body)
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

    def _dispatch(self, method, target, body):
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
                    raise _not_allowed(method, target, [*allowed, "DELETE"] if action == "todo" else allowed)
                command_class, status = allowed[method]
                todo_id = _path_segment(segments[1])
                params = _json_object(body)
                params["todo_id"] = todo_id  # the route's id wins
                self.handle(command_class.build(params))
                return Response(status)
        # /todos/<name>
        if len(segments) == 2 and segments[0] == "todos" and segments[1] in QUERIES:
            if method not in ("GET", "HEAD"):
                raise _not_allowed(method, target, ("GET", "HEAD"))
            rows = self.query(segments[1])
            return Response(HTTPStatus.OK, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no route for {method} {path}")

    def handle(self, command) -> list:
        return CommandHandler(es.Repository(self.store)).handle(command)

    def forget(self, todo_id: str) -> Response:
        """Erase the todo and everything it held (the stakeholder's e-mail included) for good; the
        projectors and the notifier forget it on the ``AggregateErased`` event this appends."""
        if self.store.erase_aggregate(todo_id, reason="forgotten on request") is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"Todo {quoted(todo_id)} does not exist")
        return Response(HTTPStatus.OK)

    def query(self, name: str) -> list[dict]:
        db = self.connect_projections()
        try:
            return QUERIES[name](db)
        finally:
            db.close()


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
    phrase = _PHRASES.get(status.value, status.phrase)
    text = phrase if detail is None else f"{phrase}: {detail}"
    return Response(status, text, TEXT_TYPE, headers)


# ---------------------------------------------------------------------------
# HTTP plumbing


class TodoRequestHandler(BaseHTTPRequestHandler):
    server_version = "eventsourcery-todo/1.0"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stay silent
    _too_large = 0  # a well-formed Content-Length over the limit, which _read_body drains (up to _DRAIN_LIMIT)

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
        lengths = {t.lstrip("0") or "0" for t in texts}  # "5, 5" (or two headers) is 5; "5, 6" is not
        if len(lengths) != 1 or not all(_CONTENT_LENGTH.fullmatch(t) for t in texts):
            return self._refuse(_error(HTTPStatus.BAD_REQUEST, "invalid Content-Length header"))
        text = lengths.pop()
        too_large = _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body exceeds {MAX_BODY_BYTES} bytes")
        if len(text) > 20:  # past any real length (and int() refuses more than 4300 digits)
            return self._refuse(too_large)
        length = int(text)
        if length > MAX_BODY_BYTES:
            self._too_large = length
            return self._refuse(too_large)
        return length

    def _content_length(self):
        """The declared body length (None when there is none), or an error Response (no body read)."""
        if self.headers.get_all("Transfer-Encoding"):
            return self._transfer_encoding()
        return self._declared_length()

    def _transfer_encoding(self):
        """None for a chunked body (its size comes in the chunks), else an error Response."""
        codings = [c.strip().lower() for value in self.headers.get_all("Transfer-Encoding")
                   for c in value.split(",") if c.strip()]
        if codings != ["chunked"]:
            return self._refuse(_error(HTTPStatus.BAD_REQUEST, "unsupported Transfer-Encoding (only chunked)"))
        if "Content-Length" in self.headers:  # chunked wins (RFC 9112), but this client is odd
            self.close_connection = True
        return None

    def _refuse(self, response: Response) -> Response:
        self.close_connection = True  # the rest of the stream cannot be trusted to be a next request
        return response

    def _read_body(self):
        """The request body (bytes), or an error Response."""
        self._too_large = 0
        length = self._content_length()
        if isinstance(length, Response):
            if 0 < self._too_large <= _DRAIN_LIMIT:
                self._discard(self._too_large)  # a well-formed size, just too big: so the client can read our answer
            return length
        if self.headers.get_all("Transfer-Encoding"):
            return self._read_chunked()
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) < length:
            return self._refuse(_error(HTTPStatus.BAD_REQUEST, "request body shorter than Content-Length"))
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
        """The next chunk's size: hex digits (then maybe ``;extensions``) on a line; None if not that."""
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
        """Skip the trailer lines up to the empty line that ends the body; False if there is none."""
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
                response = self.server.app.dispatch("GET" if head else self.command, target, body)
            self._send(response, head=head)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _send(self, response: Response, head=False):
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

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
    daemon_threads = True

    def __init__(self, address, app: TodoApp, *, quiet=False):
        self.app = app
        self.quiet = quiet
        super().__init__(address, TodoRequestHandler)


def make_server(app: TodoApp, host="127.0.0.1", port=8000, *, quiet=False) -> TodoHTTPServer:
    return TodoHTTPServer((host, port), app, quiet=quiet)
