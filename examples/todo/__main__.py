"""``python -m examples.todo [--port 8000] [--store todo.db | postgresql://...]``

Starts the whole app: the JSON API (in a thread of this process) and the
three projectors plus the notifier reactor (each in its own process, under
``es.ESPRunner``, which owns the main thread and its signal handlers).
Ctrl-C or SIGTERM stops all of it; the exit status is 0 when everything
stopped cleanly.

With a SQLite store (a file path, or ``sqlite:///path``) the projections live
in a second file next to it (``todo.db`` -> ``todo-projections.db``); with
``postgresql://...`` they live in the same database. The store, the tables
and the processors' positions are created on first run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

if not __package__:  # `python3 examples/todo`: the relative imports below need the package
    print("error: run the todo app as a module, from the repository root: python3 -m examples.todo",
          file=sys.stderr)
    raise SystemExit(2)

import eventsourcery as es  # noqa: E402

from . import ignore_interrupts, projections  # noqa: E402
from .reactor import TodoCompletedNotifier  # noqa: E402
from .web import TodoApp, make_server  # noqa: E402


@dataclasses.dataclass
class Config:
    store_url: str
    projections: str  # a SQLite path, or the Postgres conninfo
    mail_log: str
    postgres: bool

    def describe(self) -> str:
        if self.postgres:
            return f"events and projections: {_redact(self.store_url)}"
        return f"events: {self.store_url}, projections: {self.projections}"


def _redact(url: str) -> str:
    """The URL without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def configure(store: str, mail_log: str | None = None) -> Config:
    try:
        location = es.parse_store_url(store)
    except es.StoreError as e:
        raise SystemExit(f"error: {e}") from None
    if location.scheme == "memory":
        raise SystemExit(
            "error: the todo app runs its processors in other processes, which cannot "
            "see a memory: store; give a file path or a postgresql:// URL")
    if location.scheme != "sqlite":
        return Config(store, store, mail_log or "todo-postgres-mail.log", True)
    path = Path(location.target)
    if path.is_dir():
        raise SystemExit(f"error: store {str(path)!r} is a directory")
    projections_path = path.with_name(f"{path.stem}-projections{path.suffix}")
    mail = mail_log or str(path.with_name(f"{path.stem}-mail.log"))
    return Config(store, str(projections_path), mail, False)


def projectors(config: Config) -> list:
    """The three projectors, on the projections' database (a SQLite file, or the Postgres
    database)."""
    return [cls(config.projections) for cls in projections.PROJECTORS]


def processors(config: Config, store) -> list:
    return [*projectors(config), TodoCompletedNotifier(store, mail_log=config.mail_log)]


def query_projectors(config: Config) -> dict:
    """For the API: each query's projector, opened on the projections' database (one connection for
    the three) to read its position, never run in this process."""
    database = es.open_database(config.projections)
    return {name: cls(database) for name, cls in projections.QUERY_PROJECTORS.items()}


def connect_projections(config: Config):
    if config.postgres:
        from .pg import connect

        return lambda: connect(config.projections)
    uri = Path(config.projections).resolve().as_uri() + "?mode=ro"
    return lambda: sqlite3.connect(uri, uri=True, timeout=30)


def setup(config: Config) -> None:
    """Create the store, the projection tables and the processors' positions.

    So the API can answer queries at once, even before the processors have
    started. These processors are throwaway: the runner's children build
    their own.
    """
    with es.open_store(config.store_url) as store:
        for projector in projectors(config):
            projector.setup()
            projector.close()
        TodoCompletedNotifier(store).setup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.todo",
        description="The eventsourcery todo example: a JSON API plus its projectors and reactor.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8000,
                        help="port to listen on (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--store", default="todo.db",
                        help="event store: a SQLite file (default: %(default)s) or a postgresql:// "
                             "URL")
    parser.add_argument("--mail-log", help="where the notifier 'sends' its mails (default: "
                                           "<store>-mail.log next to a SQLite store, "
                                           "./todo-postgres-mail.log for Postgres)")
    parser.add_argument("--quiet", action="store_true", help="do not log each HTTP request")
    parser.add_argument("--wait-timeout", type=_seconds, default=5.0, metavar="SECONDS",
                        help="how long a query sent with an Eventsourcery-Event-Id header waits "
                             "for its projection to process that event (default: %(default)s)")
    args = parser.parse_args(argv)

    config = configure(args.store, args.mail_log)
    # Until the runner takes over the signals, SIGTERM stops us as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, config)
    except KeyboardInterrupt:  # before the runner took over the signals
        print("Stopped.", flush=True)
        return 0


def _port(text: str) -> int:
    """``--port``: a TCP port number, 0 to 65535 (0 picks a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: not a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: not a number from 0 to 65535")
    return port


def _seconds(text: str) -> float:
    """``--wait-timeout``: a number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:  # NaN too
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: give 0 to 3600")
    return seconds


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(args, config: Config) -> int:
    try:
        setup(config)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a bad path, an unreachable server...: one line, no traceback
        print(f"error: cannot set up the store: {e}", file=sys.stderr)
        return 1

    web_store = es.open_store(config.store_url)  # the API's; the runner's children open their own
    try:
        app = TodoApp(web_store, connect_projections(config), projectors=query_projectors(config),
                      wait_timeout=args.wait_timeout)
        try:
            server = make_server(app, args.host, args.port, quiet=args.quiet)
        except OSError as e:
            app.close()
            print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
                  file=sys.stderr)
            return 1
        try:
            host, port = server.server_address[:2]
            threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
            print(f"Todo app on http://{host}:{port}/  ({config.describe()})", flush=True)
            print(f"Stakeholder mails are appended to {os.path.abspath(config.mail_log)}",
                  flush=True)
            print("Press Ctrl-C to stop.", flush=True)

            store = es.open_store(config.store_url)  # the runner hands it to its children
            # spawn: fresh children, not forks of a process that runs HTTP threads;
            # ignore_interrupts: on Ctrl-C the children stop on the runner's SIGTERM only
            runner = es.ESPRunner(processors(config, store), store, start_method="spawn",
                                  after_fork=ignore_interrupts)
            clean = runner.start()  # until SIGINT/SIGTERM
        finally:
            server.shutdown()
            server.server_close()
            app.close()
    finally:
        web_store.close()
    print("Stopped." if clean else "Stopped, but a processor did not end cleanly.", flush=True)
    return 0 if clean else 1

if __name__ == "__main__":
    sys.exit(main())
