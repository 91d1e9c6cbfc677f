"""The todo example's HTTP server under a load generator (``wrk``): workload (l).

    python3 -m bench.todo_http [--seconds 3] [--connections 1,8,32] [--todos 200]
                               [--backend sqlite|postgres] [--json out.json]

Starts ``python -m examples.todo`` on a fresh store (a SQLite file, or a new
database on the server at $EVENTSOURCERY_TEST_POSTGRES, dropped afterwards;
its projectors and
notifier run as they do in production), adds ``--todos`` todos, waits for the
projection, then runs ``wrk`` with keep-alive connections:

* ``get``: ``GET /todos/outstanding`` (a JSON array of the ``--todos`` todos),
* ``add``: ``POST /todo/<unique id>`` (a Lua script gives every request its
  own id), counting the 201s wrk saw against the events stored: ``wrk`` drops
  the requests still in flight when its time is up, which the server may
  still have stored, so ``events - 201s`` is between 0 and the connections.

Each point prints requests/s, p50 and p99 latency. Without ``wrk`` on the PATH
it prints one line saying so and does nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
QUERY = "/todos/outstanding"

_POST_LUA = """
local counter = 0
local threads = {}
local ok = 0
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  prefix = args[1] .. "-" .. tid .. "-"
  created = 0
end
function request()
  counter = counter + 1
  return wrk.format("POST", "/todo/" .. prefix .. counter, {["Content-Type"] = "application/json"},
                    '{"title": "load", "due_date": "2030-01-01"}')
end
function response(status, headers, body)
  if status == 201 then created = created + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("created") end
  io.write(string.format("CREATED %d\\n", total))
end
"""


def wrk_path() -> str | None:
    """The ``wrk`` executable, or None when it is not installed."""
    return shutil.which("wrk")


def _duration_ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.20ms``, ``2.00s``, ``1.00m``) in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """requests/s, p50/p99 (ms), errors and (for the POST script) the 201s from ``wrk --latency``
    output."""
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    out["req_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", output)
    out["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        out[f"p{pct}_ms"] = _duration_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    m = re.search(r"^CREATED (\d+)", output, re.M)
    out["created"] = int(m.group(1)) if m else None
    return out


class TodoServer:
    """``python -m examples.todo`` on a store of its own, in a subprocess (a context manager)."""

    def __init__(self, store: str | None, workdir: str) -> None:
        self.store = store or os.path.join(workdir, "todo.db")
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> TodoServer:
        cmd = [sys.executable, "-m", "examples.todo", "--port", "0", "--quiet", "--store",
               self.store, "--mail-log", os.path.join(self.workdir, "mail.log")]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"http://[^:]+:(\d+)/", line)
        if not m:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the todo app did not start: {line!r}")
        self.port = int(m.group(1))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count_events(self) -> int:
        """How many todo_added events the store holds."""
        import eventsourcery as es

        with es.open_store(self.store) as store:
            return len(list(store.get_next_from(1, event_types=["todo_added"], limit=10_000_000)))


def _seed(server: TodoServer, todos: int, timeout: float = 60.0) -> None:
    """Add ``todos`` todos over one keep-alive connection, then wait until the projection lists them
    all."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps({"title": "Seeded todo with a title of some length",
                       "description": "A description.", "due_date": "2030-01-01",
                       "stakeholder_email": "someone@example.com"})
    for i in range(todos):
        conn.request("POST", f"/todo/seed-{i}", body)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 201:
            raise RuntimeError(f"seeding: {resp.status}")
    deadline = time.monotonic() + timeout
    while True:
        conn.request("GET", QUERY)
        resp = conn.getresponse()
        rows = json.loads(resp.read())
        if len(rows) >= todos:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the projection lists {len(rows)} of {todos} todos")
        time.sleep(0.05)
    conn.close()


def _wrk(url: str, connections: int, seconds: float, script: str | None = None,
         args: tuple[str, ...] = ()) -> dict[str, Any]:
    threads = 1 if connections == 1 else 2
    cmd = [wrk_path() or "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
           "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed: {p.stderr or p.stdout}")
    result = parse_wrk(p.stdout)
    result["raw"] = p.stdout
    return result


@contextlib.contextmanager
def postgres_database(conninfo: str):
    """A new, empty database on the server of ``conninfo`` (a postgresql:// URL), dropped
    afterwards."""
    import psycopg

    name = f"esbench_todo_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield urlunsplit(urlsplit(conninfo)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(*, store: str | None = None, seconds: float = 3.0,
        connections: tuple[int, ...] = (1, 8, 32), todos: int = 200,
        log=print) -> list[dict[str, Any]]:
    """Every point (``get`` and ``add`` at each number of connections) as a dict; [] without wrk."""
    if wrk_path() is None:
        log("todo_http: wrk is not installed (apt-get install wrk); the todo app's HTTP workload "
            "is skipped")
        return []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="esbench-todo-") as workdir:
        with TodoServer(store, workdir) as server:
            _seed(server, todos)
            script = os.path.join(workdir, "post.lua")
            Path(script).write_text(_POST_LUA)
            for n in connections:
                r = _wrk(server.url + QUERY, n, seconds)
                results.append({"kind": "get", "connections": n, **r})
                log(_line(results[-1]))
            for n in connections:
                before = server.count_events()
                r = _wrk(server.url, n, seconds, script, (f"c{n}-{time.monotonic_ns()}",))
                time.sleep(0.2)  # the requests wrk dropped at the end, still being handled
                r["events"] = server.count_events() - before
                results.append({"kind": "add", "connections": n, **r})
                log(_line(results[-1]))
    return results


def _line(r: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    text = (f"  {r['kind']:<4} {r['connections']:>3} conn  {r['req_per_s'] or 0:>9,.0f} req/s  "
            f"p50 {ms(r['p50_ms'])} ms  p99 {ms(r['p99_ms'])} ms")
    if r["non_2xx"] or r["socket_errors"]:
        text += f"  non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}"
    if r["kind"] == "add":
        extra = r["events"] - (r["created"] or 0)
        text += (f"  201s {r['created']}, events stored {r['events']} (+{extra} in flight at the "
                 "end)")
        if not 0 <= extra <= r["connections"]:
            text += "  MISMATCH"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.todo_http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="per point (default: %(default)s)")
    p.add_argument("--connections", default="1,8,32", help="comma-separated (default: %(default)s)")
    p.add_argument("--todos", type=int, default=200,
                   help="todos listed by each GET (default: %(default)s)")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                   help="a fresh SQLite file, or a fresh database on $EVENTSOURCERY_TEST_POSTGRES")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    connections = tuple(int(c) for c in a.connections.split(","))
    if a.backend == "postgres" and wrk_path() is not None:
        from bench.common import pg_conninfo

        with postgres_database(pg_conninfo()) as url:
            results = run(store=url, seconds=a.seconds, todos=a.todos, connections=connections)
    else:
        results = run(seconds=a.seconds, todos=a.todos, connections=connections)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
