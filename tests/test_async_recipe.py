"""The README's Starlette recipe (section "Processors beside an ASGI app"), run as a user would: the
block is written to ``notes_app.py`` and served, lifespan included, through Starlette's TestClient
(httpx) in a fresh process, on SQLite. Its ESPRunner runs the projector in a spawned child."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

DRIVER = '''
import json, multiprocessing, threading
from starlette.testclient import TestClient
import notes_app


def main():
    out = {}
    with TestClient(notes_app.app) as client:
        first = client.post("/notebooks/b1/notes", json={"text": "buy milk"})
        second = client.post("/notebooks/b1/notes", json={"text": "call mum"})
        out["writes"] = [[first.status_code, first.json()], [second.status_code, second.json()]]
        after = second.json()["event_id"]
        query = client.get("/notebooks/b1/notes", params={"after": after})
        out["query"] = [query.status_code, query.json()]
        bad = client.post("/notebooks/b1/notes", json={"text": " "})
        out["bad"] = [bad.status_code, bad.json()]
        out["children_while_serving"] = len(multiprocessing.active_children())
    out["children_after"] = len(multiprocessing.active_children())
    out["threads_after"] = sorted(t.name for t in threading.enumerate()
                                  if t.name.startswith("eventsourcery-"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
'''


def recipe() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "start_in_background()" in b]
    return block


def test_the_readme_starlette_recipe_serves_commands_and_read_your_writes_queries(tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    (tmp_path / "notes_app.py").write_text(recipe())
    (tmp_path / "drive.py").write_text(DRIVER)
    root = str(README.parent)
    env = {"PYTHONPATH": root, "PATH": "/usr/bin:/bin", "NOTES_STORE": str(tmp_path / "notes.db")}
    done = subprocess.run([sys.executable, "drive.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["writes"] == [[201, {"event_id": 1}], [201, {"event_id": 2}]]
    assert out["query"] == [200, ["buy milk", "call mum"]]  # projected in the child, waited for
    assert out["bad"] == [422, {"error": "a note needs some text"}]
    assert out["children_while_serving"] == 1
    assert (out["children_after"], out["threads_after"]) == (0, [])
