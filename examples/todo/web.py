"""The JSON HTTP API, on the standard library's threaded HTTP server.

=========================================  ===========  ======
route                                      command      status
=========================================  ===========  ======
``POST /todo/<todo_id>``                   add          201
``PUT /todo/<todo_id>``                    amend        200
``POST /todo/<todo_id>/complete``          complete     200
``POST /todo/<todo_id>/abandon``           abandon      200
``GET /todos/outstanding``                 query        200
``GET /todos/scheduled``                   query        200
``GET /todos/completed``                   query        200
=========================================  ===========  ======

Request bodies are JSON objects with the original app's keys (``title``,
``description``, ``due_date``, ``stakeholder_email``, ``completed_on``,
``abandoned_on``; dates as ``YYYY-MM-DD``); an empty body counts as ``{}``.
Queries answer JSON arrays. Errors are plain text: ``Bad Request: <why>``
(400), ``Not Found: ...`` (404), ``Method Not Allowed: ...`` (405),
``Conflict: ...`` (409), ``Payload Too Large: ...`` (413),
``Unprocessable Entity: <why>`` (422), ``Internal Server Error`` (500, the
details go to the server's log, never to the client).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import eventsourcery as es

from .commands import (
    AbandonTodo,
    AddTodo,
    AmendTodo,
    BadRequest,
    CommandHandler,
    CompleteTodo,
    Conflict,
    UnprocessableEntity,
)
from .projections import QUERIES

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB
_DRAIN_LIMIT = 16 * MAX_BODY_BYTES  # read and drop an oversized body up to this size

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
        self.body = body.encode("utf-8") if isinstance(body, str) else body
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
        except Exception:  # never show a traceback to the client
            traceback.print_exc(file=sys.stderr)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, None)

    def _dispatch(self, method, target, body):
        segments = urlsplit(target).path.split("/")[1:]
        # /todo/<id>, /todo/<id>/complete, /todo/<id>/abandon
        if len(segments) in (2, 3) and segments[0] == "todo" and segments[1]:
            action = "todo" if len(segments) == 2 else segments[2]
            if action in _COMMAND_ROUTES:
                allowed = _COMMAND_ROUTES[action]
                if method not in allowed:
                    raise _not_allowed(method, target, allowed)
                command_class, status = allowed[method]
                params = _json_object(body)
                params["todo_id"] = unquote(segments[1])  # the route's id wins
                self.handle(command_class.build(params))
                return Response(status)
        # /todos/<name>
        if len(segments) == 2 and segments[0] == "todos" and segments[1] in QUERIES:
            if method not in ("GET", "HEAD"):
                raise _not_allowed(method, target, ("GET", "HEAD"))
            rows = self.query(segments[1])
            return Response(HTTPStatus.OK, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no route for {method} {urlsplit(target).path}")

    def handle(self, command) -> list:
        return CommandHandler(es.Repository(self.store)).handle(command)

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


def _json_object(body: bytes | None) -> dict:
    if not body or not body.strip():
        return {}
    try:
        params = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
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

    def _content_length(self):
        """The declared body length, or an error Response for a bad or huge one."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return _error(HTTPStatus.BAD_REQUEST, "invalid Content-Length header")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"request body exceeds {MAX_BODY_BYTES} bytes")
        return length

    def _read_body(self):
        """The request body (bytes), or an error Response."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self._content_length()
        if isinstance(length, Response):
            declared = int(self.headers["Content-Length"]) if length.status == 413 else 0
            if 0 < declared <= _DRAIN_LIMIT:
                self._discard(declared)  # so the client can read our answer
            return length
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return _error(HTTPStatus.BAD_REQUEST, "request body shorter than Content-Length")
        return body

    def _read_chunked(self):
        body = bytearray()
        try:
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    return bytes(body)
                if len(body) + size > MAX_BODY_BYTES:
                    self.close_connection = True
                    return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"request body exceeds {MAX_BODY_BYTES} bytes")
                body += self.rfile.read(size)
                self.rfile.readline(1024)  # CRLF after the chunk
        except ValueError:
            self.close_connection = True
            return _error(HTTPStatus.BAD_REQUEST, "malformed chunked body")

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
            if isinstance(body, Response):
                response = body
            else:
                response = self.server.app.dispatch(
                    "GET" if head else self.command, self.path, body)
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


class TodoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, app: TodoApp, *, quiet=False):
        self.app = app
        self.quiet = quiet
        super().__init__(address, TodoRequestHandler)


def make_server(app: TodoApp, host="127.0.0.1", port=8000, *, quiet=False) -> TodoHTTPServer:
    return TodoHTTPServer((host, port), app, quiet=quiet)
