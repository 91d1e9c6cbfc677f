"""A small command-line client for the todo API (standard library only).

    python -m examples.todo.client add -t "Buy milk" -D 2017-07-13 -s boss@example.com
    python -m examples.todo.client amend -i ID -d "Semi-skimmed" --no-due-date
    python -m examples.todo.client complete -i ID -D 2017-07-14
    python -m examples.todo.client abandon -i ID
    python -m examples.todo.client list outstanding|scheduled|completed

``--url`` (or ``TODO_URL``) points it at the server, default
http://127.0.0.1:8000. Prints the server's answer; exits 1 on an error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote


def request(base_url: str, method: str, path: str, payload: dict | None = None):
    """(status, body text) of one API call."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.todo.client",
                                     description="Talk to the todo example's API.")
    parser.add_argument("--url", default=os.environ.get("TODO_URL", "http://127.0.0.1:8000"),
                        help="the server (default: $TODO_URL or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    def todo_fields(p, *, id_required):
        p.add_argument("-i", "--id", required=id_required,
                       help="the todo's id" + ("" if id_required else " (default: a new UUID)"))
        p.add_argument("-t", "--title")
        p.add_argument("-d", "--description")
        p.add_argument("-D", "--due-date", help="YYYY-MM-DD")
        p.add_argument("-s", "--stakeholder-email")

    todo_fields(sub.add_parser("add", help="add a todo"), id_required=False)
    amend = sub.add_parser("amend", help="change some fields of a todo")
    todo_fields(amend, id_required=True)
    amend.add_argument("--no-due-date", action="store_true", help="clear the due date")
    amend.add_argument("--no-stakeholder", action="store_true", help="clear the stakeholder email")
    for name in ("complete", "abandon"):
        p = sub.add_parser(name, help=f"{name} a todo")
        p.add_argument("-i", "--id", required=True)
        p.add_argument("-D", "--date", default=datetime.date.today().isoformat(),
                       help="YYYY-MM-DD (default: today)")
    listing = sub.add_parser("list", help="list todos")
    listing.add_argument("which", choices=("outstanding", "scheduled", "completed"))
    sub.add_parser("uuid", help="print a new todo id")
    args = parser.parse_args(argv)

    if args.command == "uuid":
        print(uuid.uuid4())
        return 0
    if args.command == "list":
        status, body = request(args.url, "GET", f"/todos/{args.which}")
    elif args.command in ("add", "amend"):
        todo_id = args.id or str(uuid.uuid4())
        payload = {key: value for key, value in (
            ("title", args.title),
            ("description", args.description),
            ("due_date", args.due_date),
            ("stakeholder_email", args.stakeholder_email),
        ) if value is not None}
        if args.command == "amend":
            if args.no_due_date:
                payload["due_date"] = None
            if args.no_stakeholder:
                payload["stakeholder_email"] = None
        method = "POST" if args.command == "add" else "PUT"
        status, body = request(args.url, method, f"/todo/{quote(todo_id, safe='')}", payload)
        if status < 400 and args.command == "add":
            body = body or todo_id  # so scripts can capture the new id
    else:
        key = "completed_on" if args.command == "complete" else "abandoned_on"
        status, body = request(args.url, "POST", f"/todo/{quote(args.id, safe='')}/{args.command}",
                               {key: args.date})
    if status >= 400:
        print(f"Error {status}: {body.rstrip()}", file=sys.stderr)
        return 1
    if body:
        print(body.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
